"""The reaper covers the local lane: a real local Spark cluster older than the TTL is stopped by a
scheduled reaper run and left alone by a manual run with the defaults (a dry run)."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.support.airflow_env import parse_dags
from tests.support.cloud import run_dag, run_dag_scheduled

pytestmark = pytest.mark.usefixtures("airflow_db")


def _age(folder: str, hours: float) -> None:
    """Rewrite the cluster's recorded creation time as ``hours`` ago."""
    state = Path(folder) / "state.json"
    data = json.loads(state.read_text())
    data["created_at"] = (datetime.now(UTC) - timedelta(hours=hours)).isoformat(timespec="seconds")
    state.write_text(json.dumps(data))


def test_scheduled_reaper_run_stops_an_expired_local_cluster_manual_run_does_not(no_new_clusters, capfd):
    from spindle.hooks.local_spark import LocalSparkClusterHook

    dagbag = parse_dags()  # its own: dag.test() leaves the run's conf in the DAG's params
    hook = LocalSparkClusterHook()
    old = hook.create_cluster(
        num_workers=1, worker_cores=1, worker_memory=512, labels={"dag": "spindle_nightly_books", "run": "manual__old"}
    )
    # A second, young cluster: its state only (no processes needed to be judged "keep").
    young_id = f"spindle-local-young-{int(time.time())}"
    young = Path(hook.home) / young_id
    young.mkdir(parents=True)
    (young / "state.json").write_text(
        json.dumps(
            {
                "cluster_id": young_id,
                "folder": str(young),
                "host": "127.0.0.1",
                "master_url": "spark://127.0.0.1:1",
                "ui_url": "http://127.0.0.1:1",
                "num_workers": 1,
                "worker_cores": 1,
                "worker_memory": "512m",
                "status": "RUNNING",
                "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
            }
        )
    )
    try:
        _age(old.folder, 10)  # past the default TTL of 6 hours
        assert hook.cluster_processes(old.cluster_id)

        run, states = run_dag(dagbag, "spindle_reaper", backends=["local"])
        output = "".join(capfd.readouterr())
        assert str(run.run_type) in ("manual", "DagRunType.MANUAL") and states == {
            "reap": "success",
            "drop_partial_vectors": "success",
        }
        assert "DRY RUN" in output
        rows = [line for line in output.splitlines() if line.lstrip().startswith("local ")]  # the report's rows
        assert any(
            old.cluster_id in r and "would delete" in r and "spindle_nightly_books / manual__old" in r for r in rows
        )
        assert any(young_id in r and " keep " in r for r in rows), rows
        assert hook.get_cluster(old.cluster_id).status == "RUNNING" and hook.cluster_processes(old.cluster_id)

        run, states = run_dag_scheduled(dagbag, "spindle_reaper", backends=["local"], dry_run=True)
        assert run.run_type == "scheduled" and states == {"reap": "success", "drop_partial_vectors": "success"}
        assert hook.get_cluster(old.cluster_id).status == "DELETED"
        assert hook.cluster_processes(old.cluster_id) == []
        assert hook.get_cluster(young_id).status == "RUNNING"  # not expired: kept
    finally:
        hook.delete_cluster(old.cluster_id)
        hook.delete_cluster(young_id)


def test_local_ttl_from_the_param_or_env(monkeypatch, tmp_path):
    """Verdicts without processes: the TTL is the reaper's ttl_hours, else env
    SPINDLE_LOCAL_TTL_HOURS, else 6 hours; deleted clusters are not listed."""
    from spindle.backends import local
    from spindle.hooks.local_spark import LocalSparkCluster

    clusters = tmp_path / "clusters"
    monkeypatch.setenv("SPINDLE_HOME", str(tmp_path))
    now = time.time()
    for name, hours, status in (("a", 2, "RUNNING"), ("b", 8, "FAILED"), ("c", 30, "DELETED")):
        folder = clusters / name
        folder.mkdir(parents=True)
        created = datetime.fromtimestamp(now - hours * 3600, UTC).isoformat(timespec="seconds")
        cluster = LocalSparkCluster(
            name, str(folder), "127.0.0.1", "spark://x:1", "http://x:1", 1, 1, "1g", status, created
        )
        (folder / "state.json").write_text(cluster.to_json())

    def verdicts(ttl=None):
        return {f.resource_id: f.expired for f in local.reap({}, True, ttl, now)}

    assert verdicts() == {"a": False, "b": True}
    assert verdicts(1) == {"a": True, "b": True}
    monkeypatch.setenv("SPINDLE_LOCAL_TTL_HOURS", "12")
    assert verdicts() == {"a": False, "b": False}
    assert all(f.action == "would delete" for f in local.reap({}, True, 0, now))


def _state_only_cluster(hook, cluster_id: str, minutes_old: float, dag: str) -> str:
    """A cluster's ``state.json`` as ``create_cluster`` records it (no processes: the verdict and
    the delete are what is tested), created ``minutes_old`` ago by a run of ``dag``."""
    from spindle.hooks.local_spark import LocalSparkCluster

    folder = Path(hook.home) / cluster_id
    folder.mkdir(parents=True)
    created = (datetime.now(UTC) - timedelta(minutes=minutes_old)).isoformat(timespec="seconds")
    cluster = LocalSparkCluster(
        cluster_id, str(folder), "127.0.0.1", "spark://x:1", "http://x:1", 1, 1, "1g", "RUNNING", created
    )
    cluster.labels = {"dag": dag, "run": "manual__orphan"}
    (folder / "state.json").write_text(cluster.to_json())
    return cluster_id


def test_orphans_go_before_their_ttl_when_their_dag_has_no_active_run(monkeypatch, capfd):
    """A cluster younger than its TTL whose DAG has no queued or running run (as Airflow says:
    the task asks it) is an orphan once past the grace period; one whose DAG is running (here the
    reaper itself) or that is younger than the grace period is kept."""
    from spindle.hooks.local_spark import LocalSparkClusterHook

    monkeypatch.setenv("SPINDLE_ORPHAN_GRACE_MINUTES", "10")
    dagbag = parse_dags()
    hook = LocalSparkClusterHook()
    stamp = int(time.time())
    orphan = _state_only_cluster(hook, f"spindle-local-orphan-{stamp}", 20, "spindle_test_dag_without_runs")
    busy = _state_only_cluster(hook, f"spindle-local-busy-{stamp}", 20, "spindle_reaper")
    fresh = _state_only_cluster(hook, f"spindle-local-fresh-{stamp}", 1, "spindle_test_dag_without_runs")
    try:
        run, states = run_dag(dagbag, "spindle_reaper", backends=["local"])  # manual: dry run
        assert states["reap"] == "success"
        rows = [line for line in "".join(capfd.readouterr()).splitlines() if line.lstrip().startswith("local ")]
        assert any(orphan in r and "would delete" in r and "orphan: its DAG has no active run" in r for r in rows)
        assert any(busy in r and " keep " in r for r in rows) and any(fresh in r and " keep " in r for r in rows)
        assert hook.get_cluster(orphan).status == "RUNNING"

        run, states = run_dag_scheduled(dagbag, "spindle_reaper", backends=["local"])
        assert states["reap"] == "success"
        assert [hook.get_cluster(c).status for c in (orphan, busy, fresh)] == ["DELETED", "RUNNING", "RUNNING"]
    finally:
        for cluster_id in (orphan, busy, fresh):
            hook.delete_cluster(cluster_id)
