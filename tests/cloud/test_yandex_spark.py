"""The ``yandex_spark`` backend (Managed Service for Apache Spark) against the fake Yandex Cloud:
settings, the API's validation options, the cluster's life (create, stop, start, reap), a failed
job's traceback in the task log, the deferrable wait, and a killed job task cancelling its job
while the teardown still deletes the cluster. Spindle's operators run unmodified with a minimal
task context; the end-to-end DAG runs are in test_backends.py (param ``yandex_spark``)."""

from __future__ import annotations

import asyncio
import threading
import time

import grpc
import pytest
from spindle.backends import registry
from spindle.backends.config import BackendConfigError, validate_settings

from tests.support.cloud import BUCKET, FAILING_JOB, METRICS_JOB, set_backend_settings

pytestmark = pytest.mark.timeout(600)

SLEEPING_JOB = b"import time\ntime.sleep(600)\n"


class _TaskInstance:
    def __init__(self, task_id: str) -> None:
        self.dag_id, self.run_id, self.task_id, self.try_number, self.map_index = (
            "spindle_nightly_books",
            "manual__yandex_spark",
            task_id,
            1,
            -1,
        )
        self.xcom: dict[str, object] = {}

    def xcom_push(self, key: str, value: object) -> None:
        self.xcom[key] = value


def _context(task_id: str) -> dict:
    ti = _TaskInstance(task_id)
    return {"ti": ti, "task_instance": ti}


def _settings(**overrides) -> dict:
    return validate_settings("yandex_spark", set_backend_settings("yandex_spark", **overrides), "test")


def _upload(fake_aws, key: str, body: bytes) -> str:
    fake_aws.moto.client("s3").put_object(Bucket=BUCKET, Key=key, Body=body)
    return f"s3a://{BUCKET}/{key}"


def _job_operator(settings, cluster_id, job_uri, **kwargs):
    from spindle.yandex_spark.operators import ManagedSparkPysparkJobOperator

    staged = {"jobs": {"probe": job_uri}, "bucket": BUCKET, "prefix": "spindle", "scheme": "s3a"}
    return ManagedSparkPysparkJobOperator(
        task_id="embed_text", job="probe", staged=staged, settings=settings, cluster_id=cluster_id, **kwargs
    )


@pytest.fixture(scope="module")
def cluster(fake_yandex, fake_aws):
    """One cluster for the job tests, created by the lane's create task and deleted by its teardown."""
    from spindle.yandex_spark.operators import ManagedSparkCreateClusterOperator, ManagedSparkDeleteClusterOperator

    settings = _settings()
    cluster_id = ManagedSparkCreateClusterOperator(task_id="create_cluster", settings=settings).execute(
        _context("create_cluster")
    )
    yield cluster_id
    ManagedSparkDeleteClusterOperator(task_id="delete_cluster", settings=settings, cluster_id=cluster_id).execute(
        _context("delete_cluster")
    )
    assert cluster_id not in fake_yandex.spark.live_clusters


# --------------------------------------------------------------------------- settings
def test_settings_name_what_is_missing_or_wrong():
    with pytest.raises(BackendConfigError) as err:
        validate_settings("yandex_spark", {"bucket": "b", "environment": "build"}, "Variable x")
    for missing in ("folder_id", "subnet_ids", "service_account_id"):
        assert f"'{missing}' is missing" in str(err.value)
    base = {
        "bucket": "b",
        "environment": "build",
        "secrets_source": "lockbox://s",
        "folder_id": "f",
        "subnet_ids": ["s"],
        "service_account_id": "a",
    }
    with pytest.raises(BackendConfigError, match="'cluster_id' is missing \\(required by strategy start_stop\\)"):
        validate_settings("yandex_spark", {**base, "strategy": "start_stop"}, "Variable x")
    with pytest.raises(BackendConfigError, match="'strategy' must be one of create_delete, start_stop, not 'shared'"):
        validate_settings("yandex_spark", {**base, "strategy": "shared"}, "Variable x")
    with pytest.raises(BackendConfigError, match="'executor_max_count' must be at least 'executor_count'"):
        validate_settings("yandex_spark", {**base, "executor_count": 3, "executor_max_count": 2}, "Variable x")
    assert validate_settings("yandex_spark", base, "Variable x")["deferrable"] is None


def test_the_fake_refuses_what_the_api_refuses(fake_yandex):
    """The protos' validation options (read from the SDK), not the fake's own rules."""
    import yandex.cloud.spark.v1.cluster_service_pb2 as cluster_service_pb
    from spindle.yandex_spark.hooks import ManagedSparkHook
    from spindle.yandex_spark.operators import cluster_request

    hook = ManagedSparkHook(yandex_conn_id="yandexcloud_default")
    good = cluster_request(_settings(), "spindle-probe", {"spindle-managed": "true"}, "probe")
    bad_name = cluster_service_pb.CreateClusterRequest()
    bad_name.CopyFrom(good)
    bad_name.name = "Spindle_Probe"
    too_big = cluster_service_pb.CreateClusterRequest()
    too_big.CopyFrom(good)
    too_big.config.resource_pools.executor.scale_policy.fixed_scale.size = 101
    for request, field in ((bad_name, "name"), (too_big, "config.resource_pools.executor.scale_policy")):
        with pytest.raises(grpc.RpcError) as err:
            hook.create_cluster(request)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and field in err.value.details()
    assert not [d for m, d in fake_yandex.state.calls if m == "Spark.Cluster.Create" and d["name"] == "spindle-probe"]


def test_deferrable_follows_the_setting_else_airflows_default(monkeypatch):
    """Setting ``deferrable`` wins; null falls back to ``[operators] default_deferrable``."""
    monkeypatch.setenv("AIRFLOW__OPERATORS__DEFAULT_DEFERRABLE", "true")
    assert _job_operator(_settings(), "c9q", "s3a://b/j.py")._deferrable() is True
    assert _job_operator(_settings(deferrable=False), "c9q", "s3a://b/j.py")._deferrable() is False
    monkeypatch.setenv("AIRFLOW__OPERATORS__DEFAULT_DEFERRABLE", "false")
    assert _job_operator(_settings(), "c9q", "s3a://b/j.py")._deferrable() is False
    assert _job_operator(_settings(deferrable=True), "c9q", "s3a://b/j.py")._deferrable() is True


# --------------------------------------------------------------------------- cluster life
def test_start_stop_strategy_and_the_reaper(fake_yandex):
    """A labelled cluster; start_stop's create starts it, its teardown stops it (the Spark
    cluster behind it goes away); the reaper finds it by its labels and deletes it."""
    from spindle.yandex_spark.operators import ManagedSparkCreateClusterOperator, ManagedSparkDeleteClusterOperator

    settings = _settings(executor_count=1, executor_max_count=2)
    created = ManagedSparkCreateClusterOperator(task_id="create_cluster", settings=settings, cluster_name="spindle-ss")
    cluster_id = created.execute(_context("create_cluster"))
    proto = fake_yandex.spark.clusters[cluster_id].proto
    assert proto.labels["spindle-managed"] == "true" and proto.labels["spindle-backend"] == "yandex_spark"
    assert proto.config.resource_pools.executor.scale_policy.auto_scale.max_size == 2
    assert [link.name for link in proto.links] == ["Spark History Server"]

    persistent = _settings(strategy="start_stop", cluster_id=cluster_id)
    teardown = ManagedSparkDeleteClusterOperator(task_id="delete_cluster", settings=persistent, cluster_id=cluster_id)
    teardown.execute(_context("delete_cluster"))
    assert fake_yandex.spark.clusters[cluster_id].proto.status == proto.STOPPED
    assert fake_yandex.spark.clusters[cluster_id].nodes is None
    again = ManagedSparkCreateClusterOperator(task_id="create_cluster", settings=persistent)
    assert again.execute(_context("create_cluster")) == cluster_id
    assert fake_yandex.spark.clusters[cluster_id].proto.status == proto.RUNNING
    assert fake_yandex.state.count("Spark.Cluster.Start") >= 1

    findings = registry.reaper("yandex_spark")(settings, False, 0, time.time() + 60)
    reaped = [f for f in findings if f.resource_id == cluster_id]
    assert len(reaped) == 1 and reaped[0].expired and reaped[0].backend == "yandex_spark"
    deadline = time.monotonic() + 60
    while cluster_id in fake_yandex.spark.live_clusters and time.monotonic() < deadline:
        time.sleep(0.5)
    assert cluster_id not in fake_yandex.spark.live_clusters


# --------------------------------------------------------------------------- jobs
def test_a_failed_job_shows_its_traceback_in_the_task_log(cluster, fake_aws, capfd):
    from airflow.sdk.exceptions import AirflowException

    op = _job_operator(_settings(), cluster, _upload(fake_aws, "tests/spark/failing.py", FAILING_JOB))
    context = _context("embed_text")
    capfd.readouterr()
    with pytest.raises(AirflowException, match="ended ERROR"):
        op.execute(context)
    logged = capfd.readouterr().out
    assert "driver log (Managed Spark ListLog): begin" in logged
    assert "| Traceback (most recent call last):" in logged
    assert "| ValueError: no such table: books_42" in logged
    assert context["ti"].xcom["job_id"] == op.job_id
    assert context["ti"].xcom["spark_history_url"].startswith("http://")


def test_deferrable_wait_frees_the_worker_and_returns_the_jobs_metrics(cluster, fake_aws, fake_yandex, capfd):
    """execute() submits and defers; the trigger polls JobService.Get until the job is done;
    execute_complete copies the driver log and returns the metrics the job wrote to the bucket."""
    from airflow.sdk.exceptions import TaskDeferred

    op = _job_operator(_settings(deferrable=True), cluster, _upload(fake_aws, "tests/spark/metrics.py", METRICS_JOB))
    context = _context("embed_text")
    with pytest.raises(TaskDeferred) as deferred:
        op.execute(context)
    trigger = deferred.value.trigger
    job_id = context["ti"].xcom["job_id"]
    assert trigger.serialize()[1]["job_id"] == job_id
    assert fake_yandex.spark.jobs[job_id].proto.status != fake_yandex.spark.jobs[job_id].proto.DONE

    async def first_event():
        async for event in trigger.run():
            return event.payload

    event = asyncio.run(first_event())
    assert event["status"] == "DONE" and event["job_id"] == job_id
    resumed = _job_operator(_settings(deferrable=True), cluster, "unused")
    capfd.readouterr()
    metrics = resumed.execute_complete(context, event, **deferred.value.kwargs)
    assert metrics == {"job": "metrics_job", "rows": 3}
    assert "| wrote metrics to s3a://" in capfd.readouterr().out
    assert context["ti"].xcom["spark_ui_url"] == fake_yandex.spark.jobs[job_id].proto.ui_url != ""


def test_a_killed_job_task_cancels_its_job_and_the_teardown_still_deletes(cluster, fake_yandex, fake_aws):
    """The job task runs (a driver that sleeps); the task is killed: on_kill cancels the job
    through JobService.Cancel, the task fails, and the lane's teardown deletes the cluster
    (last test of the module: the fixture's own teardown then finds it gone)."""
    from airflow.sdk.exceptions import AirflowException
    from spindle.yandex_spark.operators import ManagedSparkDeleteClusterOperator

    settings = _settings()
    op = _job_operator(settings, cluster, _upload(fake_aws, "tests/spark/sleep.py", SLEEPING_JOB))
    outcome: dict[str, BaseException] = {}

    def run() -> None:
        try:
            op.execute(_context("embed_text"))
        except BaseException as err:  # noqa: BLE001 - inspected below
            outcome["error"] = err

    task = threading.Thread(target=run, daemon=True)
    task.start()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (op.job_id and fake_yandex.spark.jobs[op.job_id].running):
        time.sleep(0.5)
    job = fake_yandex.spark.jobs[op.job_id]
    assert job.running is not None and job.proto.status == job.proto.RUNNING
    op.on_kill()
    assert job.proto.status == job.proto.CANCELLED
    assert ("Spark.Job.Cancel", {"cluster_id": cluster, "job_id": op.job_id}) in fake_yandex.state.calls
    task.join(60)
    assert isinstance(outcome.get("error"), AirflowException) and "CANCELLED" in str(outcome["error"])

    ManagedSparkDeleteClusterOperator(task_id="delete_cluster", settings=settings, cluster_id=cluster).execute(
        _context("delete_cluster")
    )
    assert cluster not in fake_yandex.spark.live_clusters
    assert ("Spark.Cluster.Delete", {"cluster_id": cluster}) in fake_yandex.state.calls
