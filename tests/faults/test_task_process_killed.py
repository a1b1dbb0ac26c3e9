"""SIGKILL to a task process, under a real Airflow: api-server, scheduler and dag-processor with
LocalExecutor (``tests.support.ui.AirflowServer``), so the task runs in a process of its own,
below the executor's supervisor, and nothing of it runs after the signal (no ``on_kill``).

- ``sigkill_create_task``: the ``create_cluster`` task process dies while it waits for its
  cluster's workers to register.
- ``sigkill_embed_task``: the ``embed_text`` task process dies while its job runs; spark-submit
  runs in a session of its own but gets the parent-death signal, so it ends too.
- ``run_marked_failed``: the run is marked failed through the REST API while ``embed_text`` runs.

Each test records what is left when the run has ended (and how long the cleanup took, when it
happened). Opt-in (``SPINDLE_FAULTS_REAL_SCHEDULER=1``, set by ``scripts/faults.py
--real-scheduler``): starting a real Airflow costs 1-2 minutes on 2 cores, too long for the
normal test command.
"""

from __future__ import annotations

import json
import os
import time
from contextlib import contextmanager

import psutil
import pytest
from spindle.pipelines import run_key

from tests.support.faults import NIGHTLY, POINTER, Lane, active_app, kill, python_workers
from tests.support.paths import REPO
from tests.support.ui import AirflowServer, marked_pids

pytestmark = [
    pytest.mark.timeout(1500),
    pytest.mark.skipif(
        os.environ.get("SPINDLE_FAULTS_REAL_SCHEDULER") != "1",
        reason="needs a real scheduler (1-2 min to start): SPINDLE_FAULTS_REAL_SCHEDULER=1 or scripts/faults.py",
    ),
]

EMBED_APP = ("embed_text", "embed-text")
#: The create of a nightly cluster on the AWS fakes never finishes while the create fault runs
#: (moto's job flows and applications are ready at once: nothing to kill a wait in otherwise).
STUCK_PREFIX = f"spindle-{NIGHTLY}-"


class FaultServer(AirflowServer):
    """The UI tests' Airflow, with no task retries (the kill hits the last try) and a short
    heartbeat timeout, so that the scheduler also notices a task whose supervisor died. On a
    cloud lane it gets the fakes' connections and the backend's settings (environment variables,
    as the test process has them) and the packed cluster environment the stage task ships."""

    def env(self) -> dict[str, str]:
        env = super().env()
        env.update(getattr(self, "cloud_env", {}))
        env.update(
            {
                "AIRFLOW__CORE__DEFAULT_TASK_RETRIES": "0",
                "SPINDLE_TASK_RETRIES": "0",  # Spindle's DAGs set their own retries (default 2)
                "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "20",
                "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "5",
                "SPINDLE_PROGRESS_INTERVAL": "0",
                "SPINDLE_ORPHAN_GRACE_MINUTES": "0",  # the reaper may take an orphan at once
            }
        )
        return env


@pytest.fixture(scope="module")
def server(backend, request, tmp_path_factory):
    server = FaultServer(log_dir=tmp_path_factory.mktemp("fault-airflow-logs"))
    if backend != "local":
        from tests.faults.conftest import cloud_lane

        server.lane = cloud_lane(backend, request)
        server.cloud_env = {k: v for k, v in os.environ.items() if k.startswith(CLOUD_ENV)}
        env_link = server.spindle_home / "artifacts" / "env"  # what the stage task ships
        env_link.parent.mkdir(parents=True, exist_ok=True)
        env_link.symlink_to(request.getfixturevalue("cluster_environment").parent, target_is_directory=True)
    else:
        server.lane = Lane("local", [server.clusters_dir])
    try:
        server.start()
        server.wait_for_dag(NIGHTLY)
        server.api("PATCH", f"/dags/{NIGHTLY}", {"is_paused": False})
        yield server
    finally:
        server.stop()
        server.cleanup()


#: What a cloud lane's Airflow needs of the test process's environment: the fakes' connections
#: and the backend's settings.
CLOUD_ENV = ("AIRFLOW_CONN_", "AIRFLOW_VAR_SPINDLE_BACKEND_")


def _trigger(server: FaultServer) -> str:
    conf = Lane(server.lane.backend, []).conf(limit=1000)
    if server.lane.backend == "local":
        conf.pop("backend")
    run = server.api("POST", f"/dags/{NIGHTLY}/dagRuns", {"logical_date": None, "conf": conf})
    return run["dag_run_id"]


def _states(server: FaultServer, run_id: str) -> dict[str, str]:
    """{task: state}: the DAG's shared tasks (``load_vectors``) and the lane's tasks by their bare
    name (``create_cluster`` for ``yandex.create_cluster``, over the local lane's own)."""
    from urllib.parse import quote

    data = server.api("GET", f"/dags/{NIGHTLY}/dagRuns/{quote(run_id, safe='')}/taskInstances?limit=100")
    states = {ti["task_id"]: str(ti["state"]) for ti in data["task_instances"] if "." not in ti["task_id"]}
    prefix = server.lane.backend + "."
    for ti in data["task_instances"]:
        if ti["task_id"].startswith(prefix):
            states[ti["task_id"].removeprefix(prefix)] = str(ti["state"])
    return states


def _task_instance(server: FaultServer, run_id: str, task: str) -> dict:
    from urllib.parse import quote

    return server.api("GET", f"/dags/{NIGHTLY}/dagRuns/{quote(run_id, safe='')}/taskInstances/{server.lane.task(task)}")


def _running_task_process(server: FaultServer, run_id: str, task: str) -> psutil.Process | None:
    """The process of a running task (the task instance's ``pid``, which the supervisor reports
    for the task process it started), once it is one of this test's scheduler's descendants."""
    ti = _task_instance(server, run_id, task)
    if ti.get("state") != "running" or not ti.get("pid"):
        return None
    try:
        proc = psutil.Process(ti["pid"])
    except psutil.Error:
        return None
    return proc if _ours(proc, server) else None


def _wait(find, timeout: float, server: FaultServer, interval: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = find()
        if found is not None:
            return found
        server._check_running()
        time.sleep(interval)
    raise TimeoutError("the moment to inject the fault never came")


def _ours(proc: psutil.Process, server: FaultServer) -> bool:
    """Whether ``proc`` runs below this test's scheduler. (Not by its environment: a task process
    renames itself with setproctitle, which overwrites what ``/proc/<pid>/environ`` shows.)"""
    scheduler = server.procs["scheduler"].pid
    try:
        return any(parent.pid == scheduler for parent in proc.parents())
    except psutil.Error:
        return False


def _task_logs(server: FaultServer, run_id: str, task_id: str) -> str:
    """Every try's log of a task, through the REST API (as the UI shows it)."""
    from urllib.parse import quote

    base = f"/dags/{NIGHTLY}/dagRuns/{quote(run_id, safe='')}/taskInstances/{server.lane.task(task_id)}"
    tries = server.api("GET", base)["try_number"]
    logs = []
    for number in range(1, tries + 1):
        try:
            content = server.api("GET", f"{base}/logs/{number}?full_content=true").get("content")
        except Exception as err:  # noqa: BLE001 - for the record only
            content = repr(err)
        logs.append(f"--- try {number}\n{json.dumps(content, default=str)[-6000:]}")
    return "\n".join(logs)


def _save(server: FaultServer, name: str, text: str) -> None:
    folder = REPO / "test-artifacts" / "faults"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{server.lane.backend}-{name}").write_text(text)


def _before(server: FaultServer) -> tuple[set[str], set]:
    """What exists before a fault: the service's live clusters and the fakes' cluster folders."""
    return server.lane.service_clusters(), server.lane.clusters()


def _left(server: FaultServer, before: tuple[set[str], set]) -> set[str]:
    """Clusters this test made that are still live: listed by the service (local: with a live
    process) or, on a cloud fake, with Spark processes left although the service forgot them."""
    services, folders = before
    left = server.lane.service_clusters() - services
    if not left and server.lane.backend != "local":
        left = {f"processes of {cid}" for cid in server.lane.clusters_left(folders)}
    return left


def _wait_clean(server: FaultServer, before: tuple[set[str], set], since: float, timeout: float) -> float | None:
    """Seconds from ``since`` until none of this test's clusters is left; None if some still are."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _left(server, before):
            return round(time.monotonic() - since, 1)
        time.sleep(0.5)
    return None


def _finish(server: FaultServer, run_id: str, record, before: tuple[set[str], set], killed_at: float) -> dict[str, str]:
    run = server.wait_for_run(NIGHTLY, run_id, timeout=600)
    record.run_state = run["state"]
    record.cleanup_seconds = _wait_clean(server, before, killed_at, timeout=30)
    record.clusters_left = len(_left(server, before))
    states = _states(server, run_id)
    record.note("tasks: " + ", ".join(f"{k} {v}" for k, v in sorted(states.items()) if v != "skipped"))
    return states


def _pointer(server: FaultServer) -> bytes | None:
    if server.lane.backend != "local":
        return server.lane.pointer()
    pointer_file = server.spindle_home / "warehouse" / POINTER
    return pointer_file.read_bytes() if pointer_file.exists() else None


def _check_publication(server: FaultServer, run_id: str, moved: bool, record) -> None:
    """Local: the pointer must not move (the killed task's driver dies with it). Cloud: a job
    whose task was killed keeps running until the teardown (or ``on_kill``) stops it, and may
    finish first: then the pointer moves to this run's output, which must be whole (every kept
    book exactly once). What must never happen is a pointer to half a version."""
    if not moved:
        return
    assert server.lane.backend != "local", "the killed task's driver moved latest.json"
    from tests.support.cloud import output_uri, read_table

    latest = json.loads(_pointer(server))
    assert run_key(run_id) in latest["embeddings"], f"latest.json points at another run: {latest}"
    books = read_table(output_uri(server.lane.backend, NIGHTLY, run_id, "books.parquet"))
    embeddings = read_table(output_uri(server.lane.backend, NIGHTLY, run_id, "embeddings.parquet"))
    record.count_rows(len(books), embeddings["id"])
    record.note(f"the job finished before it was stopped: whole output published ({record.rows} rows)")
    assert record.rows_lost == 0 and record.rows_duplicated == 0 and record.rows > 0


def _embed_app(server: FaultServer):
    """The embed_text application once it runs with an executor's Python worker (the model UDF)."""
    for part in EMBED_APP:
        app = active_app(server.lane.homes, part)
        if app is not None and python_workers(app.folder):
            return app
    return None


@contextmanager
def _creates_never_finish(backend: str):
    """EMR / EMR Serverless on moto: the nightly cluster stays STARTING while the fault runs."""
    from tests.fakes import aws

    knob = {"emr": aws.STUCK_JOB_FLOW_PREFIXES, "emr_serverless": aws.STUCK_APPLICATION_PREFIXES}.get(backend)
    if knob is not None:
        knob.add(STUCK_PREFIX)
    try:
        yield
    finally:
        if knob is not None:
            knob.discard(STUCK_PREFIX)


def test_sigkill_create_task(backend, server, record):
    before = _before(server)
    if backend == "local":
        run_id = _trigger(server)
        cluster = _wait(lambda: _starting_master(server), 300, server, interval=0.05)
        task_process = psutil.Process(cluster["master"]["pid"]).parent()  # the task process started the daemon
        what = f"cluster {cluster['cluster_id']} started"
    else:
        with _creates_never_finish(backend):
            run_id = _trigger(server)

            def creating():
                if not _left(server, before):
                    return None
                return _running_task_process(server, run_id, "create_cluster")

            task_process = _wait(creating, 300, server, interval=0.1)
            what = f"the service had created {sorted(_left(server, before))}"
            killed = kill(task_process)
    if backend == "local":
        killed = kill(task_process)
    killed_at = time.monotonic()
    assert task_process is not None and _ours(task_process, server)
    record.note(f"SIGKILL to the create_cluster task process {killed['pid']} while {what}")
    states = _finish(server, run_id, record, before, killed_at)
    # What happens is recorded, whatever it is; the run must end, and not succeed.
    assert record.run_state == "failed", states
    assert states["create_cluster"] in ("failed", "up_for_retry"), states
    if record.clusters_left:
        record.note(f"cluster left {sorted(_left(server, before))}: the teardown does not run when its setup failed")
        notes = _reap_now(server, before)
        record.note("; ".join(notes))
        assert "deleted by hand" not in notes[-1], "the reaper's orphan rule left the cluster running"


def _starting_master(server: FaultServer):
    for state in server.clusters_dir.glob("*/state.json"):
        data = json.loads(state.read_text() or "{}")
        master = data.get("master") or {}
        if data.get("status") == "STARTING" and master.get("pid") and psutil.pid_exists(master["pid"]):
            return data
    return None


def test_sigkill_embed_task(backend, server, record):
    before, pointer = _before(server), _pointer(server)
    run_id = _trigger(server)

    def mid_job():
        app = _embed_app(server)
        if app is None:
            return None
        if backend != "local":  # the job runs on the cluster: the task process only waits for it
            task_process = _running_task_process(server, run_id, "embed_text")
            return (app, task_process, None) if task_process is not None else None
        for proc in psutil.process_iter():
            try:
                cmdline = " ".join(proc.cmdline())
            except psutil.Error:
                continue
            if "SparkSubmit" in cmdline and "embed_text.py" in cmdline and _ours(proc, server):
                return app, proc.parent(), proc
        return None

    app, task_process, submit = _wait(mid_job, 600, server)
    assert task_process is not None and _ours(task_process, server)
    lineage = " < ".join(f"{p.pid} {p.name()}" for p in [task_process, *task_process.parents()[:3]])
    killed = kill(task_process)
    killed_at = time.monotonic()
    record.note(f"SIGKILL to the embed_text task process {killed['pid']} while {app.app_id} ran ({lineage})")
    states = _finish(server, run_id, record, before, killed_at)
    _save(server, "sigkill_embed_task.log", _task_logs(server, run_id, "embed_text"))
    if submit is not None:  # local: spark-submit is a child of the task process
        driver_left = submit.is_running() and submit.status() != psutil.STATUS_ZOMBIE
        record.note("spark-submit of the killed task " + ("still running at the end" if driver_left else "gone"))
    else:
        still = active_app(server.lane.homes, app.name)
        record.note("the job on the cluster " + ("STILL RUNNING at the end" if still else "gone with its cluster"))
    moved = _pointer(server) != pointer
    record.note("latest.json " + ("MOVED" if moved else "not moved"))
    assert record.run_state == "failed", states
    assert states["embed_text"] == "failed", states
    leftovers = [p for p in marked_pids(server.run_token) if "embed_text.py" in " ".join(_cmdline(p))]
    if leftovers:
        record.note(f"embed_text driver processes left: {leftovers}")
    assert states["delete_cluster"] == "success", states
    assert record.clusters_left == 0
    _check_publication(server, run_id, moved, record)


def test_run_marked_failed(backend, server, record):
    """The run is marked failed through the REST API (as the UI's "Mark as failed" does) while
    ``embed_text`` runs: Airflow fails the running task (its supervisor stops it: ``on_kill``
    stops the driver or cancels the job) and skips the pending tasks; the cluster must not be left."""
    from urllib.parse import quote

    before, pointer = _before(server), _pointer(server)
    run_id = _trigger(server)
    app = _wait(lambda: _embed_app(server), 600, server)
    server.api("PATCH", f"/dags/{NIGHTLY}/dagRuns/{quote(run_id, safe='')}", {"state": "failed"})
    marked_at = time.monotonic()
    record.note(f"run marked failed through the REST API while {app.app_id} ran")
    first = server.wait_for_run(NIGHTLY, run_id, timeout=60)["state"]

    def job_running() -> bool:
        if backend == "local":
            return bool(_embed_drivers(server))
        return active_app(server.lane.homes, app.name) is not None

    deadline = time.monotonic() + 120  # the supervisor learns it at its next heartbeat
    while time.monotonic() < deadline and job_running():
        time.sleep(1)
    running = job_running()
    record.note(
        f"embed_text job {'STILL RUNNING' if running else 'stopped'} {time.monotonic() - marked_at:.0f} s after"
    )
    deadline = time.monotonic() + 120  # the teardown, where Airflow runs it
    while time.monotonic() < deadline and _left(server, before):
        time.sleep(1)
    states = _states(server, run_id)
    _save(server, "run_marked_failed.log", _task_logs(server, run_id, "embed_text"))
    record.note("tasks: " + ", ".join(f"{k} {v}" for k, v in sorted(states.items()) if v != "skipped"))
    record.note("skipped: " + ", ".join(sorted(k for k, v in states.items() if v == "skipped")))
    left = _left(server, before)
    record.clusters_left = len(left)
    if left:
        record.note(f"cluster left {sorted(left)} after the run ended")
        notes = _reap_now(server, before)
        record.note("; ".join(notes))
        assert "deleted by hand" not in notes[-1], "the reaper's orphan rule left the cluster running"
    record.cleanup_seconds = round(time.monotonic() - marked_at, 1)
    moved = _pointer(server) != pointer
    record.note("latest.json " + ("MOVED" if moved else "not moved"))
    # Recorded, not asserted: Airflow lets the teardown finish and then judges the run by its
    # leaves, which the mark skipped; the run can end "success" although a job task failed.
    final = server.api("GET", f"/dags/{NIGHTLY}/dagRuns/{quote(run_id, safe='')}")["state"]
    record.run_state = f"marked failed (read back: {first}), final: {final}"
    assert not running and not _left(server, before)
    _check_publication(server, run_id, moved, record)
    assert states["embed_text"] == "failed", states
    assert states["load_vectors"] in ("skipped", "upstream_failed"), states


def _embed_drivers(server: FaultServer) -> list[int]:
    return [p for p in marked_pids(server.run_token) if "embed_text.py" in " ".join(_cmdline(p))]


def _reap_now(server: FaultServer, before: tuple[set[str], set]) -> list[str]:
    """Trigger the reaper DAG on the same Airflow (``dry_run: false``; the orphan grace is 0 in
    this server) and record what it did with the clusters left: the nightly DAG has no active
    run any more, so they are orphans, whatever their TTL. Deleted by hand if still there."""
    reaper = "spindle_reaper"
    server.wait_for_dag(reaper)
    server.api("PATCH", f"/dags/{reaper}", {"is_paused": False})
    started = time.monotonic()
    conf = {"dry_run": False, "backends": [server.lane.backend]}
    run = server.api("POST", f"/dags/{reaper}/dagRuns", {"logical_date": None, "conf": conf})
    done = server.wait_for_run(reaper, run["dag_run_id"], timeout=300)
    notes = [f"reaper run (dry_run false): {done['state']} in {time.monotonic() - started:.0f} s"]
    left = _wait_clean(server, before, time.monotonic(), timeout=60) is None
    if left and server.lane.backend == "local":
        from spindle.hooks.local_spark import LocalSparkClusterHook

        for cluster_id in _left(server, before):
            LocalSparkClusterHook(home=str(server.clusters_dir)).delete_cluster(cluster_id)
        notes.append("still running after the reaper's run: deleted by hand")
    elif left:
        notes.append(f"still live after the reaper's run: {sorted(_left(server, before))}; deleted by hand")
    else:
        notes.append("gone after the reaper's run (orphan: its DAG had no active run)")
    return notes


def _cmdline(pid: int) -> list[str]:
    try:
        return psutil.Process(pid).cmdline()
    except psutil.Error:
        return []
