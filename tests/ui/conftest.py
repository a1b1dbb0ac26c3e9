"""Fixtures of the UI tests: one real Airflow for the whole session (starting one costs ~30 s),
stopped, swept and checked for leftovers at the end."""

from __future__ import annotations

import shutil

import pytest

from tests.support.ui import ARTIFACTS, AirflowServer, marked_pids, spark_daemons

DAG_IDS = ("spindle_nightly_books", "spindle_llm_transform")


@pytest.fixture(scope="session")
def artifacts():
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS


@pytest.fixture(scope="session")
def airflow_server(artifacts):
    """api-server + scheduler + dag-processor on 127.0.0.1:<free port>, the repo's DAGs parsed."""
    shutil.rmtree(artifacts / "logs", ignore_errors=True)
    server = AirflowServer(log_dir=artifacts / "logs")
    try:
        server.start()
        for dag_id in DAG_IDS:
            server.wait_for_dag(dag_id)
        yield server
    finally:
        swept = server.stop()
        # Task logs are worth keeping next to the component logs when something failed.
        logs = server.airflow_home / "logs"
        if logs.exists():
            shutil.copytree(logs, artifacts / "logs" / "airflow", dirs_exist_ok=True)
        left = marked_pids(server.run_token)
        daemons = spark_daemons(server.root)
        server.cleanup()
        assert not left, f"processes of the test Airflow survived SIGKILL: {left}"
        assert not daemons, f"Spark daemons left running: {daemons}"
        if swept:
            print(f"swept {len(swept)} processes left after stopping the components: {swept}")
