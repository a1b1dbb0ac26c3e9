"""Spark history after teardown: a finished local run's "Spark History" link answers once its
cluster is gone.

A real run of the LLM DAG (tiny T5) on a real local cluster, deleted by its teardown; then Spark's
own History Server, started the way ``scripts/airflow_ui.sh`` starts it (``python -m
spindle.history serve``), over the event logs the run kept under the warehouse; then real HTTP
GETs of the link's URL and of the server's REST API for the application.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.support.airflow_env import WAREHOUSE, parse_dags
from tests.support.paths import PLUGINS
from tests.support.ui import free_port

pytestmark = [pytest.mark.usefixtures("airflow_db"), pytest.mark.timeout(900)]

DAG_ID = "spindle_llm_transform"
CONF = {"limit": 8, "max_new_tokens": 2, "batch_size": 8, "num_workers": 1, "worker_cores": 1}


def _get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.status, response.read()


def _wait_json(url: str, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return json.loads(_get(url)[1])
        except (OSError, ValueError):
            if time.monotonic() > deadline:
                raise
        time.sleep(1)


@pytest.fixture(scope="module")
def tiny_t5(tmp_path_factory) -> Path:
    tiny_models = pytest.importorskip("devtools.tiny_models", reason="devtools.tiny_models not available")
    folder = tmp_path_factory.mktemp("tiny-t5")
    built = tiny_models.build_tiny_t5(folder)
    return Path(built) if built else folder


@pytest.fixture
def history_port(monkeypatch) -> int:
    """The port the History Server will listen on; the links are built for it."""
    port = free_port()
    monkeypatch.setenv("SPINDLE_HISTORY_URL", f"http://127.0.0.1:{port}")
    return port


def _serve(port: int, log: Path) -> subprocess.Popen:
    """The History Server as the UI script starts it, over the warehouse's kept event logs."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(PLUGINS), os.environ.get("PYTHONPATH", "")])}
    with open(log, "wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "spindle.history", "serve", "--port", str(port)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )


def test_history_link_of_a_finished_local_run_answers_after_the_cluster_is_gone(
    tiny_t5, history_port, tmp_path, no_new_clusters
):
    from airflow.api_fastapi.app import create_app
    from fastapi.testclient import TestClient
    from spindle.hooks.local_spark import LocalSparkClusterHook

    dag = parse_dags().dags[DAG_ID]
    run = dag.test(run_conf={**CONF, "model_path": str(tiny_t5)})
    states = {ti.task_id: str(ti.state) for ti in run.get_task_instances()}
    assert str(run.state) == "success", states

    def xcom(task_id: str, key: str):
        return run.get_task_instance(task_id).xcom_pull(task_ids=task_id, key=key)

    # The cluster that ran the job is gone: no process, its master UI does not answer.
    cluster_id = xcom("create_cluster", "return_value")
    cluster = LocalSparkClusterHook().get_cluster(cluster_id)
    assert cluster.status == "DELETED" and LocalSparkClusterHook().cluster_processes(cluster_id) == []
    with pytest.raises(OSError):
        _get(cluster.ui_url, timeout=2)

    # The event log was kept under the warehouse, named by the application id.
    app_id = xcom("llm_transform", "spark_app_id")
    assert app_id and app_id.startswith("app-")
    # (a file; Spark 4's rolling event log: a folder eventlog_v2_<app id>)
    kept = {path.name for path in (WAREHOUSE / "_spark-events").iterdir()}
    assert app_id in kept or f"eventlog_v2_{app_id}" in kept, kept

    # The link, stored at task end and served by the API server (plugin-registered).
    expected = f"http://127.0.0.1:{history_port}/history/{app_id}/jobs/"
    assert xcom("llm_transform", "_link_SparkHistoryLink") == expected
    with TestClient(create_app("core")) as client:
        url = f"/api/v2/dags/{DAG_ID}/dagRuns/{run.run_id}/taskInstances/llm_transform/links"
        response = client.get(url)
    assert response.status_code == 200, response.text
    assert response.json()["extra_links"]["Spark History"] == expected

    # Now the History Server, over the kept logs, answers the link with the finished application.
    server = _serve(history_port, tmp_path / "history-server.log")
    try:
        api = f"http://127.0.0.1:{history_port}/api/v1/applications/{app_id}"
        try:
            app = _wait_json(api, timeout=120)
        except (OSError, ValueError) as err:
            log = (tmp_path / "history-server.log").read_text(errors="replace")[-3000:]
            pytest.fail(f"the History Server did not list {app_id}: {err}\n{log}")
        assert app["id"] == app_id and app["name"].startswith("spindle.") and "llm_transform" in app["name"]
        assert app["attempts"][-1]["completed"] is True
        status, page = _get(expected, timeout=30)
        assert status == 200
        # the application's own jobs page (its title shortens a long app name to 32 characters)
        assert f"<title>{app['name'][:32]}".encode() in page and b" - Spark Jobs</title>" in page, page[:400]
        jobs = json.loads(_get(f"{api}/jobs")[1])
        assert jobs and all(job["status"] == "SUCCEEDED" for job in jobs)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=10)
