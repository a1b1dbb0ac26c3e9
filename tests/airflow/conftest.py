"""Fixtures of the Airflow-side tests (the isolated Airflow, its DB and the DagBag are shared:
``tests/conftest.py``): no Spark cluster of this session may outlive its test or the session."""

from __future__ import annotations

import pytest

from tests.support.airflow_env import spark_daemon_pids


def leftover_daemons() -> list[str]:
    """``ps`` lines of Spark masters/workers of any cluster this test session created (other
    people's Spark processes on a shared machine are not ours to judge)."""
    from spindle.hooks.local_spark import LocalSparkClusterHook

    ids = [c.cluster_id for c in LocalSparkClusterHook().list_clusters()]
    return [line for line in spark_daemon_pids() if any(f"-Dspindle.cluster.id={i} " in line + " " for i in ids)]


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
