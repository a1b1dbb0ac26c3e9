"""Data Proc operators Spindle adds to the provider's (thin, over :class:`SpindleDataprocHook`).

- :class:`DataprocStartClusterOperator` / :class:`DataprocStopClusterOperator`: the Data Proc
  API's Start/Stop calls, for the "persistent cluster" strategy (the provider has neither).
- :class:`SpindleDataprocPysparkJobOperator`: the provider's
  :class:`DataprocCreatePysparkJobOperator` running a ``spark_apps`` job from the staged
  artifacts; it streams the job's driver log (Data Proc job log API) into the task log,
  returns the job's ``SPINDLE_METRICS``, and has "Spark UI" / console links. Deferrable (the
  provider's operator is not): it submits the job and waits in the triggerer
  (:class:`~spindle.yandex.triggers.DataprocJobTrigger`), copying the driver log on resume.

Every operator here takes ``cluster_id`` explicitly (``cluster_id=create.output``): the
provider's fallback ``xcom_pull(key="cluster_id")`` has no ``task_ids`` and finds nothing in
Airflow 3.
"""

from __future__ import annotations

import hashlib
import re
import threading
import uuid
from collections.abc import Sequence
from typing import Any

import yandex.cloud.dataproc.v1.cluster_pb2 as cluster_pb
from airflow.providers.yandex.operators.dataproc import (
    DataprocCreateClusterOperator,
    DataprocCreatePysparkJobOperator,
    DataprocDeleteClusterOperator,
)
from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowException

from spindle.backends.common import (
    LABEL_CREATED,
    XCOM_CONSOLE_URL,
    XCOM_SPARK_UI_URL,
    CloudConsoleLink,
    CloudSparkUILink,
    JobSpec,
    label_value,
    spindle_labels,
)
from spindle.yandex.hooks import (
    CONSOLE_URL,
    DEFAULT_MASTER_UI_PORT,
    SpindleDataprocHook,
)


def dataproc_job_name(ti: Any) -> str:
    """A job name the Data Proc API accepts (``|[a-z][-a-z0-9]{1,61}[a-z0-9]``) that still says
    which task made it, unique per DAG, run, task and try (a digest of them)."""
    digest = hashlib.sha256(f"{ti.dag_id}|{ti.run_id}|{ti.task_id}|{ti.try_number}".encode()).hexdigest()[:10]
    readable = re.sub(r"[^a-z0-9]+", "-", f"{ti.dag_id}-{ti.task_id}".lower()).strip("-")
    return f"spindle-{readable[:40].strip('-')}-{digest}"


def _require_cluster_id(cluster_id: Any) -> str:
    if not cluster_id:
        raise ValueError("cluster_id is required: pass cluster_id=create.output")
    return str(cluster_id)


class DataprocStartClusterOperator(BaseOperator):
    """Start a stopped Data Proc cluster (``ClusterService.Start``); returns its id."""

    template_fields: Sequence[str] = ("cluster_id", "connection_id")

    def __init__(self, *, cluster_id: str, connection_id: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.cluster_id = cluster_id
        self.connection_id = connection_id

    def execute(self, context: Any) -> str:
        cluster_id = _require_cluster_id(self.cluster_id)
        SpindleDataprocHook(yandex_conn_id=self.connection_id).start_cluster(cluster_id)
        self.log.info("Data Proc cluster %s started", cluster_id)
        return cluster_id


class DataprocStopClusterOperator(BaseOperator):
    """Stop a running Data Proc cluster (``ClusterService.Stop``); returns its id."""

    template_fields: Sequence[str] = ("cluster_id", "connection_id")

    def __init__(
        self, *, cluster_id: str, connection_id: str | None = None, decommission_timeout: int = 0, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.cluster_id = cluster_id
        self.connection_id = connection_id
        self.decommission_timeout = decommission_timeout

    def execute(self, context: Any) -> str:
        cluster_id = _require_cluster_id(self.cluster_id)
        SpindleDataprocHook(yandex_conn_id=self.connection_id).stop_cluster(cluster_id, self.decommission_timeout)
        self.log.info("Data Proc cluster %s stopped", cluster_id)
        return cluster_id


class SpindleDataprocPysparkJobOperator(JobSpec, DataprocCreatePysparkJobOperator):
    """Run ``spark_apps/jobs/<job>.py`` on a Data Proc cluster with the provider's operator.

    :param job: job module name, e.g. ``"embed_text"``.
    :param staged: XCom of the stage task (job URIs, wheel, model archive, path rewrites).
    :param cluster_id: ``create.output``.
    Other job parameters as in :class:`spindle.backends.common.JobSpec`; ``connection_id`` is the
    Yandex Cloud connection.
    :param deferrable: wait in the triggerer (None: setting ``deferrable``, else
        ``[operators] default_deferrable``).
    :param poll_interval: seconds between the trigger's job status polls (None: setting
        ``poll_interval``).
    """

    template_fields: Sequence[str] = (
        *DataprocCreatePysparkJobOperator.template_fields,
        "name",
        *JobSpec.spec_template_fields,
    )
    template_fields_renderers = {"job_args": "json", "settings": "json", "staged": "json"}
    operator_extra_links = (CloudSparkUILink(), CloudConsoleLink())
    ui_color = "#e8f0fb"

    def __init__(
        self,
        *,
        job: str,
        staged: Any,
        settings: Any,
        cluster_id: str,
        connection_id: str | None = None,
        job_args=None,
        application_args=None,
        executor_cores=None,
        executor_memory=None,
        task_cpus=None,
        driver_memory=None,
        conf=None,
        log_poll_interval: float = 2.0,
        deferrable: bool | None = None,
        poll_interval: float | None = None,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("name", "")  # empty: dataproc_job_name() at run time
        super().__init__(cluster_id=cluster_id, connection_id=connection_id, **kwargs)
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
        self.log_poll_interval = log_poll_interval
        self.deferrable = deferrable
        self.poll_interval = poll_interval
        self.spark_ui_url: str | None = None
        self.console_url: str | None = None

    def execute(self, context: Any) -> dict[str, Any] | None:
        cluster_id = _require_cluster_id(self.cluster_id)
        self.yandex_conn_id = self.setting("connection_id", self.yandex_conn_id)
        self.main_python_file_uri = self.job_uri()
        self.python_file_uris = self.py_files()
        self.archive_uris = self.archives()
        self.args = self.cli_args(context)
        # Cluster deploy mode: YARN gives the driver the archives and spark.yarn.appMasterEnv.*
        # (the shipped interpreter, the secrets reference) only in the application master.
        self.properties = {**self.spark_properties(), "spark.submit.deployMode": "cluster"}
        self.name = self.name or dataproc_job_name(context["ti"])
        hook = SpindleDataprocHook(yandex_conn_id=self.yandex_conn_id)
        self._publish_links(context, hook, cluster_id)
        if self._deferrable():
            self._submit_and_defer(hook, cluster_id)
        stop = threading.Event()
        streamer = _LogStreamer(hook, cluster_id, self.name, self.log, stop, self.log_poll_interval)
        streamer.start()
        try:
            with self.progress(self.setting("s3_conn_id")):  # the job's own progress, from the bucket
                super().execute(context)
        finally:
            stop.set()
            streamer.join(timeout=60)
            streamer.drain()
        return self.fetch_metrics(self.setting("s3_conn_id"))

    # ------------------------------------------------------------------ deferrable wait
    def job_request(self, cluster_id: str):
        """The ``CreateJobRequest`` the provider's operator sends (through the SDK's wrapper)."""
        import yandex.cloud.dataproc.v1.job_pb2 as job_pb
        import yandex.cloud.dataproc.v1.job_service_pb2 as job_service_pb

        spec = job_pb.PysparkJob(
            main_python_file_uri=self.main_python_file_uri,
            python_file_uris=self.python_file_uris,
            file_uris=self.file_uris,
            archive_uris=self.archive_uris,
            jar_file_uris=self.jar_file_uris,
            args=self.args,
            properties=self.properties,
            packages=self.packages,
            repositories=self.repositories,
            exclude_packages=self.exclude_packages,
        )
        return job_service_pb.CreateJobRequest(cluster_id=cluster_id, name=self.name, pyspark_job=spec)

    def _submit_and_defer(self, hook: SpindleDataprocHook, cluster_id: str) -> None:
        from spindle.yandex.triggers import DataprocJobTrigger

        job_id, operation_id = hook.submit_job(self.job_request(cluster_id))
        self.log.info(
            "Data Proc job %s (%s) submitted to cluster %s: waiting in the triggerer", job_id, self.name, cluster_id
        )
        self.defer(
            trigger=DataprocJobTrigger(
                cluster_id=cluster_id,
                job_id=job_id,
                connection_id=self.yandex_conn_id,
                poll_interval=float(self.poll_interval or self.setting("poll_interval", 5)),
                timeout=self.execution_timeout.total_seconds() if self.execution_timeout else None,
            ),
            method_name="execute_complete",
            kwargs={"name": self.name, "operation_id": operation_id, "metrics_uri": self.metrics_uri},
        )

    def execute_complete(
        self,
        context: Any,
        event: dict[str, Any],
        name: str = "",
        operation_id: str = "",
        metrics_uri: str | None = None,
    ) -> dict[str, Any]:
        """Back from the trigger (a new operator instance): the driver log into the task log, the
        links, then the job's metrics, or the job's error."""
        cluster_id, job_id, status = event["cluster_id"], event["job_id"], event["status"]
        self.yandex_conn_id = self.setting("connection_id", self.yandex_conn_id)
        self.name, self.metrics_uri = name, metrics_uri
        hook = SpindleDataprocHook(yandex_conn_id=self.yandex_conn_id)
        self._publish_links(context, hook, cluster_id)
        streamer = _LogStreamer(hook, cluster_id, name, self.log, threading.Event(), self.log_poll_interval)
        streamer.job_id = job_id
        streamer.drain()
        if status == "TIMEOUT":
            self.on_kill()
        if status != "DONE":
            error = None
            if operation_id:
                try:
                    error = hook.operation_error(operation_id)
                except Exception as err:  # noqa: BLE001 - the status says enough
                    self.log.warning("Could not read the error of job %s: %s", job_id, err)
            raise AirflowException(
                f"Data Proc job {job_id} ({self.job}) on cluster {cluster_id} ended {status}"
                f"{f': {error}' if error else ''}; its driver log is above"
            )
        return self.fetch_metrics(self.setting("s3_conn_id"))

    def on_kill(self) -> None:
        """The task was killed (marked failed, timed out, the worker stopping it): cancel the
        Data Proc job it submitted (``JobService.Cancel``), found by its run-unique name."""
        cluster_id, name = str(self.cluster_id or ""), self.name
        if not cluster_id or not name:
            return
        try:
            hook = SpindleDataprocHook(yandex_conn_id=self.yandex_conn_id)
            job = hook.find_job(cluster_id, name)
            if job is None:
                self.log.info("No Data Proc job named %s on cluster %s to cancel", name, cluster_id)
                return
            self.log.warning("Task killed: cancelling Data Proc job %s on cluster %s", job.id, cluster_id)
            hook.cancel_job(cluster_id, job.id)
        except Exception as err:  # noqa: BLE001 - best effort, logged
            self.log.error("Could not cancel the Data Proc job %s on cluster %s: %s", name, cluster_id, err)

    def _publish_links(self, context: Any, hook: SpindleDataprocHook, cluster_id: str) -> None:
        try:
            self.spark_ui_url = hook.spark_ui_url(cluster_id, self.setting("master_ui_port", DEFAULT_MASTER_UI_PORT))
            self.console_url = hook.console_url(cluster_id)
        except Exception as err:  # links are a convenience: never fail the job for them
            self.log.warning("Could not work out the Spark UI link of cluster %s: %s", cluster_id, err)
        context["ti"].xcom_push(key=XCOM_SPARK_UI_URL, value=self.spark_ui_url)
        context["ti"].xcom_push(key=XCOM_CONSOLE_URL, value=self.console_url)
        self.log.info("Spark UI: %s; console: %s", self.spark_ui_url, self.console_url)


class _LogStreamer(threading.Thread):
    """Follows the job's driver log (Data Proc ``JobService.ListLog``) into the task log."""

    def __init__(
        self, hook: SpindleDataprocHook, cluster_id: str, job_name: str, log, stop: threading.Event, interval: float
    ) -> None:
        super().__init__(name="dataproc-log", daemon=True)
        self.hook, self.cluster_id, self.job_name, self.log = hook, cluster_id, job_name, log
        self.stop, self.interval = stop, interval
        self.job_id: str | None = None
        self.token = ""
        self.finished = False
        self.text = ""
        self._pending = ""
        self._lock = threading.Lock()
        self.log.info("----- driver log (Data Proc job log API): begin -----")

    def _poll(self) -> bool:
        """Fetch what is new; True when a page came back."""
        with self._lock:
            if self.finished:
                return False
            if self.job_id is None:
                job = self.hook.find_job(self.cluster_id, self.job_name)
                if job is None:
                    return False
                self.job_id = job.id
                self.log.info("Data Proc job %s", self.job_id)
            content, next_token = self.hook.job_log_page(self.cluster_id, self.job_id, self.token)
            self.text += content
            lines = (self._pending + content).split("\n")
            self._pending = lines.pop()
            for line in lines:
                self.log.info("| %s", line)
            if next_token:
                self.token = next_token
            else:  # the job ended and everything was read
                self.finished = True
            return bool(content)

    def run(self) -> None:
        while not self.stop.wait(self.interval):
            try:
                while self._poll():
                    pass
            except Exception as err:  # keep the job running; the final drain reports again
                self.log.debug("driver log poll failed: %s", err)

    def drain(self) -> None:
        try:
            for _ in range(1000):
                if not self._poll():
                    break
        except Exception as err:
            self.log.warning("Could not read the driver log of job %s: %s", self.job_id, err)
        if self._pending:
            self.log.info("| %s", self._pending)
            self._pending = ""
        self.log.info("----- driver log (Data Proc job log API): end -----")


class SpindleDataprocCreateClusterOperator(DataprocCreateClusterOperator):
    """The provider's :class:`DataprocCreateClusterOperator`, configured at run time from the
    backend's settings (``check_backend``'s XCom) and labelled with the DAG id, run id and TTL.

    With ``strategy: start_stop`` it starts the persistent cluster ``cluster_id`` instead
    (``ClusterService.Start``) and returns that id; with ``strategy: shared`` it creates nothing
    and returns the shared cluster's id (``check_backend`` acquired it, see
    :mod:`spindle.yandex.shared`). Returns the cluster id either way.

    :param strategy: overrides the settings' ``strategy`` (``spindle_shared_cluster_open``
        always creates).
    """

    template_fields: Sequence[str] = ("settings",)
    template_fields_renderers = {"settings": "json"}
    operator_extra_links = (CloudConsoleLink(),)
    ui_color = "#e4f0e8"

    def __init__(
        self, *, settings: Any, cluster_name: str | None = None, strategy: str | None = None, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.settings = settings
        self.requested_name = cluster_name
        self.strategy = strategy
        self.console_url: str | None = None

    def apply_settings(self, context: Any) -> None:
        s = self.settings
        self.yandex_conn_id = s["connection_id"]
        self.folder_id = s["folder_id"]
        self.zone = s["zone"]
        self.subnet_id = s["subnet_id"]
        self.service_account_id = s["service_account_id"]
        self.s3_bucket = s["bucket"]
        self.ssh_public_keys = s["ssh_public_keys"]
        self.oslogin_enabled = s["oslogin_enabled"]
        self.cluster_image_version = s["image_version"]
        self.masternode_resource_preset = s["masternode_resource_preset"]
        self.masternode_disk_size = s["disk_size_gb"]
        self.datanode_resource_preset = s["datanode_resource_preset"]
        self.datanode_disk_size = s["disk_size_gb"]
        self.datanode_count = s["datanode_count"]
        self.computenode_resource_preset = s["computenode_resource_preset"]
        self.computenode_disk_size = s["disk_size_gb"]
        self.computenode_count = s["computenode_count"]
        self.enable_ui_proxy = s["ui_proxy"]
        self.services = list(s["services"])
        self.security_group_ids = s["security_group_ids"] or None
        self.log_group_id = s["log_group_id"]
        properties = {str(k): str(v) for k, v in s["cluster_properties"].items()}
        properties.update({f"pip:{name}": str(spec) for name, spec in s["pip_packages"].items()})
        self.properties = properties or None
        labels = spindle_labels(context, "yandex", s["ttl_hours"])
        self.labels = {**(self.labels or {}), **labels}
        ti = context["ti"]
        self.cluster_name = self.requested_name or label_value(
            f"spindle-{ti.dag_id}-{labels[LABEL_CREATED]}-{uuid.uuid4().hex[:4]}"
        ).replace("_", "-")
        self.cluster_description = f"Spindle: DAG {ti.dag_id}, run {ti.run_id}"

    def execute(self, context: Any) -> str:
        s = self.settings
        strategy = self.strategy or s.get("strategy")
        if strategy == "shared":
            cluster_id = s.get("cluster_id")
            if not cluster_id:
                raise ValueError(
                    "strategy 'shared' needs the cluster id check_backend acquires "
                    "(settings 'cluster_id' is empty): run this task after check_backend"
                )
            self.log.info(
                "Using the shared Data Proc cluster %s (created by %s, not by this run)",
                cluster_id,
                "spindle_shared_cluster_open",
            )
            self.console_url = CONSOLE_URL.format(folder_id=s["folder_id"], cluster_id=cluster_id)
            context["ti"].xcom_push(key=XCOM_CONSOLE_URL, value=self.console_url)
            return cluster_id
        if strategy == "start_stop":
            hook = SpindleDataprocHook(yandex_conn_id=s["connection_id"])
            cluster_id = s["cluster_id"]
            status = hook.get_cluster(cluster_id).status
            if status == cluster_pb.Cluster.STOPPED:
                hook.start_cluster(cluster_id)
                self.log.info("Started the persistent Data Proc cluster %s", cluster_id)
            else:
                self.log.info(
                    "Persistent Data Proc cluster %s is %s", cluster_id, cluster_pb.Cluster.Status.Name(status)
                )
            self.console_url = hook.console_url(cluster_id, s["folder_id"])
            context["ti"].xcom_push(key=XCOM_CONSOLE_URL, value=self.console_url)
            return cluster_id
        self.apply_settings(context)
        self.log.info("Creating Data Proc cluster %s with labels %s", self.cluster_name, self.labels)
        try:
            cluster_id = super().execute(context)
        except BaseException as err:  # also the task's execution_timeout (AirflowTaskTimeout)
            self.delete_failed_create(err)
            raise
        self.console_url = CONSOLE_URL.format(folder_id=self.folder_id, cluster_id=cluster_id)
        context["ti"].xcom_push(key=XCOM_CONSOLE_URL, value=self.console_url)
        return cluster_id

    def delete_failed_create(self, err: BaseException) -> None:
        """Delete the cluster a failed create left behind (the Create operation failed, the
        cluster ended in ERROR, or the wait was cut short), as Google's Dataproc operator does
        with ``delete_on_error``. Its id comes from the operation's metadata, else from the
        folder's clusters of this run's unique name. Best effort: the create's error is what the
        task fails with; a failed delete is logged (the reaper is the last resort)."""
        meta = getattr(getattr(err, "operation_result", None), "meta", None)
        cluster_id = getattr(meta, "cluster_id", "") or ""
        try:
            hook = SpindleDataprocHook(yandex_conn_id=self.yandex_conn_id)
            if not cluster_id:
                named = [c.id for c in hook.list_clusters(self.folder_id) if c.name == self.cluster_name]
                cluster_id = named[0] if named else ""
            if not cluster_id:
                self.log.info("Create failed before a cluster named %s existed: nothing to delete", self.cluster_name)
                return
            self.log.warning("Create failed (%s): deleting the cluster it left, %s", err, cluster_id)
            hook.dataproc_client.delete_cluster(cluster_id)
            self.log.info("Deleted Data Proc cluster %s after the failed create", cluster_id)
        except Exception as cleanup:  # noqa: BLE001 - best effort, logged
            self.log.error(
                "Could not delete Data Proc cluster %s after the failed create: %s "
                "(the reaper deletes it once past its TTL)",
                cluster_id or self.cluster_name,
                cleanup,
            )


class SpindleDataprocDeleteClusterOperator(DataprocDeleteClusterOperator):
    """The provider's :class:`DataprocDeleteClusterOperator` (``cluster_id=create.output``);
    with ``strategy: start_stop`` it stops the persistent cluster instead of deleting it; with
    ``strategy: shared`` it leaves the cluster running and *releases* it: an event on
    ``spindle_shared_cluster_released`` through its outlet alias (see
    :mod:`spindle.yandex.shared`); the other strategies emit no event.

    :param strategy: overrides the settings' ``strategy`` (the close DAG always deletes).
    """

    template_fields: Sequence[str] = (*DataprocDeleteClusterOperator.template_fields, "settings")
    ui_color = "#f3e4e4"

    def __init__(self, *, settings: Any, cluster_id: str, strategy: str | None = None, **kwargs: Any) -> None:
        from spindle.yandex.shared import RELEASE_ALIAS

        kwargs.setdefault("outlets", [RELEASE_ALIAS])
        super().__init__(cluster_id=cluster_id, **kwargs)
        self.settings = settings
        self.strategy = strategy

    def execute(self, context: Any) -> None:
        _require_cluster_id(self.cluster_id)
        self.yandex_conn_id = self.settings["connection_id"]
        strategy = self.strategy or self.settings.get("strategy")
        if strategy == "shared":
            from spindle.yandex.shared import release

            ti = context["ti"]
            extra = release(context["outlet_events"], str(self.cluster_id), ti.dag_id, ti.run_id)
            self.log.info("Released the shared Data Proc cluster %s (left running; %s)", self.cluster_id, extra)
            return
        if strategy == "start_stop":
            SpindleDataprocHook(yandex_conn_id=self.yandex_conn_id).stop_cluster(str(self.cluster_id))
            self.log.info("Stopped the persistent Data Proc cluster %s", self.cluster_id)
            return
        super().execute(context)
        self.log.info("Deleted Data Proc cluster %s", self.cluster_id)
