"""Fault injection: real signals to real processes in the middle of a nightly run, and a count of
what survived (clusters, Spark processes, rows lost or duplicated, the ``latest.json`` pointer,
the Milvus alias).

- ``sigterm_embed_task``: the ``embed_text`` task process gets SIGTERM (what Airflow's
  supervisor sends to a task it stops) while its job runs on the cluster. The task runner's
  handler calls the operator's ``on_kill`` (local: stop spark-submit's process group and ask the
  master to kill the application; cloud lanes: cancel the job / step / job run); the task fails,
  the teardown deletes the cluster, the run fails, the pointer stays. A re-run of the same DAG
  run (same logical date, same run id) then writes every kept row exactly once.
- ``executor_python_worker_killed``: an executor's Python worker running a task of the embed
  stage (the write of the embeddings, whose tasks run the model UDF) gets SIGKILL. Spark retries
  the task (``Lost task`` in the driver log); the output holds every kept row once.
- ``load_vectors_interrupted``: the vector load is SIGKILLed half way (after half its batches);
  the alias still points at the previous, whole collection; the re-run (same version, same
  collection) completes it, no duplicates.

The runs use ``dag.test()``: Airflow's task runner in this process. So the SIGTERM is sent to
this process while the embed task runs, and Airflow's task retries are switched off for the
killed run (the fault hits the last allowed try; with a retry left, the next try would run the
job again on the same cluster). Faults that need the OS to kill the task process itself
(SIGKILL, no handler runs) need a real supervisor and are not in this module (docs/reliability.md).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from contextlib import contextmanager

import pendulum
import psutil
import pytest

from tests.support.airflow_env import SESSION_DIR
from tests.support.cloud import output_uri, read_table
from tests.support.faults import (
    FINISHED,
    NIGHTLY,
    Lane,
    Injector,
    SigtermGuard,
    active_app,
    busiest,
    cluster_pids,
    driver_stages,
    kill,
    python_workers,
    sigterm_self,
)
from tests.support.interrupted_load import start_loader

pytestmark = [pytest.mark.usefixtures("airflow_db"), pytest.mark.timeout(1200)]

EMBED_APP = ("embed_text", "embed-text")

FULL_MATRIX = pytest.mark.skipif(
    os.environ.get("SPINDLE_FAULTS_FULL") != "1",
    reason="in the fault matrix only (scripts/faults.py sets SPINDLE_FAULTS_FULL=1): more nightly runs",
)


@contextmanager
def retries_off(dag):
    saved = {task_id: task.retries for task_id, task in dag.task_dict.items()}
    try:
        for task in dag.task_dict.values():
            task.retries = 0
        yield
    finally:
        for task_id, retries in saved.items():
            dag.task_dict[task_id].retries = retries


def run_nightly(dagbag, lane: Lane, logical_date=None, **conf):
    """One ``dag.test()`` run of the nightly DAG: (run, {task_id: state})."""
    dag = dagbag.dags[NIGHTLY]
    when = logical_date or pendulum.now("UTC")  # a manual run's id comes from run_after
    run = dag.test(run_after=when, logical_date=when, run_conf=lane.conf(**conf))
    return run, {ti.task_id: str(ti.state) for ti in run.get_task_instances()}


def embed_job_processes(since: float) -> list[str]:
    """Drivers of this session's embed_text jobs started after ``since`` (epoch s) still running
    (spark-submit JVM, driver Python): their command lines name this session's folders."""
    found = []
    for proc in psutil.process_iter(["cmdline", "create_time", "status"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if proc.info["status"] == psutil.STATUS_ZOMBIE or (proc.info["create_time"] or 0) < since:
            continue
        if "embed_text.py" in cmdline and str(SESSION_DIR) in cmdline and proc.pid != os.getpid():
            found.append(f"{proc.pid} {cmdline[:160]}")
    return found


def mid_embed(lane: Lane):
    """The embed_text application, once it runs on a cluster with an executor's Python worker
    (the model UDF) up and, where the driver's UI answers, in its embed stage: the write of the
    embeddings (``parquet at ...``), whose tasks run the model UDF (not the warm-up's ``collect``
    nor the shuffle of the rows before it)."""
    for part in EMBED_APP:
        app = active_app(lane.homes, part)
        if app is None or not python_workers(app.folder):
            continue
        apps = {name: stages for name, stages in driver_stages().items() if part in name}
        stages = [stage for found in apps.values() for stage in found]
        if apps and not any(stage.startswith("parquet") for stage in stages):
            return None  # the driver UI answers: not in the embed stage yet
        app.stages = stages
        return app
    return None


def count_output(record, lane: Lane, run_id: str) -> None:
    """Rows of the run's embeddings against the rows prepare_books kept (its books table)."""
    books = read_table(output_uri(lane.backend, NIGHTLY, run_id, "books.parquet"))
    embeddings = read_table(output_uri(lane.backend, NIGHTLY, run_id, "embeddings.parquet"))
    record.count_rows(len(books), embeddings["id"])
    clean = FINISHED.get(lane.backend)
    if clean is None:
        FINISHED[lane.backend] = {"run_id": run_id, "rows": len(books)}
    else:
        record.note(f"clean count from run {clean['run_id']}: {clean['rows']}")
        assert len(books) == clean["rows"], "the same conf kept another number of books"


# --------------------------------------------------------------------------- (a)
def test_sigterm_embed_task(backend, lane, fault_dagbag, record, capfd):
    dag = fault_dagbag.dags[NIGHTLY]
    before, pointer = lane.clusters(), lane.pointer()
    logical_date = pendulum.now("UTC")
    started = time.time()

    def gone(app) -> bool:
        return not any(cluster_pids(home, app.cluster_id) for home in lane.homes)

    with retries_off(dag), SigtermGuard() as guard, Injector(lambda: mid_embed(lane), sigterm_self, gone) as injector:
        run, states = run_nightly(fault_dagbag, lane, logical_date)
    output = "".join(capfd.readouterr())
    record.run_state = str(run.state)
    record.clusters_left = len(lane.clusters_left(before))
    record.cleanup_seconds = injector.cleanup_seconds  # SIGTERM -> the cluster's last process gone
    assert injector.error is None, injector.error
    assert injector.fired, f"embed_text was never seen mid-job: {states}"
    assert guard.early == [], "the SIGTERM came before any task runner's handler"
    app = injector.target
    record.note(f"SIGTERM while {app.app_id} ran on {app.cluster_id} (stages {app.stages or 'not seen'})")

    assert str(run.state) == "failed", states
    assert states[lane.task("embed_text")] == "failed", states
    assert states[lane.task("delete_cluster")] == "success", states
    assert states["load_vectors"] == "upstream_failed", states
    assert record.clusters_left == 0
    assert embed_job_processes(started) == []
    assert lane.pointer() == pointer, "the killed run moved latest.json"
    if backend == "local":
        assert "Stopping spark-submit" in output  # on_kill ran in the task process
        assert "Asked the master to kill application" in output

    # The same DAG run again (same logical date: same run id, same output folder).
    rerun, states = run_nightly(fault_dagbag, lane, logical_date)
    assert rerun.run_id == run.run_id
    record.run_state = f"{run.state}, re-run {rerun.state}"
    assert str(rerun.state) == "success", states
    count_output(record, lane, run.run_id)
    assert record.rows_lost == 0 and record.rows_duplicated == 0
    assert record.rows > 0
    assert len(lane.clusters_left(before)) == 0
    assert lane.pointer() != pointer, "the re-run's complete version is the new latest"


# --------------------------------------------------------------------------- (b)
@FULL_MATRIX  # the test command keeps the SIGTERM fault's re-run as its exactly-once check
def test_executor_python_worker_killed(backend, lane, fault_dagbag, record, capfd):
    before = lane.clusters()

    def find():
        app = mid_embed(lane)
        if app is None:
            return None
        worker, cpu = busiest(python_workers(app.folder))  # the one running a task (reused workers idle)
        return (app, worker) if worker is not None and cpu >= 20 else None

    def act(target):
        return kill(target[1], signal.SIGKILL)

    with Injector(find, act) as injector:
        run, states = run_nightly(fault_dagbag, lane)
    output = "".join(capfd.readouterr())
    record.run_state = str(run.state)
    record.clusters_left = len(lane.clusters_left(before))
    assert injector.error is None, injector.error
    assert injector.fired, f"embed_text was never seen mid-job: {states}"
    killed = injector.acted
    app = injector.target[0]
    record.note(f"SIGKILL to Python worker {killed['pid']} of {app.app_id} (stages {app.stages or 'not seen'})")

    assert str(run.state) == "success", states
    assert record.clusters_left == 0
    count_output(record, lane, run.run_id)
    assert record.rows_lost == 0 and record.rows_duplicated == 0
    assert record.rows > 0
    retried = "Lost task" in output or "Python worker exited unexpectedly" in output
    record.note("Spark retried the task (driver log: Lost task)" if retried else "no task retry in the task log")
    if backend == "local":  # client mode: the driver's log is the task log
        assert retried, "the killed worker's task was not retried"


# --------------------------------------------------------------------------- (d)


def embed_driver(lane: Lane, since: float):
    """The Python driver of the embed job (not the JVM), once the job is mid-embed."""
    app = mid_embed(lane)
    if app is None:
        return None
    for proc in psutil.process_iter(["cmdline", "create_time", "name"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if (proc.info["create_time"] or 0) < since or "python" not in (proc.info["name"] or ""):
            continue
        if "embed_text.py" in cmdline and "pyspark.daemon" not in cmdline and str(SESSION_DIR) in cmdline:
            return app, proc
    return None


@FULL_MATRIX
def test_driver_killed(backend, lane, fault_dagbag, record):
    """SIGKILL to the embed job's Python driver mid-embed: the job fails (no half output is
    published), the task fails, the teardown deletes the cluster; the same run again is whole."""
    dag = fault_dagbag.dags[NIGHTLY]
    before, pointer = lane.clusters(), lane.pointer()
    logical_date = pendulum.now("UTC")
    started = time.time()
    with retries_off(dag), Injector(lambda: embed_driver(lane, started), lambda t: kill(t[1])) as injector:
        run, states = run_nightly(fault_dagbag, lane, logical_date)
    record.run_state = str(run.state)
    record.clusters_left = len(lane.clusters_left(before))
    assert injector.error is None, injector.error
    assert injector.fired, f"the embed job's driver was never seen mid-job: {states}"
    app = injector.target[0]
    record.note(f"SIGKILL to the driver {injector.acted['pid']} of {app.app_id} (stages {app.stages or 'not seen'})")
    assert str(run.state) == "failed", states
    assert states[lane.task("embed_text")] == "failed", states
    assert states[lane.task("delete_cluster")] == "success", states
    assert record.clusters_left == 0
    assert lane.pointer() == pointer, "the run whose driver died moved latest.json"

    rerun, states = run_nightly(fault_dagbag, lane, logical_date)
    record.run_state = f"{run.state}, re-run {rerun.state}"
    assert str(rerun.state) == "success", states
    count_output(record, lane, run.run_id)
    assert record.rows_lost == 0 and record.rows_duplicated == 0 and record.rows > 0
    assert len(lane.clusters_left(before)) == 0


# --------------------------------------------------------------------------- (c)
def _loader(db, data: dict, version: str, batch_size: int, pause_after: int = 0) -> subprocess.Popen:
    return start_loader(db, data["embeddings"], data["books"], version, batch_size, pause_after, data["backend"])


def _whole(store, alias: str) -> tuple[str, int, int]:
    """(collection the alias points at, its rows, its distinct ids)."""
    name = store.resolve_alias(alias)
    store.ensure_loaded(name)  # a reopened milvus-lite file starts released
    ids = [hit["id"] for hit in store.client.query(name, filter='id != ""', output_fields=["id"], limit=16384)]
    return name, len(ids), len(set(ids))


def test_load_vectors_interrupted(backend, lane, fault_dagbag, record, tmp_path):
    from spindle.vectors.store import MilvusVectorStore

    if backend not in FINISHED:  # run alone: one clean run gives the data
        run, states = run_nightly(fault_dagbag, lane)
        assert str(run.state) == "success", states
        FINISHED[backend] = {"run_id": run.run_id, "rows": None}
    run_id = FINISHED[backend]["run_id"]
    data = {name: output_uri(backend, NIGHTLY, run_id, f"{name}.parquet") for name in ("books", "embeddings")}
    data["backend"] = backend
    rows = len(read_table(data["embeddings"]))
    batches = 8
    batch_size = max(1, -(-rows // batches))
    db = tmp_path / "milvus" / "spindle.db"

    first = _loader(db, data, "v1", batch_size)
    output, _ = first.communicate(timeout=300)
    assert first.returncode == 0, output

    # Half way: SIGKILL after batch 4 of 8 of version v2; nothing of the loader runs after it.
    loader = _loader(db, data, "v2", batch_size, pause_after=batches // 2)
    for line in loader.stdout:
        if line.strip() == "PAUSED":
            break
    else:
        pytest.fail(f"the loader ended before pausing: {loader.wait()}")
    killed_at = time.monotonic()
    loader.send_signal(signal.SIGKILL)
    assert loader.wait(timeout=30) == -signal.SIGKILL
    record.run_state = "killed (SIGKILL after batch 4 of 8), re-run: "

    with MilvusVectorStore(db) as store:
        name, count, distinct = _whole(store, "books_text")
        partial = [c for c in store.client.list_collections() if c != name]
        partial_rows = [store.count(c) for c in partial]
        marked = [store.collection_info(c).complete for c in [name, *partial]]
    record.note(f"after the kill: alias -> {name} ({count} rows); partial collection(s) {partial_rows}")
    assert name.endswith("v1"), "the alias moved to the interrupted version"
    assert count == distinct == rows, "the alias points at a collection that is not whole"
    assert len(partial) == 1 and 0 < partial_rows[0] < rows
    assert marked == [True, False], "the interrupted version must be marked partial, the aliased one complete"

    rerun = _loader(db, data, "v2", batch_size)
    output, _ = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, output
    cleanup = round(time.monotonic() - killed_at, 1)
    with MilvusVectorStore(db) as store:
        name, count, distinct = _whole(store, "books_text")
        collections = store.client.list_collections()
    record.run_state += "success"
    record.clusters_left = 0
    record.cleanup_seconds = cleanup
    record.rows_expected, record.rows = rows, count
    record.rows_lost, record.rows_duplicated = rows - distinct, count - distinct
    record.note(f"after the re-run: alias -> {name}; collections {sorted(collections)}")
    assert name.endswith("v2") and name == partial[0], "the re-run completes the interrupted version's collection"
    assert count == distinct == rows
