"""The local Spark standalone cluster: create -> workers registered -> jobs -> delete -> nothing left.

Each test starts at most one small cluster and deletes it (2 shared cores).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time
import urllib.request

import psutil
import pytest
from airflow.sdk.exceptions import AirflowException
from spindle.hooks.local_spark import ClusterNotFound, LocalSparkClusterHook
from spindle.hooks.spark_app import SparkAppSubmitHook, parse_metrics_line

from tests.support.airflow_env import spark_daemon_pids


def _group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes of a process group."""
    members = []
    for proc in psutil.process_iter():
        try:
            if os.getpgid(proc.pid) == pgid and proc.status() not in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD):
                members.append(proc.pid)
        except (OSError, psutil.Error):
            continue
    return members


def _ps_lines_of(cluster_id: str) -> list[str]:
    return [line for line in spark_daemon_pids() if f"-Dspindle.cluster.id={cluster_id} " in line + " "]


def test_create_registers_workers_and_delete_leaves_nothing(no_new_clusters):
    hook = LocalSparkClusterHook()
    started = time.monotonic()
    cluster = hook.create_cluster(num_workers=2, worker_cores=1, worker_memory=512)
    try:
        created_in = time.monotonic() - started
        status = json.load(urllib.request.urlopen(f"{cluster.ui_url}/json/", timeout=5))
        assert status["status"] == "ALIVE"
        assert status["url"] == cluster.master_url
        alive = [w for w in status["workers"] if w["state"] == "ALIVE"]
        assert len(alive) == 2
        assert {w["cores"] for w in alive} == {1} and {w["memory"] for w in alive} == {512}
        assert len(_ps_lines_of(cluster.cluster_id)) == 3  # master + 2 workers, tagged
        state = hook.get_cluster(cluster.cluster_id)
        assert state.status == "RUNNING" and state.master_url == cluster.master_url
        assert (hook.cluster_folder(cluster.cluster_id) / "logs" / "master.out").exists()
    finally:
        started = time.monotonic()
        assert hook.delete_cluster(cluster.cluster_id) is True
        deleted_in = time.monotonic() - started
    assert _ps_lines_of(cluster.cluster_id) == []
    assert hook.cluster_processes(cluster.cluster_id) == []
    assert hook.get_cluster(cluster.cluster_id).status == "DELETED"
    # idempotent: a gone cluster deletes fine, again
    assert hook.delete_cluster(cluster.cluster_id) is False
    print(f"create {created_in:.1f} s, delete {deleted_in:.1f} s")
    assert created_in + deleted_in < 30  # ~6 s on an idle 2-core machine; generous for CI noise


def test_unknown_cluster():
    hook = LocalSparkClusterHook()
    with pytest.raises(ClusterNotFound):
        hook.get_cluster("spindle-local-never-created")
    assert hook.delete_cluster("spindle-local-never-created") is False
    with pytest.raises(ValueError, match="invalid cluster id"):
        hook.get_cluster("../escape")


def test_parse_metrics_line():
    assert parse_metrics_line('SPINDLE_METRICS {"rows": 3}') == {"rows": 3}
    assert parse_metrics_line('INFO something SPINDLE_METRICS {"a": [1]}') == {"a": [1]}
    assert parse_metrics_line("SPINDLE_METRICS not json") is None
    # The JVM's log line glued to the object before the driver's newline reached the stream.
    glued = 'SPINDLE_METRICS {"sum": 90}26/12/01 16:28:03 INFO SparkContext: SparkContext is stopping'
    assert parse_metrics_line(glued) == {"sum": 90}
    assert parse_metrics_line("no metrics here") is None


@pytest.fixture(scope="module")
def cluster():
    """One single-worker cluster shared by the spark-submit hook tests, deleted at the end."""
    hook = LocalSparkClusterHook()
    cluster = hook.create_cluster(num_workers=1, worker_cores=2, worker_memory=1024)
    yield cluster
    hook.delete_cluster(cluster.cluster_id)
    assert _ps_lines_of(cluster.cluster_id) == []


def _submit_hook(cluster, name: str, args: list[str]) -> SparkAppSubmitHook:
    return SparkAppSubmitHook(
        master=cluster.master_url,
        master_ui_url=cluster.ui_url,
        conf={
            "spark.pyspark.python": sys.executable,
            "spark.ui.showConsoleProgress": "false",
            **cluster.submit_conf(),
        },
        executor_cores=1,
        executor_memory="512m",
        total_executor_cores=2,
        name=name,
        application_args=args,
    )


def test_submit_streams_output_and_finds_app_id_and_metrics(cluster, tmp_path):
    app = tmp_path / "count.py"
    app.write_text(
        textwrap.dedent(
            """
            import json, sys
            from pyspark.sql import SparkSession
            spark = SparkSession.builder.getOrCreate()
            n = spark.sparkContext.parallelize(range(int(sys.argv[1])), 2).map(lambda x: x * 2).sum()
            print("SPINDLE_METRICS " + json.dumps({"sum": n}))
            spark.stop()
            """
        )
    )
    hook = _submit_hook(cluster, "spindle-test-count", ["10"])
    hook.submit(str(app))
    assert hook.metrics == {"sum": 90}
    assert hook.spark_app_id and hook.spark_app_id.startswith("app-")
    status = json.load(urllib.request.urlopen(f"{cluster.ui_url}/json/", timeout=5))
    apps = {a["id"]: a for a in status["completedapps"]}
    assert apps[hook.spark_app_id]["name"] == "spindle-test-count"
    assert apps[hook.spark_app_id]["state"] == "FINISHED"


def test_on_kill_stops_the_driver_and_the_application(cluster, tmp_path):
    app = tmp_path / "forever.py"
    app.write_text(
        textwrap.dedent(
            """
            import time
            from pyspark.sql import SparkSession
            spark = SparkSession.builder.getOrCreate()
            spark.sparkContext.parallelize(range(2), 2).foreach(lambda x: time.sleep(600))
            """
        )
    )
    hook = _submit_hook(cluster, "spindle-test-forever", [])
    outcome: list[BaseException | None] = []

    def submit() -> None:
        try:
            hook.submit(str(app))
            outcome.append(None)
        except AirflowException as err:  # spark-submit was killed: a non-zero exit is expected
            outcome.append(err)

    worker = threading.Thread(target=submit, daemon=True)
    worker.start()
    deadline = time.monotonic() + 120
    while hook.spark_app_id is None and time.monotonic() < deadline:
        time.sleep(0.5)
    assert hook.spark_app_id, "the application never started"
    driver_pid = hook._submit_sp.pid
    hook.on_kill()
    worker.join(timeout=30)
    assert not worker.is_alive()
    assert outcome and outcome[0] is not None, "a killed job must not look successful"
    assert hook._submit_sp.poll() is not None
    # the driver JVM and its Python child (one process group) are gone
    assert _group_members(driver_pid) == []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        status = json.load(urllib.request.urlopen(f"{cluster.ui_url}/json/", timeout=5))
        done = {a["id"]: a["state"] for a in status["completedapps"]}
        if hook.spark_app_id in done:
            break
        time.sleep(0.5)
    assert done.get(hook.spark_app_id) in {"KILLED", "FINISHED"}
    # executors of the killed application are gone too: only master + worker remain
    deadline = time.monotonic() + 30
    while len(LocalSparkClusterHook().cluster_processes(cluster.cluster_id)) > 2 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert len(LocalSparkClusterHook().cluster_processes(cluster.cluster_id)) == 2


def test_a_task_process_killed_takes_its_driver_with_it(cluster, tmp_path):
    """SIGKILL to the process that submitted (a task process the OS or Airflow's supervisor
    killed: no ``on_kill`` runs): spark-submit gets the parent-death signal, and the driver JVM
    and its Python child end instead of running on, orphaned, on the worker."""
    app = tmp_path / "forever.py"
    app.write_text(
        "import time\nfrom pyspark.sql import SparkSession\n"
        "SparkSession.builder.getOrCreate().sparkContext.parallelize(range(2), 2).foreach(lambda x: time.sleep(600))\n"
    )
    submitter = tmp_path / "submitter.py"
    submitter.write_text(
        textwrap.dedent(
            f"""
            import sys, threading, time
            from spindle.hooks.spark_app import SparkAppSubmitHook
            hook = SparkAppSubmitHook(
                master={cluster.master_url!r}, master_ui_url={cluster.ui_url!r},
                conf={{"spark.pyspark.python": sys.executable, **{cluster.submit_conf()!r}}},
                executor_cores=1, executor_memory="512m", total_executor_cores=2, name="spindle-test-orphan",
            )
            def report():
                while hook.spark_app_id is None:
                    time.sleep(0.2)
                print("SUBMITTED", hook._submit_sp.pid, flush=True)
            threading.Thread(target=report, daemon=True).start()
            hook.submit({str(app)!r})
            """
        )
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([sys.executable, str(submitter)], env=env, stdout=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        line = ""
        while not line.startswith("SUBMITTED") and time.monotonic() < deadline:
            line = proc.stdout.readline() or line
        assert line.startswith("SUBMITTED"), "the application never started"
        group = int(line.split()[1])
        assert len(_group_members(group)) >= 2  # the driver JVM and its Python child
        proc.kill()
        proc.wait(timeout=10)
        deadline = time.monotonic() + 30
        while _group_members(group) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert _group_members(group) == [], "spark-submit outlived the process that started it"
    finally:
        proc.kill()
