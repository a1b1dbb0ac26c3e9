"""Airflow operators for Yandex Managed Service for Apache Spark (the provider has none).

- :class:`ManagedSparkCreateClusterOperator`: a cluster from the backend's settings (driver and
  executor resource pools, history server, dependencies, network), labelled for the reaper;
  with ``strategy: start_stop`` it starts the persistent cluster instead.
- :class:`ManagedSparkPysparkJobOperator`: a ``spark_apps`` job as a ``pyspark_job``; waits
  for it (polling ``JobService.Get`` while it streams ``ListLog`` into the task log, or
  deferred to :class:`~spindle.yandex_spark.triggers.ManagedSparkJobTrigger`), returns the
  job's metrics from the bucket; "Spark UI" (the job's ``ui_url``) and "Spark History" (the
  cluster's history server) links; ``on_kill`` cancels the job.
- :class:`ManagedSparkDeleteClusterOperator`: the lane's teardown (stops instead with
  ``strategy: start_stop``); :class:`ManagedSparkStartClusterOperator` /
  :class:`ManagedSparkStopClusterOperator` for DAGs of their own.

Every operator takes ``cluster_id`` explicitly (``create.output``); the job task pushes its job
id (XCom ``job_id``) before it waits.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from typing import Any

import grpc
from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowException

from spindle.backends.common import (
    LABEL_CREATED,
    XCOM_CONSOLE_URL,
    XCOM_SPARK_UI_URL,
    CloudConsoleLink,
    CloudSparkUILink,
    JobSpec,
    XComUrlLink,
    label_value,
    spindle_labels,
)
from spindle.yandex_spark.hooks import FINISHED, ManagedSparkHook, cluster_status, job_status

BACKEND = "yandex_spark"
XCOM_JOB_ID = "job_id"
XCOM_HISTORY_URL = "spark_history_url"
LOG_TITLE = "driver log (Managed Spark ListLog)"


class SparkHistoryLink(XComUrlLink):
    """The cluster's Spark History Server (the job's UI after it ended)."""

    name = "Spark History"
    xcom_key = XCOM_HISTORY_URL


def job_name(ti: Any) -> str:
    """A job name the API accepts (``|[a-z][-a-z0-9]{1,61}[a-z0-9]``), unique per try."""
    from spindle.yandex.operators import dataproc_job_name

    return dataproc_job_name(ti)


def _require_cluster_id(cluster_id: Any) -> str:
    if not cluster_id:
        raise ValueError("cluster_id is required: pass cluster_id=create.output")
    return str(cluster_id)


def cluster_request(settings: dict[str, Any], name: str, labels: dict[str, str], description: str):
    """``CreateClusterRequest`` from the backend's settings."""
    import yandex.cloud.spark.v1.cluster_pb2 as cluster_pb
    import yandex.cloud.spark.v1.cluster_service_pb2 as cluster_service_pb

    s = settings

    def pool(preset: str, size: int, max_size: int | None, preemptible: bool):
        if max_size:  # auto scale between size and max_size
            scale = cluster_pb.ScalePolicy(
                auto_scale=cluster_pb.ScalePolicy.AutoScale(min_size=size, max_size=max_size)
            )
        else:
            scale = cluster_pb.ScalePolicy(fixed_scale=cluster_pb.ScalePolicy.FixedScale(size=size))
        return cluster_pb.ResourcePool(resource_preset_id=preset, scale_policy=scale, preemptible=preemptible)

    config = cluster_pb.ClusterConfig(
        resource_pools=cluster_pb.ResourcePools(
            driver=pool(s["driver_resource_preset"], s["driver_count"], None, False),
            executor=pool(
                s["executor_resource_preset"], s["executor_count"], s["executor_max_count"], s["preemptible_executors"]
            ),
        ),
        history_server=cluster_pb.HistoryServerConfig(enabled=s["history_server"]),
        dependencies=cluster_pb.Dependencies(pip_packages=s["pip_packages"], deb_packages=s["deb_packages"]),
        spark_version=s["spark_version"] or "",
        environment_id=s["environment_id"] or "",
    )
    logging = None
    if s["log_group_id"]:
        logging = cluster_pb.LoggingConfig(enabled=True, log_group_id=s["log_group_id"])
    return cluster_service_pb.CreateClusterRequest(
        folder_id=s["folder_id"],
        name=name,
        description=description,
        labels=labels,
        config=config,
        network=cluster_pb.NetworkConfig(subnet_ids=s["subnet_ids"], security_group_ids=s["security_group_ids"]),
        service_account_id=s["service_account_id"],
        deletion_protection=False,
        logging=logging,
    )


def start_cluster(hook: ManagedSparkHook, cluster_id: str, log) -> str:
    """Start the cluster when it is stopped (else leave it as it is); returns its id."""
    status = cluster_status(hook.get_cluster(cluster_id))
    if status == "STOPPED":
        hook.start_cluster(cluster_id)
        log.info("Started Managed Spark cluster %s", cluster_id)
    else:
        log.info("Managed Spark cluster %s is %s: nothing to start", cluster_id, status)
    return cluster_id


def stop_cluster(hook: ManagedSparkHook, cluster_id: str, log) -> str:
    """Stop the cluster when it runs (else leave it as it is); returns its id."""
    status = cluster_status(hook.get_cluster(cluster_id))
    if status == "RUNNING":
        hook.stop_cluster(cluster_id)
        log.info("Stopped Managed Spark cluster %s", cluster_id)
    else:
        log.info("Managed Spark cluster %s is %s: nothing to stop", cluster_id, status)
    return cluster_id


class ManagedSparkStartClusterOperator(BaseOperator):
    """Start a stopped Managed Spark cluster (``ClusterService.Start``); returns its id."""

    template_fields: Sequence[str] = ("cluster_id", "connection_id")

    def __init__(self, *, cluster_id: str, connection_id: str = "yandexcloud_default", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.cluster_id, self.connection_id = cluster_id, connection_id

    def execute(self, context: Any) -> str:
        hook = ManagedSparkHook(yandex_conn_id=self.connection_id)
        return start_cluster(hook, _require_cluster_id(self.cluster_id), self.log)


class ManagedSparkStopClusterOperator(BaseOperator):
    """Stop a running Managed Spark cluster (``ClusterService.Stop``); returns its id."""

    template_fields: Sequence[str] = ("cluster_id", "connection_id")

    def __init__(self, *, cluster_id: str, connection_id: str = "yandexcloud_default", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.cluster_id, self.connection_id = cluster_id, connection_id

    def execute(self, context: Any) -> str:
        hook = ManagedSparkHook(yandex_conn_id=self.connection_id)
        return stop_cluster(hook, _require_cluster_id(self.cluster_id), self.log)


class ManagedSparkCreateClusterOperator(BaseOperator):
    """Create a Managed Spark cluster from the backend's settings (``check_backend``'s XCom),
    labelled with the DAG id, run id and TTL; returns its id. A cluster whose create fails or
    times out is deleted here (its id is in the Create operation's metadata).

    With ``strategy: start_stop`` it starts the persistent cluster ``cluster_id`` instead.
    """

    template_fields: Sequence[str] = ("settings",)
    template_fields_renderers = {"settings": "json"}
    operator_extra_links = (CloudConsoleLink(),)
    ui_color = "#e4f0e8"

    def __init__(self, *, settings: Any, cluster_name: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.settings = settings
        self.cluster_name = cluster_name
        self.console_url: str | None = None

    def execute(self, context: Any) -> str:
        s = self.settings
        hook = ManagedSparkHook(yandex_conn_id=s["connection_id"])
        if s["strategy"] == "start_stop":
            cluster_id = start_cluster(hook, s["cluster_id"], self.log)
        else:
            cluster_id = self._create(context, hook)
        self.console_url = hook.console_url(cluster_id, s["folder_id"])
        context["ti"].xcom_push(key=XCOM_CONSOLE_URL, value=self.console_url)
        return cluster_id

    def _create(self, context: Any, hook: ManagedSparkHook) -> str:
        import yandex.cloud.spark.v1.cluster_pb2 as cluster_pb
        import yandex.cloud.spark.v1.cluster_service_pb2 as cluster_service_pb

        s, ti = self.settings, context["ti"]
        labels = spindle_labels(context, BACKEND, s["ttl_hours"])
        name = self.cluster_name or label_value(
            f"spindle-{ti.dag_id}-{labels[LABEL_CREATED]}-{uuid.uuid4().hex[:4]}"
        ).replace("_", "-")
        request = cluster_request(s, name, labels, f"Spindle: DAG {ti.dag_id}, run {ti.run_id}")
        self.log.info("Creating Managed Spark cluster %s with labels %s", name, labels)
        operation = hook.create_cluster(request)
        metadata = cluster_service_pb.CreateClusterMetadata()
        operation.metadata.Unpack(metadata)
        try:
            cluster = hook.wait(
                operation,
                cluster_pb.Cluster,
                cluster_service_pb.CreateClusterMetadata,
                s["create_timeout_minutes"] * 60,
            )
        except BaseException as err:  # also the task's execution_timeout (AirflowTaskTimeout)
            self._delete_after_failure(hook, metadata.cluster_id, err)
            raise
        cluster = cluster.response
        self.log.info("Managed Spark cluster %s (%s) is %s", cluster.id, name, cluster_status(cluster))
        return cluster.id

    def _delete_after_failure(self, hook: ManagedSparkHook, cluster_id: str, err: BaseException) -> None:
        """Best effort: the create's error is what the task fails with; the reaper is the last resort."""
        try:
            self.log.warning("Create failed (%s): deleting the cluster it left, %s", err, cluster_id)
            hook.delete_cluster(cluster_id)
        except Exception as cleanup:  # noqa: BLE001 - logged
            self.log.error("Could not delete cluster %s after the failed create: %s", cluster_id, cleanup)


class ManagedSparkDeleteClusterOperator(BaseOperator):
    """The lane's teardown: delete the cluster (already gone: nothing to do); with
    ``strategy: start_stop`` stop the persistent cluster instead."""

    template_fields: Sequence[str] = ("cluster_id", "settings")
    ui_color = "#f3e4e4"

    def __init__(self, *, settings: Any, cluster_id: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.settings, self.cluster_id = settings, cluster_id

    def execute(self, context: Any) -> None:
        cluster_id = _require_cluster_id(self.cluster_id)
        s = self.settings
        hook = ManagedSparkHook(yandex_conn_id=s["connection_id"])
        if s["strategy"] == "start_stop":
            stop_cluster(hook, cluster_id, self.log)
            return
        try:
            hook.delete_cluster(cluster_id)
        except grpc.RpcError as err:
            if err.code() != grpc.StatusCode.NOT_FOUND:
                raise
            self.log.info("Managed Spark cluster %s is already gone", cluster_id)
            return
        self.log.info("Deleted Managed Spark cluster %s", cluster_id)


class ManagedSparkPysparkJobOperator(JobSpec, BaseOperator):
    """Run ``spark_apps/jobs/<job>.py`` as a Managed Spark ``pyspark_job``.

    The driver runs in the cluster (Spark on Kubernetes): its environment comes from
    ``spark.kubernetes.driverEnv.*``, the cluster environment and models from the job's
    ``archive_uris`` (unpacked under their ``#alias`` next to driver and executors).

    :param job: job module name, e.g. ``"embed_text"``.
    :param staged: XCom of the stage task; :param cluster_id: ``create.output``.
    :param deferrable: wait in the triggerer (None: setting ``deferrable``, else
        ``[operators] default_deferrable``).
    """

    template_fields: Sequence[str] = ("cluster_id", *JobSpec.spec_template_fields)
    template_fields_renderers = {"job_args": "json", "settings": "json", "staged": "json"}
    operator_extra_links = (CloudSparkUILink(), SparkHistoryLink(), CloudConsoleLink())
    ui_color = "#e8f0fb"
    driver_env_prefix = "spark.kubernetes.driverEnv."

    def __init__(
        self,
        *,
        job: str,
        staged: Any,
        settings: Any,
        cluster_id: str,
        job_args=None,
        application_args=None,
        executor_cores=None,
        executor_memory=None,
        task_cpus=None,
        driver_memory=None,
        conf=None,
        deferrable: bool | None = None,
        poll_interval: float | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.init_spec(
            job=job,
            staged=staged,
            settings=settings,
            job_args=job_args,
            application_args=application_args,
            executor_cores=executor_cores,
            executor_memory=executor_memory,
            task_cpus=task_cpus,
            driver_memory=driver_memory,
            conf=conf,
        )
        self.cluster_id = cluster_id
        self.deferrable = deferrable
        self.poll_interval = poll_interval
        self.job_id: str | None = None
        self.spark_ui_url: str | None = None
        self.spark_history_url: str | None = None
        self.console_url: str | None = None

    # ------------------------------------------------------------------ settings
    def _connection_id(self) -> str:
        return self.setting("connection_id", "yandexcloud_default")

    def _interval(self) -> float:
        return float(self.poll_interval or self.setting("poll_interval", 5))

    def job_request(self, context: Any, name: str):
        import yandex.cloud.spark.v1.job_pb2 as job_pb
        import yandex.cloud.spark.v1.job_service_pb2 as job_service_pb

        spec = job_pb.PysparkJob(
            main_python_file_uri=self.job_uri(),
            python_file_uris=self.py_files(),
            archive_uris=self.archives(),
            args=self.cli_args(context),
            properties=self.spark_properties(),
        )
        return job_service_pb.CreateJobRequest(cluster_id=self.cluster_id, name=name, pyspark_job=spec)

    # ------------------------------------------------------------------ run
    def execute(self, context: Any) -> dict[str, Any] | None:
        cluster_id = _require_cluster_id(self.cluster_id)
        hook = ManagedSparkHook(yandex_conn_id=self._connection_id())
        self.job_id = hook.submit_job(self.job_request(context, job_name(context["ti"])))
        context["ti"].xcom_push(key=XCOM_JOB_ID, value=self.job_id)
        self.log.info("Managed Spark job %s submitted to cluster %s", self.job_id, cluster_id)
        self._publish_cluster_links(context, hook, cluster_id)
        if self._deferrable():
            from spindle.yandex_spark.triggers import ManagedSparkJobTrigger

            self.defer(
                trigger=ManagedSparkJobTrigger(
                    cluster_id=cluster_id,
                    job_id=self.job_id,
                    connection_id=self._connection_id(),
                    poll_interval=self._interval(),
                    timeout=self.execution_timeout.total_seconds() if self.execution_timeout else None,
                ),
                method_name="execute_complete",
                kwargs={"metrics_uri": self.metrics_uri},
            )
        with self.progress(self.setting("s3_conn_id")):  # the job's own progress, from the bucket
            job = self._wait_streaming(context, hook, cluster_id)
        return self._finish(context, hook, job_status(job), job.ui_url)

    def execute_complete(self, context: Any, event: dict[str, Any], metrics_uri: str | None = None):
        """Back from the trigger: the whole driver log into the task log, then as :meth:`execute`."""
        self.job_id, self.metrics_uri = event["job_id"], metrics_uri
        hook = ManagedSparkHook(yandex_conn_id=self._connection_id())
        self._publish_cluster_links(context, hook, event["cluster_id"])
        follower = _LogFollower(hook, event["cluster_id"], self.job_id, self.log)
        follower.drain()
        if event["status"] == "TIMEOUT":
            self.on_kill()
        return self._finish(context, hook, event["status"], event.get("ui_url"))

    def _wait_streaming(self, context: Any, hook: ManagedSparkHook, cluster_id: str) -> Any:
        """Poll ``JobService.Get`` until the job ends, following its driver log meanwhile."""
        follower = _LogFollower(hook, cluster_id, self.job_id, self.log)
        while True:
            job = hook.get_job(cluster_id, self.job_id)
            if job.ui_url and job.ui_url != self.spark_ui_url:
                self._publish_ui_url(context, job.ui_url)
            follower.poll()
            if job.status in FINISHED:
                follower.drain()
                return job
            time.sleep(self._interval())

    def _finish(self, context: Any, hook: ManagedSparkHook, status: str, ui_url: str | None) -> dict[str, Any]:
        if ui_url:
            self._publish_ui_url(context, ui_url)
        if status != "DONE":
            raise AirflowException(
                f"Managed Spark job {self.job_id} ({self.job}) on cluster {self.cluster_id} ended {status}: "
                "its driver log is above"
            )
        return self.fetch_metrics(self.setting("s3_conn_id"))

    def _publish_ui_url(self, context: Any, url: str) -> None:
        self.spark_ui_url = url
        context["ti"].xcom_push(key=XCOM_SPARK_UI_URL, value=url)
        self.log.info("Spark UI: %s", url)

    def _publish_cluster_links(self, context: Any, hook: ManagedSparkHook, cluster_id: str) -> None:
        try:
            self.spark_history_url = hook.history_url(cluster_id)
        except Exception as err:  # links are a convenience: never fail the job for them
            self.log.warning("Could not read the history server link of cluster %s: %s", cluster_id, err)
        self.console_url = hook.console_url(cluster_id, self.setting("folder_id", ""))
        context["ti"].xcom_push(key=XCOM_HISTORY_URL, value=self.spark_history_url)
        context["ti"].xcom_push(key=XCOM_CONSOLE_URL, value=self.console_url)
        self.log.info("Spark History: %s; console: %s", self.spark_history_url, self.console_url)

    def on_kill(self) -> None:
        """The task was killed (marked failed, timed out, the worker stopping it): cancel the
        job it submitted (``JobService.Cancel``)."""
        cluster_id = str(self.cluster_id or "")
        if not cluster_id or not self.job_id:
            return
        try:
            hook = ManagedSparkHook(yandex_conn_id=self._connection_id())
            if hook.get_job(cluster_id, self.job_id).status in FINISHED:
                return
            self.log.warning("Task killed: cancelling Managed Spark job %s on cluster %s", self.job_id, cluster_id)
            hook.cancel_job(cluster_id, self.job_id)
        except Exception as err:  # noqa: BLE001 - best effort, logged
            self.log.error("Could not cancel Managed Spark job %s on cluster %s: %s", self.job_id, cluster_id, err)


class _LogFollower:
    """Copies the job's driver log (``JobService.ListLog`` pages) into the task log, line by line."""

    def __init__(self, hook: ManagedSparkHook, cluster_id: str, job_id: str, log) -> None:
        self.hook, self.cluster_id, self.job_id, self.log = hook, cluster_id, job_id, log
        self.token, self.pending, self.finished, self.started = "", "", False, False

    def poll(self) -> bool:
        """Read what is new; True when a page came back. A failed read is retried next time."""
        if self.finished:
            return False
        if not self.started:
            self.log.info("----- %s: begin -----", LOG_TITLE)
            self.started = True
        try:
            content, next_token = self.hook.job_log_page(self.cluster_id, self.job_id, self.token)
        except grpc.RpcError as err:
            self.log.debug("driver log read failed: %s", err)
            return False
        lines = (self.pending + content).split("\n")
        self.pending = lines.pop()
        for line in lines:
            self.log.info("| %s", line)
        if next_token:
            self.token = next_token
        else:  # the job ended and everything was read
            self.finished = True
        return bool(content)

    def drain(self, wait: float = 60) -> None:
        """Read to the end (the service may take a moment to flush the last lines)."""
        deadline = time.monotonic() + wait
        while not self.finished and time.monotonic() < deadline:
            if not self.poll():
                time.sleep(0.5)
        if self.pending:
            self.log.info("| %s", self.pending)
            self.pending = ""
        self.log.info("----- %s: end -----", LOG_TITLE)
