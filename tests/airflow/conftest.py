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


def leftover_daemons() -> list[str]:
    """``ps`` lines of Spark masters/workers of any cluster this test session created (other
    people's Spark processes on a shared machine are not ours to judge)."""
    from spindle.hooks.local_spark import LocalSparkClusterHook

    ids = [c.cluster_id for c in LocalSparkClusterHook().list_clusters()]
    return [
        line for line in spark_daemon_pids() if any(f"-Dspindle.cluster.id={i} " in line + " " for i in ids)
    ]


@pytest.fixture
def no_new_clusters():
    """Fails a test that leaves a Spark master or worker of its clusters running."""
    yield
    left = leftover_daemons()
    assert not left, f"Spark processes left running: {left}"


@pytest.fixture(scope="session", autouse=True)
def _delete_leftover_clusters():
    """Safety net: whatever a failing test left running is stopped when the session ends."""
    yield
    from spindle.hooks.local_spark import LocalSparkClusterHook

    hook = LocalSparkClusterHook()
    for cluster in hook.list_clusters():
        hook.delete_cluster(cluster.cluster_id)
