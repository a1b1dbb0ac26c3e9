"""Data Proc cluster strategies besides create/delete, against the TLS gRPC fake (jobs run for
real with spark-submit on the fake's local Spark clusters):

- ``strategy: shared``: ``spindle_shared_cluster_open`` creates one cluster and publishes its id
  (asset event extra); a model DAG acquires it in its first task, runs its jobs on it without
  creating or deleting anything and releases it (asset event); ``spindle_shared_cluster_close``
  deletes it once every model released it, exactly once. ``dag.test()`` does not start
  asset-triggered runs, so the chain is driven here run by run, each DAG reading the events
  the previous one stored, as it would when the scheduler starts it; the schedules' wiring to
  the assets is asserted separately.
- ``strategy: start_stop``: the nightly DAG starts a stopped persistent cluster, runs its jobs
  on it and stops it again; nothing is created or deleted.
"""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest
from spindle.yandex import shared
from spindle.yandex.shared import RELEASE_ALIAS, SHARED_CLUSTER, SHARED_CLUSTER_RELEASED

from tests.support.cloud import BUCKET, FOLDER_ID, run_nightly, set_backend_settings

pytestmark = pytest.mark.timeout(900)

NIGHTLY = "spindle_nightly_books"
LLM = "spindle_llm_transform"
LIMIT = 300  # rows of the sample dump (enough to keep some books: load_vectors refuses an empty run)


def run_dag(dagbag, dag_id: str, **conf):
    run = dagbag.dags[dag_id].test(run_conf=conf or None)
    return run, {ti.task_id: str(ti.state) for ti in run.get_task_instances()}


def asset_events(asset) -> list[dict]:
    """Extras of the asset's events in the metadata DB, oldest first."""
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        query = (
            select(AssetEvent)
            .join(AssetModel, AssetEvent.asset_id == AssetModel.id)
            .where(AssetModel.name == asset.name)
            .order_by(AssetEvent.id)
        )
        return [dict(e.extra or {}, source_dag_id=e.source_dag_id) for e in session.scalars(query)]


def calls(fake, method: str, since: int = 0) -> list[dict]:
    return [d for n, d in fake.state.calls[since:] if n == method]


def cluster_status(fake, cluster_id: str) -> str | None:
    from yandex.cloud.dataproc.v1 import cluster_pb2

    with fake.state.lock:
        cluster = fake.state.clusters.get(cluster_id)
        return None if cluster is None else cluster_pb2.Cluster.Status.Name(cluster.proto.status)


def delete_if_alive(cluster_id: str | None) -> None:
    """Test clean-up through the API (the session's fake must end with no cluster)."""
    from spindle.yandex.hooks import SpindleDataprocHook

    hook = SpindleDataprocHook(yandex_conn_id="yandexcloud_default")
    if cluster_id and cluster_id in {c.id for c in hook.list_clusters()}:
        hook.dataproc_client.delete_cluster(cluster_id)


def jobs_ran(dagbag, states: dict, dag_id: str = NIGHTLY) -> list[str]:
    """Task ids of the run's Data Proc job tasks that succeeded (skipped optional steps left out)."""
    from spindle.yandex.operators import SpindleDataprocPysparkJobOperator

    tasks = [t.task_id for t in dagbag.dags[dag_id].tasks if isinstance(t, SpindleDataprocPysparkJobOperator)]
    return sorted(t for t in tasks if states[t] == "success")


def assert_jobs_on(fake, since: int, cluster_id: str, task_ids: list[str], run_id: str, dag_id: str = NIGHTLY) -> None:
    """Exactly one Data Proc job per job task that ran (named by dag, run, task and try), each on
    ``cluster_id``."""
    from spindle.yandex.operators import dataproc_job_name

    jobs = calls(fake, "Job.Create", since)
    assert len(jobs) == len(task_ids), [j["name"] for j in jobs]
    for task_id in task_ids:
        name = dataproc_job_name(SimpleNamespace(dag_id=dag_id, run_id=run_id, task_id=task_id, try_number=1))
        assert [j for j in jobs if j["name"] == name], f"no job of {task_id}"
    assert {j["cluster_id"] for j in jobs} == {cluster_id}


def nothing_ran_after_check(states: dict) -> None:
    assert states["check_backend"] == "failed"
    ran = {t: s for t, s in states.items() if t != "check_backend" and s not in ("None", "upstream_failed")}
    assert ran == {}, f"tasks ran after the failed check: {ran}"


# --------------------------------------------------------------------------- wiring, no Spark
def test_shared_cluster_dags_are_wired_to_the_assets(cloud_dagbag):
    from airflow.sdk import AssetOrTimeSchedule

    open_dag = cloud_dagbag.dags[shared.OPEN_DAG_ID]
    assert open_dag.get_task("publish").outlets == [SHARED_CLUSTER]
    assert SHARED_CLUSTER in open_dag.get_task("check_backend").inlets
    assert open_dag.get_task("discard_unpublished").is_teardown
    assert open_dag.timetable.can_be_scheduled is False  # opt-in: env SPINDLE_SHARED_CLUSTER_SCHEDULE

    close = cloud_dagbag.dags[shared.CLOSE_DAG_ID]
    assert isinstance(close.timetable, AssetOrTimeSchedule)
    assert close.timetable.asset_condition == SHARED_CLUSTER_RELEASED  # every release ...
    assert close.timetable.timetable.expression == "0 9 * * *"  # ... or the daily deadline
    assert set(close.get_task("plan_close").inlets) == {SHARED_CLUSTER, SHARED_CLUSTER_RELEASED}
    delete = close.get_task("delete_cluster")
    assert delete.cluster_id.operator is close.get_task("plan_close") and delete.outlets == []

    for dag_id in shared.SHARED_MODEL_DAGS:
        dag = cloud_dagbag.dags[dag_id]
        assert SHARED_CLUSTER in dag.get_task("check_backend").inlets
        create, release = dag.get_task("yandex.create_cluster"), dag.get_task("yandex.delete_cluster")
        assert release.outlets == [RELEASE_ALIAS] and release.is_teardown and create.is_setup
        assert release.cluster_id.operator is create
        jobs = [t for t in dag.tasks if t.task_id.startswith("yandex.") and hasattr(t, "job")]
        assert jobs and all(j.cluster_id.operator is create for j in jobs)


def test_close_counts_releases_of_the_published_cluster():
    published = {"cluster_id": "c9qnew", "models": [NIGHTLY, LLM]}
    old = {"cluster_id": "c9qold", "dag_id": LLM}
    nightly = {"cluster_id": "c9qnew", "dag_id": NIGHTLY}
    llm = {"cluster_id": "c9qnew", "dag_id": LLM}
    assert shared.plan_close(None, [])["action"] == "none"
    plan = shared.plan_close(published, [nightly, old])
    assert plan["action"] == "wait" and plan["pending"] == [LLM]  # a release of an older cluster does not count
    assert shared.plan_close(published, [nightly, old], force=True)["action"] == "delete"
    plan = shared.plan_close(published, [llm, nightly, nightly])
    assert plan == {**plan, "action": "delete", "cluster_id": "c9qnew", "pending": [], "released": [LLM, NIGHTLY]}


class _Events:
    """Stand-in for Airflow's inlet events accessor (the DAG tests below use the real one)."""

    def __init__(self, *extras: dict) -> None:
        import datetime

        now = datetime.datetime.now(datetime.timezone.utc)
        self.events = [
            SimpleNamespace(extra=e, timestamp=now, source_dag_id=shared.OPEN_DAG_ID, source_run_id="r") for e in extras
        ]

    def __getitem__(self, asset):
        return self

    def ascending(self, ascending=True):
        return SimpleNamespace(limit=lambda n: self.events[::-1][:n] if not ascending else self.events[:n])


def test_acquire_refuses_an_expired_or_foreign_cluster_before_asking_the_api():
    settings = {"connection_id": "no_such_connection"}  # never reached
    old = shared.publication("c9qold", [NIGHTLY], 6, shared.OPEN_DAG_ID, "r", now=time.time() - 7 * 3600)
    with pytest.raises(shared.SharedClusterError, match="c9qold is past its TTL of 6 h"):
        shared.acquire(_Events(old), settings, NIGHTLY)
    new = shared.publication("c9qnew", [NIGHTLY], 6, shared.OPEN_DAG_ID, "r")
    with pytest.raises(shared.SharedClusterError, match=f"DAG {LLM} is not among the models of shared cluster c9qnew"):
        shared.acquire(_Events(old, new), settings, LLM)
    with pytest.raises(shared.SharedClusterError, match="no shared Data Proc cluster was ever published"):
        shared.acquire(_Events(), settings, NIGHTLY)


def test_shared_strategy_refuses_cluster_id_setting():
    from spindle.backends import config

    base = {
        "bucket": "b",
        "folder_id": "f",
        "subnet_id": "s",
        "service_account_id": "a",
        "oslogin_enabled": True,
        "environment": "provided",
        "secrets_source": "lockbox://e6q",
    }
    with pytest.raises(config.BackendConfigError, match="'cluster_id' must not be set with strategy shared"):
        config.validate_settings("yandex", {**base, "strategy": "shared", "cluster_id": "c9q"}, "Variable x")
    with pytest.raises(config.BackendConfigError, match="'strategy' must be one of create_delete, start_stop, shared"):
        config.validate_settings("yandex", {**base, "strategy": "sometimes"}, "Variable x")


# --------------------------------------------------------------------------- strategy: shared
def test_shared_strategy_without_an_open_cluster_fails_the_first_task(cloud_dagbag, fake_yandex, capfd):
    if asset_events(SHARED_CLUSTER):
        pytest.skip("a shared cluster was already published in this session (runs first in this module)")
    set_backend_settings("yandex", strategy="shared")
    created = fake_yandex.state.count("Cluster.Create")
    run, states = run_nightly(cloud_dagbag, "yandex", limit=LIMIT)
    assert str(run.state) == "failed"
    nothing_ran_after_check(states)
    assert fake_yandex.state.count("Cluster.Create") == created
    assert "no shared Data Proc cluster was ever published" in capfd.readouterr().out


def test_shared_cluster_open_use_close(cloud_dagbag, fake_yandex, cluster_environment, no_new_spark_processes, capfd):
    set_backend_settings("yandex", strategy="shared")
    cluster_id = None
    try:
        published, released = len(asset_events(SHARED_CLUSTER)), len(asset_events(SHARED_CLUSTER_RELEASED))
        # open: exactly one cluster, published with its id
        before = len(fake_yandex.state.calls)
        run, states = run_dag(cloud_dagbag, shared.OPEN_DAG_ID, models=[NIGHTLY])
        assert str(run.state) == "success", states
        assert states["discard_unpublished"] == "success"
        [create] = calls(fake_yandex, "Cluster.Create", before)
        cluster_id = create["cluster_id"]
        assert create["labels"]["spindle-shared"] == "true" and create["labels"]["spindle-managed"] == "true"
        [event] = asset_events(SHARED_CLUSTER)[published:]
        assert event["cluster_id"] == cluster_id and event["models"] == [NIGHTLY]
        assert event["source_dag_id"] == shared.OPEN_DAG_ID
        assert cluster_status(fake_yandex, cluster_id) == "RUNNING"

        # a second open is refused while that one runs
        before = len(fake_yandex.state.calls)
        run, states = run_dag(cloud_dagbag, shared.OPEN_DAG_ID, models=[NIGHTLY])
        assert str(run.state) == "failed" and states["check_backend"] == "failed"
        assert calls(fake_yandex, "Cluster.Create", before) == []
        assert f"shared cluster {cluster_id} is still RUNNING" in capfd.readouterr().out

        # close before any model released it: waits, deletes nothing
        before = len(fake_yandex.state.calls)
        run, states = run_dag(cloud_dagbag, shared.CLOSE_DAG_ID)
        assert str(run.state) == "success" and states["delete_cluster"] == "skipped", states
        assert calls(fake_yandex, "Cluster.Delete", before) == []
        assert f"waiting for ['{NIGHTLY}']" in capfd.readouterr().out

        # the model DAG: jobs on the shared cluster, nothing created or deleted, released
        before = len(fake_yandex.state.calls)
        run, states = run_nightly(cloud_dagbag, "yandex", limit=LIMIT)
        assert str(run.state) == "success", states
        assert {
            states[f"yandex.{t}"] for t in ("stage", "create_cluster", "prepare_books", "embed_text", "delete_cluster")
        } == {"success"}
        assert calls(fake_yandex, "Cluster.Create", before) == []
        assert calls(fake_yandex, "Cluster.Delete", before) == []
        assert {"yandex.prepare_books", "yandex.embed_text"} <= set(jobs_ran(cloud_dagbag, states))
        assert_jobs_on(fake_yandex, before, cluster_id, jobs_ran(cloud_dagbag, states), run.run_id)
        ti = run.get_task_instance("yandex.create_cluster")
        assert ti.xcom_pull(task_ids="yandex.create_cluster") == cluster_id
        assert ti.xcom_pull(task_ids="yandex.embed_text")["job"] == "embed_text"
        assert cluster_status(fake_yandex, cluster_id) == "RUNNING"
        [release] = asset_events(SHARED_CLUSTER_RELEASED)[released:]
        assert release == {"cluster_id": cluster_id, "dag_id": NIGHTLY, "run_id": run.run_id, "source_dag_id": NIGHTLY}

        # close after the last model released it: deleted, once
        before = len(fake_yandex.state.calls)
        run, states = run_dag(cloud_dagbag, shared.CLOSE_DAG_ID)
        assert str(run.state) == "success" and states["delete_cluster"] == "success", states
        assert [d["cluster_id"] for d in calls(fake_yandex, "Cluster.Delete", before)] == [cluster_id]
        assert fake_yandex.live_clusters == []
        run, states = run_dag(cloud_dagbag, shared.CLOSE_DAG_ID)  # a late close: nothing to delete
        assert str(run.state) == "success" and states["delete_cluster"] == "skipped", states
        assert [d["cluster_id"] for d in calls(fake_yandex, "Cluster.Delete", before)] == [cluster_id]
        capfd.readouterr()

        # a model run after the close: the published cluster is stale, the first task says so
        before = len(fake_yandex.state.calls)
        run, states = run_nightly(cloud_dagbag, "yandex", limit=LIMIT)
        assert str(run.state) == "failed"
        nothing_ran_after_check(states)
        assert calls(fake_yandex, "Cluster.Create", before) == calls(fake_yandex, "Job.Create", before) == []
        assert f"shared cluster {cluster_id} no longer exists" in capfd.readouterr().out
    finally:
        delete_if_alive(cluster_id)


# --------------------------------------------------------------------------- strategy: start_stop
def test_start_stop_strategy_starts_and_stops_the_persistent_cluster(
    cloud_dagbag, fake_yandex, cluster_environment, no_new_spark_processes
):
    """The run starts the stopped cluster, submits to it, and its teardown stops it again even
    though the first job fails (a driver that dies at once: the cheapest real job; the success
    path of jobs on a cluster the run did not create is the shared chain's)."""

    from spindle.yandex.hooks import SpindleDataprocHook

    settings = set_backend_settings("yandex")
    hook = SpindleDataprocHook(yandex_conn_id="yandexcloud_default")
    cluster_id = None
    try:
        created = hook.dataproc_client.create_cluster(
            s3_bucket=BUCKET,
            folder_id=FOLDER_ID,
            cluster_name="spindle-persistent-test",
            subnet_id=settings["subnet_id"],
            zone="ru-central1-a",
            service_account_id=settings["service_account_id"],
            ssh_public_keys=settings["ssh_public_keys"],
            datanode_count=1,
        )
        cluster_id = created.response.id
        hook.stop_cluster(cluster_id)
        assert cluster_status(fake_yandex, cluster_id) == "STOPPED"

        set_backend_settings(
            "yandex",
            strategy="start_stop",
            cluster_id=cluster_id,
            spark_properties={"spark.executor.memory": "not-a-size"},
        )
        before = len(fake_yandex.state.calls)
        run, states = run_nightly(cloud_dagbag, "yandex", limit=LIMIT)
        assert str(run.state) == "failed"
        assert states["yandex.create_cluster"] == "success" and states["yandex.prepare_books"] == "failed"
        assert states["yandex.delete_cluster"] == "success", states
        assert [d["cluster_id"] for d in calls(fake_yandex, "Cluster.Start", before)] == [cluster_id]
        assert [d["cluster_id"] for d in calls(fake_yandex, "Cluster.Stop", before)] == [cluster_id]
        assert calls(fake_yandex, "Cluster.Create", before) == calls(fake_yandex, "Cluster.Delete", before) == []
        assert_jobs_on(fake_yandex, before, cluster_id, ["yandex.prepare_books"], run.run_id)
        assert cluster_status(fake_yandex, cluster_id) == "STOPPED"
        assert all(e["cluster_id"] != cluster_id for e in asset_events(SHARED_CLUSTER_RELEASED))  # not released
    finally:
        delete_if_alive(cluster_id)
