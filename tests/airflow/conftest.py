"""Fixtures of the Airflow-side tests. ``airflow_testenv`` (imported first) points Airflow at an
isolated home, DB, secrets file and warehouse before anything imports Airflow."""

from __future__ import annotations

import airflow_testenv  # noqa: F401  (must run before any Airflow import)
import pytest
from airflow_testenv import AIRFLOW_HOME, REPO, spark_daemon_pids


@pytest.fixture(scope="session")
def airflow_db():
    """A fresh metadata DB for the session (Airflow's ``db migrate`` equivalent)."""
    from airflow.utils import db

    db.initdb()
    return AIRFLOW_HOME / "airflow.db"


@pytest.fixture(scope="session")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(REPO / "dags"))


@pytest.fixture
def no_new_clusters():
    """Fails a test that leaves a Spark master or worker of its own running."""
    before = set(spark_daemon_pids())
    yield
    left = [line for line in spark_daemon_pids() if line not in before]
    assert not left, f"Spark processes left running: {left}"
