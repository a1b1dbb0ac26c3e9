"""REST API v2 path of a manual trigger: invalid params are refused when the run is created,
with a message that names the parameter, and nothing starts: no DAG run, no cluster folder under
``$SPINDLE_HOME/clusters``, no Spark master or worker."""

from __future__ import annotations

import time

import pytest

from tests.support.ui import spark_daemons

DAG_ID = "spindle_nightly_books"


def _cluster_folders(server) -> set[str]:
    return {p.name for p in server.clusters_dir.iterdir()} if server.clusters_dir.exists() else set()


def _run_ids(server) -> set[str]:
    runs = server.api("GET", f"/dags/{DAG_ID}/dagRuns?limit=100")["dag_runs"]
    return {r["dag_run_id"] for r in runs}


@pytest.mark.parametrize(
    ("conf", "param"),
    [
        ({"limit": -5}, "limit"),
        ({"num_workers": 0}, "num_workers"),
        ({"executor_memory_mb": "lots"}, "executor_memory_mb"),
    ],
    ids=["negative-limit", "zero-workers", "memory-not-a-number"],
)
def test_trigger_with_invalid_param_is_refused(airflow_server, conf, param):
    server = airflow_server
    server.api("PATCH", f"/dags/{DAG_ID}", {"is_paused": False})
    runs_before, clusters_before = _run_ids(server), _cluster_folders(server)

    status, body = server.request("POST", f"/api/v2/dags/{DAG_ID}/dagRuns", {"logical_date": None, "conf": conf})

    assert status == 400, (status, body)
    detail = str(body.get("detail") if isinstance(body, dict) else body)
    assert param in detail, f"the refusal does not name param {param!r}: {detail}"
    # Nothing was created, and nothing starts later: give the scheduler a few loops.
    time.sleep(4)
    assert _run_ids(server) == runs_before
    assert _cluster_folders(server) == clusters_before
    assert not spark_daemons(server.root)


def test_valid_trigger_needs_auth(airflow_server):
    """The API is not open: without a token the same trigger is refused (401/403)."""
    status, _ = airflow_server.request(
        "POST", f"/api/v2/dags/{DAG_ID}/dagRuns", {"logical_date": None, "conf": {"limit": 5}}, auth=False
    )
    assert status in (401, 403)
