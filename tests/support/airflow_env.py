"""The isolated Airflow of the tests, set up on import (``tests/conftest.py`` imports it first).

Its own home, sqlite DB, secrets file, warehouse and Spindle run folder in a temp dir, so the
dev ``.airflow``/``.spindle`` are never touched.

Airflow reads its configuration when ``airflow`` is first imported, so the environment is set
here, at import time of the root conftest, before any conftest or test module imports Airflow.
The DAGs and plugins are the repository's own (``dag.test()`` needs the DAG file inside the
dags folder); ``plugins/`` is on ``sys.path`` through ``pythonpath`` in ``pytest.ini``.
"""

from __future__ import annotations

import atexit
import json
import os
import secrets
import shutil
import sys
import tempfile
from pathlib import Path

from tests.support.paths import DAGS, PLUGINS, REPO

if "airflow" in sys.modules:  # pragma: no cover - a guard, not a code path
    raise RuntimeError("tests.support.airflow_env must configure Airflow before anything imports it")

SESSION_DIR = Path(tempfile.mkdtemp(prefix="spindle-airflow-tests-"))
atexit.register(shutil.rmtree, SESSION_DIR, ignore_errors=True)
AIRFLOW_HOME = SESSION_DIR / "airflow"
SECRETS_DIR = AIRFLOW_HOME / "secrets"
WAREHOUSE = SESSION_DIR / "warehouse"
SPINDLE_HOME = SESSION_DIR / "spindle"
WAREHOUSE_CONN_ID = "spindle_warehouse"
#: The warehouse connection's password. No test may find it in logs, XCom, rendered fields
#: or a process command line.
WAREHOUSE_SECRET = "spindle-test-" + secrets.token_urlsafe(24)

for folder in (SECRETS_DIR, WAREHOUSE, SPINDLE_HOME):
    folder.mkdir(parents=True)
CONNECTIONS_FILE = SECRETS_DIR / "connections.json"
CONNECTIONS_FILE.write_text(
    json.dumps(
        {
            WAREHOUSE_CONN_ID: {
                "conn_type": "fs",
                "login": "spindle",
                "password": WAREHOUSE_SECRET,
                "extra": {"root": str(WAREHOUSE)},
            }
        }
    )
)
(SECRETS_DIR / "variables.json").write_text("{}")

_backend = "airflow.secrets.local_filesystem.LocalFilesystemBackend"
_backend_kwargs = json.dumps(
    {
        "connections_file_path": str(CONNECTIONS_FILE),
        "variables_file_path": str(SECRETS_DIR / "variables.json"),
    }
)
os.environ.update(
    {
        "AIRFLOW_HOME": str(AIRFLOW_HOME),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{AIRFLOW_HOME}/airflow.db",
        "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(PLUGINS),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
        # The REST API answers the test client as admin (Simple auth manager), no login needed.
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
        "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(AIRFLOW_HOME / "logs"),
        "AIRFLOW__SECRETS__BACKEND": _backend,
        "AIRFLOW__SECRETS__BACKEND_KWARGS": _backend_kwargs,
        "AIRFLOW__WORKERS__SECRETS_BACKEND": _backend,
        "AIRFLOW__WORKERS__SECRETS_BACKEND_KWARGS": _backend_kwargs,
        "SPINDLE_HOME": str(SPINDLE_HOME),
        "SPINDLE_REPO": str(REPO),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        # No retries: dag.test() honours up_for_retry and waits out each retry delay (minutes),
        # and tests of failing runs expect the first failure to be final.
        "SPINDLE_TASK_RETRIES": "0",
    }
)
os.environ.pop("SPINDLE_SECRETS_SOURCE", None)  # derived from the secrets backend config
os.environ.setdefault("PYSPARK_PYTHON", sys.executable)


def parse_dags():
    """The repository's DAGs, parsed into a new DagBag (imports Airflow: call it from a fixture).

    A bag's DAG objects keep state from the ``dag.test()`` runs made on them (a task's params keep
    the last run's conf), so test folders that run DAGs with different confs do not share one."""
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(DAGS))


def spark_daemon_pids() -> list[str]:
    """``ps`` lines of every Spark standalone master or worker on this machine."""
    import subprocess

    out = subprocess.run(["ps", "-ww", "-eo", "pid,args"], capture_output=True, text=True, check=True).stdout
    return [
        line
        for line in out.splitlines()
        if "org.apache.spark.deploy.master.Master" in line or "org.apache.spark.deploy.worker.Worker" in line
    ]
