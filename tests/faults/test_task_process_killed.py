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

import psutil
import pytest

from tests.support.faults import NIGHTLY, POINTER, Lane, active_app, cluster_pids, kill, python_workers
from tests.support.paths import REPO
from tests.support.ui import AirflowServer, marked_pids

pytestmark = [
    pytest.mark.backends("local"),
    pytest.mark.timeout(1500),
    pytest.mark.skipif(
        os.environ.get("SPINDLE_FAULTS_REAL_SCHEDULER") != "1",
        reason="needs a real scheduler (1-2 min to start): SPINDLE_FAULTS_REAL_SCHEDULER=1 or scripts/faults.py",
    ),
]


class FaultServer(AirflowServer):
    """The UI tests' Airflow, with no task retries (the kill hits the last try) and a short
    heartbeat timeout, so that the scheduler also notices a task whose supervisor died."""

    def env(self) -> dict[str, str]:
        env = super().env()
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
def server(tmp_path_factory):
    server = FaultServer(log_dir=tmp_path_factory.mktemp("fault-airflow-logs"))
    try:
        server.start()
        server.wait_for_dag(NIGHTLY)
        server.api("PATCH", f"/dags/{NIGHTLY}", {"is_paused": False})
        yield server
    finally:
        server.stop()
        server.cleanup()


def _trigger(server: FaultServer) -> str:
    conf = Lane("local", []).conf(limit=1000)
    conf.pop("backend")
    run = server.api("POST", f"/dags/{NIGHTLY}/dagRuns", {"logical_date": None, "conf": conf})
    return run["dag_run_id"]


def _states(server: FaultServer, run_id: str) -> dict[str, str]:
    from urllib.parse import quote

    data = server.api("GET", f"/dags/{NIGHTLY}/dagRuns/{quote(run_id, safe='')}/taskInstances?limit=100")
    return {ti["task_id"]: str(ti["state"]) for ti in data["task_instances"]}


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

    base = f"/dags/{NIGHTLY}/dagRuns/{quote(run_id, safe='')}/taskInstances/{task_id}"
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
    (folder / name).write_text(text)


def _wait_clean(server: FaultServer, cluster_id: str, since: float, timeout: float) -> float | None:
    """Seconds from ``since`` until no process of the cluster is left; None if some still are."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not cluster_pids(server.clusters_dir, cluster_id):
            return round(time.monotonic() - since, 1)
        time.sleep(0.5)
    return None


def _finish(server: FaultServer, run_id: str, record, cluster_id: str, killed_at: float) -> dict[str, str]:
    run = server.wait_for_run(NIGHTLY, run_id, timeout=600)
    record.run_state = run["state"]
    record.cleanup_seconds = _wait_clean(server, cluster_id, killed_at, timeout=30)
    record.clusters_left = 1 if cluster_pids(server.clusters_dir, cluster_id) else 0
    states = _states(server, run_id)
    record.note("tasks: " + ", ".join(f"{k} {v}" for k, v in sorted(states.items()) if v != "skipped"))
    return states


def test_sigkill_create_task(backend, server, record):
    run_id = _trigger(server)

    def starting_master():
        for state in server.clusters_dir.glob("*/state.json"):
            data = json.loads(state.read_text() or "{}")
            master = data.get("master") or {}
            if data.get("status") == "STARTING" and master.get("pid") and psutil.pid_exists(master["pid"]):
                return data
        return None

    cluster = _wait(starting_master, 300, server, interval=0.05)
    task_process = psutil.Process(cluster["master"]["pid"]).parent()  # the task process started the daemon
    assert task_process is not None and _ours(task_process, server)
    killed = kill(task_process)
    killed_at = time.monotonic()
    record.note(
        f"SIGKILL to the create_cluster task process {killed['pid']} while cluster {cluster['cluster_id']} started"
    )
    states = _finish(server, run_id, record, cluster["cluster_id"], killed_at)
    # What happens is recorded, whatever it is; the run must end, and not succeed.
    assert record.run_state == "failed", states
    assert states["create_cluster"] in ("failed", "up_for_retry"), states
    if record.clusters_left:
        left = cluster_pids(server.clusters_dir, cluster["cluster_id"])
        record.note(f"cluster left running ({len(left)} processes): the teardown does not run when its setup failed")
        notes = _reap_now(server, cluster["cluster_id"])
        record.note("; ".join(notes))
        assert "deleted by hand" not in notes[-1], "the reaper's orphan rule left the cluster running"


def test_sigkill_embed_task(backend, server, record):
    pointer_file = server.spindle_home / "warehouse" / POINTER
    pointer = pointer_file.read_bytes() if pointer_file.exists() else None
    run_id = _trigger(server)

    def driver_mid_job():
        app = active_app([server.clusters_dir], "embed_text")
        if app is None or not python_workers(app.folder):
            return None
        for proc in psutil.process_iter():
            try:
                cmdline = " ".join(proc.cmdline())
            except psutil.Error:
                continue
            if "SparkSubmit" in cmdline and "embed_text.py" in cmdline and _ours(proc, server):
                return app, proc
        return None

    app, submit = _wait(driver_mid_job, 600, server)
    task_process = submit.parent()
    assert task_process is not None and _ours(task_process, server)
    lineage = " < ".join(f"{p.pid} {p.name()}" for p in [task_process, *task_process.parents()[:3]])
    killed = kill(task_process)
    killed_at = time.monotonic()
    record.note(f"SIGKILL to the embed_text task process {killed['pid']} while {app.app_id} ran ({lineage})")
    states = _finish(server, run_id, record, app.cluster_id, killed_at)
    _save(server, "sigkill_embed_task.log", _task_logs(server, run_id, "embed_text"))
    driver_left = submit.is_running() and submit.status() != psutil.STATUS_ZOMBIE
    record.note("spark-submit of the killed task " + ("still running at the end" if driver_left else "gone"))
    moved = (pointer_file.read_bytes() if pointer_file.exists() else None) != pointer
    record.note("latest.json " + ("MOVED by the orphaned driver" if moved else "not moved"))
    assert record.run_state == "failed", states
    assert states["embed_text"] == "failed", states
    leftovers = [p for p in marked_pids(server.run_token) if "embed_text.py" in " ".join(_cmdline(p))]
    if leftovers:
        record.note(f"embed_text driver processes left: {leftovers}")
    assert states["delete_cluster"] == "success", states
    assert record.clusters_left == 0


def test_run_marked_failed(backend, server, record):
    """The run is marked failed through the REST API (as the UI's "Mark as failed" does) while
    ``embed_text`` runs: Airflow fails the running task (its supervisor stops it: ``on_kill``) and
    skips every pending task, the teardown included; the reaper's orphan rule takes the cluster."""
    from urllib.parse import quote

    pointer_file = server.spindle_home / "warehouse" / POINTER
    pointer = pointer_file.read_bytes() if pointer_file.exists() else None
    run_id = _trigger(server)

    def embed_running():
        app = active_app([server.clusters_dir], "embed_text")
        return app if app is not None and python_workers(app.folder) else None

    app = _wait(embed_running, 600, server)
    server.api("PATCH", f"/dags/{NIGHTLY}/dagRuns/{quote(run_id, safe='')}", {"state": "failed"})
    marked_at = time.monotonic()
    record.note(f"run marked failed through the REST API while {app.app_id} ran")
    first = server.wait_for_run(NIGHTLY, run_id, timeout=60)["state"]

    deadline = time.monotonic() + 120  # the supervisor learns it at its next heartbeat
    while time.monotonic() < deadline and _embed_drivers(server):
        time.sleep(1)
    drivers = _embed_drivers(server)
    record.note(
        f"embed_text driver {'STILL RUNNING' if drivers else 'stopped'} {time.monotonic() - marked_at:.0f} s after"
    )
    states = _states(server, run_id)
    record.note("tasks: " + ", ".join(f"{k} {v}" for k, v in sorted(states.items()) if v != "skipped"))
    record.note("skipped: " + ", ".join(sorted(k for k, v in states.items() if v == "skipped")))
    left = cluster_pids(server.clusters_dir, app.cluster_id)
    record.clusters_left = 1 if left else 0
    if left:
        record.note(f"cluster left running ({len(left)} processes) after the run ended")
        notes = _reap_now(server, app.cluster_id)
        record.note("; ".join(notes))
        assert "deleted by hand" not in notes[-1], "the reaper's orphan rule left the cluster running"
    record.cleanup_seconds = round(time.monotonic() - marked_at, 1)
    moved = (pointer_file.read_bytes() if pointer_file.exists() else None) != pointer
    record.note("latest.json " + ("MOVED" if moved else "not moved"))
    # Recorded, not asserted: Airflow lets the teardown finish and then judges the run by its
    # leaves, which the mark skipped; the run can end "success" although a job task failed.
    final = server.api("GET", f"/dags/{NIGHTLY}/dagRuns/{quote(run_id, safe='')}")["state"]
    record.run_state = f"marked failed (read back: {first}), final: {final}"
    assert not drivers and not moved and not cluster_pids(server.clusters_dir, app.cluster_id)
    assert states["embed_text"] == "failed", states
    assert states["load_vectors"] in ("skipped", "upstream_failed"), states


def _embed_drivers(server: FaultServer) -> list[int]:
    return [p for p in marked_pids(server.run_token) if "embed_text.py" in " ".join(_cmdline(p))]


def _reap_now(server: FaultServer, cluster_id: str) -> list[str]:
    """Trigger the reaper DAG on the same Airflow (``dry_run: false``; the orphan grace is 0 in
    this server) and record what it did with the cluster: the nightly DAG has no active run any
    more, so its cluster is an orphan, whatever its TTL. Deleted by hand if it is still there."""
    reaper = "spindle_reaper"
    server.wait_for_dag(reaper)
    server.api("PATCH", f"/dags/{reaper}", {"is_paused": False})
    started = time.monotonic()
    run = server.api(
        "POST", f"/dags/{reaper}/dagRuns", {"logical_date": None, "conf": {"dry_run": False, "backends": ["local"]}}
    )
    done = server.wait_for_run(reaper, run["dag_run_id"], timeout=300)
    notes = [f"reaper run (dry_run false): {done['state']} in {time.monotonic() - started:.0f} s"]
    if cluster_pids(server.clusters_dir, cluster_id):
        from spindle.hooks.local_spark import LocalSparkClusterHook

        LocalSparkClusterHook(home=str(server.clusters_dir)).delete_cluster(cluster_id)
        notes.append("still running after the reaper's run: deleted by hand")
    else:
        notes.append("gone after the reaper's run (orphan: its DAG had no active run)")
    return notes


def _cmdline(pid: int) -> list[str]:
    try:
        return psutil.Process(pid).cmdline()
    except psutil.Error:
        return []
