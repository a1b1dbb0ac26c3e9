"""EMR (on EC2 and Serverless) operators for Spindle: the amazon provider's operators,
configured at run time from the backend's settings, tagged for the reaper, and with the driver
log from the S3 log location copied into the task log.

EMR on EC2: :class:`SpindleEmrCreateJobFlowOperator` → per job :class:`SpindleEmrAddStepsOperator`
(one ``command-runner.jar spark-submit`` step) + :class:`SpindleEmrStepSensor` (waits, copies the
step's driver log, returns the job's metrics) → ``EmrTerminateJobFlowOperator`` as teardown.

EMR Serverless: :class:`SpindleEmrServerlessCreateApplicationOperator` → per job
:class:`SpindleEmrServerlessStartJobOperator` → ``EmrServerlessDeleteApplicationOperator``.

Deferrable: every wait (job flow / application ready, step / job run done, teardown) runs in the
triggerer with the provider's own triggers when the operator is deferrable, which by default is
``[operators] default_deferrable`` as set when the DAG is parsed (``deferrable=`` wins). A resumed
task is a new operator instance: :class:`FromSettings` re-applies the connection from the
settings on every resume, and the job tasks copy the driver log and read the metrics in
``execute_complete`` as they do at the end of ``execute``.
"""

from __future__ import annotations

import gzip
import math
import re
import shlex
import time
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlparse

from airflow.providers.amazon.aws.operators.emr import (
    EmrAddStepsOperator,
    EmrCreateJobFlowOperator,
    EmrServerlessCreateApplicationOperator,
    EmrServerlessDeleteApplicationOperator,
    EmrServerlessStartJobOperator,
    EmrTerminateJobFlowOperator,
)
from airflow.providers.amazon.aws.sensors.emr import EmrStepSensor
from airflow.sdk.exceptions import TaskDeferred

from spindle.backends.common import (
    XCOM_CONSOLE_URL,
    XCOM_SPARK_UI_URL,
    CloudConsoleLink,
    CloudSparkUILink,
    JobSpec,
    copy_log_to_task_log,
    fetch_metrics,
    progress_location,
    spindle_labels,
)
from spindle.spark_progress import bucket_progress

SERVERLESS_CONSOLE = (
    "https://console.aws.amazon.com/emr/home?region={region}#/serverless-applications/{app_id}/job-runs/{run_id}"
)
SPARK_HISTORY_PORT = 18080
XCOM_METRICS_URI = "metrics_uri"
_YARN_APP_RE = re.compile(r"application_\d+_\d+")


def default_deferrable() -> bool:
    """``[operators] default_deferrable`` now (the provider's operators read it once, when their
    module is imported)."""
    from airflow.configuration import conf

    return conf.getboolean("operators", "default_deferrable", fallback=False)


class FromSettings:
    """Mixin: the AWS connection and region come from the backend settings (a templated field),
    applied when the task starts and again on each resume after a deferral."""

    settings: Any

    def use_settings(self) -> None:
        self.aws_conn_id = self.settings["aws_conn_id"]
        if self.settings.get("region_name"):
            self.region_name = self.settings["region_name"]

    def resume_execution(self, next_method: str, next_kwargs: dict[str, Any] | None, context: Any) -> Any:
        self.use_settings()
        return super().resume_execution(next_method, next_kwargs, context)

    def defer(self, *, trigger: Any, method_name: str, kwargs: Any = None, timeout: Any = None) -> Any:
        """The provider's waiter trigger, polled with the synchronous client where aiobotocore is
        missing (spindle.aws.triggers)."""
        from airflow.providers.amazon.aws.triggers.base import AwsBaseWaiterTrigger

        from spindle.aws.triggers import ThreadedAwsWaiterTrigger, async_client_available

        if isinstance(trigger, AwsBaseWaiterTrigger) and not async_client_available():
            trigger = ThreadedAwsWaiterTrigger.wrap(trigger)
        return super().defer(trigger=trigger, method_name=method_name, kwargs=kwargs, timeout=timeout)


def _log_base(settings: dict[str, Any], kind: str) -> str:
    return settings.get("log_uri") or f"s3://{settings['bucket']}/{settings.get('prefix', 'spindle')}/logs/{kind}/"


def read_s3_logs(s3_client: Any, uri_prefix: str) -> str:
    """``stdout.gz`` then ``stderr.gz`` under ``uri_prefix`` (where EMR writes a step's, a
    container's or a job run driver's output), as text; what is missing is skipped."""
    parsed = urlparse(uri_prefix)
    prefix = parsed.path.lstrip("/").rstrip("/")
    parts = []
    for name in ("stdout.gz", "stderr.gz"):
        try:
            body = s3_client.get_object(Bucket=parsed.netloc, Key=f"{prefix}/{name}")["Body"].read()
        except Exception:  # not written (yet): EMR uploads logs a few minutes late
            continue
        text = gzip.decompress(body).decode(errors="replace")
        parts.append(f"==> {name} <==\n{text}")
    return "\n".join(parts)


def _container_prefix(s3_client: Any, app_prefix: str, suffix: str) -> str | None:
    """The log folder of the container whose id ends in ``suffix`` (the first attempt's
    application master: ``_01_000001``), or None before EMR uploaded it."""
    parsed = urlparse(app_prefix)
    listed = s3_client.list_objects_v2(Bucket=parsed.netloc, Prefix=parsed.path.lstrip("/").rstrip("/") + "/")
    for item in listed.get("Contents", []):
        folder = item["Key"].rsplit("/", 1)[0]
        if folder.endswith(suffix):
            return f"s3://{parsed.netloc}/{folder}"
    return None


def wait_for_s3_logs(
    s3_client: Any, uri_prefix: str, wait: float, container_suffix: str | None = None, interval: float = 2.0
) -> str:
    """:func:`read_s3_logs` once they are there, checking every ``interval`` seconds for up to
    ``wait``: the services upload logs after the job ends. ``container_suffix``: ``uri_prefix``
    is an application's folder and the logs are in its container with this suffix."""
    deadline = time.monotonic() + wait
    while True:
        prefix = uri_prefix
        if container_suffix is not None:
            prefix = _container_prefix(s3_client, uri_prefix, container_suffix)
        text = read_s3_logs(s3_client, prefix) if prefix else ""
        if text or time.monotonic() >= deadline:
            return text
        time.sleep(interval)


def _tags(labels: dict[str, str]) -> list[dict[str, str]]:
    return [{"Key": k, "Value": v} for k, v in labels.items()]


def spark_submit_args(spec: JobSpec, conf_style: bool = False) -> list[str]:
    """spark-submit options for a staged job; ``conf_style`` puts files in ``--conf`` form
    (EMR Serverless accepts only ``--conf``/``--class``/... in sparkSubmitParameters)."""
    args: list[str] = []
    if conf_style:
        if spec.py_files():
            args += ["--conf", "spark.submit.pyFiles=" + ",".join(spec.py_files())]
        if spec.archives():
            args += ["--conf", "spark.archives=" + ",".join(spec.archives())]
    else:
        if spec.py_files():
            args += ["--py-files", ",".join(spec.py_files())]
        if spec.archives():
            args += ["--archives", ",".join(spec.archives())]
    for key, value in spec.spark_properties().items():
        args += ["--conf", f"{key}={value}"]
    return args


# --------------------------------------------------------------------------- EMR on EC2
class SpindleEmrCreateJobFlowOperator(FromSettings, EmrCreateJobFlowOperator):
    """``EmrCreateJobFlowOperator`` with its job flow built from the backend settings (Spark
    application, instance groups, log URI, roles, bootstrap actions, ``AutoTerminationPolicy``
    from ``idle_timeout_minutes``) and tagged for the reaper. It waits (the provider's
    ``WaitPolicy.WAIT_FOR_COMPLETION``, in the worker) until the job flow is ready, at most
    ``create_timeout_minutes``; when the task fails once the job flow exists (it ended
    ``TERMINATED_WITH_ERRORS``, the wait timed out, or anything else) the job flow is
    terminated before the task fails: the provider's ``terminate_job_flow_on_failure`` covers
    its waiter's errors, :meth:`terminate_failed_create` the rest; when deferred, a failed wait
    terminates the job flows this run's create task made (found by their tags).
    Links: the provider's own (EMR cluster page, its logs)."""

    template_fields: Sequence[str] = (*EmrCreateJobFlowOperator.template_fields, "settings")
    template_fields_renderers = {"settings": "json", "job_flow_overrides": "json"}

    def __init__(self, *, settings: Any, **kwargs: Any) -> None:
        from airflow.providers.amazon.aws.utils.waiter import WaitPolicy

        kwargs.setdefault("emr_conn_id", None)
        kwargs.setdefault("wait_policy", WaitPolicy.WAIT_FOR_COMPLETION)
        kwargs.setdefault("deferrable", default_deferrable())
        kwargs.setdefault("terminate_job_flow_on_failure", True)
        super().__init__(**kwargs)
        self.settings = settings

    def build_overrides(self, context: Any) -> dict[str, Any]:
        s = self.settings
        ti = context["ti"]
        labels = spindle_labels(context, "emr", s["ttl_hours"])
        instances: dict[str, Any] = {
            "InstanceGroups": [
                {
                    "Name": "master",
                    "Market": "ON_DEMAND",
                    "InstanceRole": "MASTER",
                    "InstanceType": s["instance_type"],
                    "InstanceCount": 1,
                },
                {
                    "Name": "core",
                    "Market": "ON_DEMAND",
                    "InstanceRole": "CORE",
                    "InstanceType": s["instance_type"],
                    "InstanceCount": s["core_instance_count"],
                },
            ],
            "KeepJobFlowAliveWhenNoSteps": True,
            "TerminationProtected": False,
        }
        if s.get("ec2_subnet_id"):
            instances["Ec2SubnetId"] = s["ec2_subnet_id"]
        return {
            "Name": f"spindle-{ti.dag_id}-{labels['spindle-created']}",
            "ReleaseLabel": s["release_label"],
            "LogUri": _log_base(s, "emr"),
            "Applications": [{"Name": "Spark"}],
            "Instances": instances,
            "JobFlowRole": s["job_flow_role"],
            "ServiceRole": s["service_role"],
            "VisibleToAllUsers": True,
            "Tags": _tags(labels),
            "BootstrapActions": list(s.get("bootstrap_actions") or []),
            "Configurations": list(s.get("configurations") or []),
            **(
                {"AutoTerminationPolicy": {"IdleTimeout": int(s["idle_timeout_minutes"]) * 60}}
                if s.get("idle_timeout_minutes")
                else {}
            ),
        }

    def execute(self, context: Any) -> str | None:
        from botocore.exceptions import WaiterError

        s = self.settings
        self.use_settings()
        timeout = float(s.get("create_timeout_minutes", 30)) * 60
        self.waiter_delay = int(min(30, max(1, timeout // 10)))
        self.waiter_max_attempts = max(1, math.ceil(timeout / self.waiter_delay))
        self.job_flow_overrides = self.build_overrides(context)
        try:
            return super().execute(context)
        except (WaiterError, TaskDeferred):  # terminated by the provider / the wait goes on in a trigger
            raise
        except BaseException as err:  # also the task's execution_timeout (AirflowTaskTimeout)
            self.terminate_failed_create(err)
            raise

    def resume_execution(self, next_method: str, next_kwargs: dict[str, Any] | None, context: Any) -> Any:
        try:
            return super().resume_execution(next_method, next_kwargs, context)
        except TaskDeferred:
            raise
        except BaseException as err:  # the trigger failed, timed out or reported a failure
            self.terminate_run_job_flows(context, err)
            raise

    def terminate_run_job_flows(self, context: Any, err: BaseException) -> None:
        """After a failed deferred wait the job flow id is gone with the operator that created it:
        terminate the live job flows tagged with this DAG run and backend (best effort)."""
        from spindle.aws.backend import EMR_LIVE
        from spindle.backends.common import LABEL_BACKEND, LABEL_DAG, LABEL_RUN, label_value

        ti = context["ti"]
        wanted = {LABEL_BACKEND: "emr", LABEL_DAG: label_value(ti.dag_id), LABEL_RUN: label_value(ti.run_id)}
        try:
            emr = self.hook.conn
            for page in emr.get_paginator("list_clusters").paginate(ClusterStates=EMR_LIVE):
                for summary in page["Clusters"]:
                    tags = emr.describe_cluster(ClusterId=summary["Id"])["Cluster"].get("Tags", [])
                    if wanted.items() <= {t["Key"]: t["Value"] for t in tags}.items():
                        self._job_flow_id = summary["Id"]
                        self.terminate_failed_create(err)
        except Exception as cleanup:  # noqa: BLE001 - best effort, logged
            self.log.error("Could not look up this run's job flows to terminate them: %s", cleanup)

    def terminate_failed_create(self, err: BaseException) -> None:
        """Terminate the job flow this task created before it failed (best effort: the task
        fails with ``err`` either way; the reaper is the last resort)."""
        job_flow_id = getattr(self, "_job_flow_id", None)
        if not job_flow_id:
            return
        self.log.warning("Create failed after job flow %s existed (%s): terminating it", job_flow_id, err)
        try:
            self.hook.conn.terminate_job_flows(JobFlowIds=[job_flow_id])
        except Exception as cleanup:  # noqa: BLE001 - best effort, logged
            self.log.error("Could not terminate job flow %s: %s", job_flow_id, cleanup)


class SpindleEmrAddStepsOperator(JobSpec, FromSettings, EmrAddStepsOperator):
    """One ``spark-submit`` step (cluster deploy mode) running a staged ``spark_apps`` job on the
    job flow ``job_flow_id=create.output``; returns the step ids (like the provider's)."""

    template_fields: Sequence[str] = (*EmrAddStepsOperator.template_fields, *JobSpec.spec_template_fields)
    template_fields_renderers = {"job_args": "json", "settings": "json", "staged": "json", "steps": "json"}
    # The steps are built in execute(), never read from a file: without this, a job argument that
    # ends in ".json" (the incremental pointer) would be loaded as a Jinja template file.
    template_ext: Sequence[str] = ()

    def __init__(
        self,
        *,
        job: str,
        staged: Any,
        settings: Any,
        job_flow_id: Any,
        job_args=None,
        application_args=None,
        executor_cores=None,
        executor_memory=None,
        task_cpus=None,
        driver_memory=None,
        conf=None,
        **kwargs: Any,
    ) -> None:
        super().__init__(job_flow_id=job_flow_id, **kwargs)
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

    def execute(self, context: Any) -> list[str]:
        self.use_settings()
        ti = context["ti"]
        args = self.cli_args(context)
        ti.xcom_push(key=XCOM_METRICS_URI, value=self.metrics_uri)  # the step sensor reads them there
        argv = [
            "spark-submit",
            "--deploy-mode",
            "cluster",
            "--name",
            f"spindle.{ti.dag_id}.{self.job}",
            *spark_submit_args(self),
            self.job_uri(),
            *args,
        ]
        self.steps = [
            {
                "Name": f"spindle.{ti.dag_id}.{ti.task_id}.{ti.try_number}",
                "ActionOnFailure": "CONTINUE",  # the DAG's teardown ends the cluster
                "HadoopJarStep": {"Jar": "command-runner.jar", "Args": argv},
            }
        ]
        return super().execute(context)


class SpindleEmrStepSensor(FromSettings, EmrStepSensor):
    """``EmrStepSensor`` that returns the job's metrics from the bucket (``metrics_uri``: the
    submit task's XCom) and copies the driver's log into the task log when the step ends.

    Steps run in cluster deploy mode: the driver's stdout is the log of the application's first
    YARN container, ``<LogUri>/<job flow>/containers/<application>/container_*_01_000001/``, which
    EMR uploads minutes after the step ends. The application id is read from the step's own
    ``stderr.gz`` (the spark-submit client's output); the copy waits up to the setting
    ``log_wait_seconds``, best effort: the task's result never depends on it. Deferred (the wait
    in the triggerer), the log and the metrics are read when the task resumes.
    Links: the provider's (EMR cluster page, its logs) and the cluster's Spark history server."""

    template_fields: Sequence[str] = (*EmrStepSensor.template_fields, "settings", "metrics_uri")
    operator_extra_links = (*EmrStepSensor.operator_extra_links, CloudSparkUILink())

    def __init__(self, *, settings: Any, metrics_uri: Any = None, **kwargs: Any) -> None:
        kwargs.setdefault("deferrable", default_deferrable())
        super().__init__(**kwargs)
        self.settings = settings
        self.metrics_uri = metrics_uri
        self.spark_ui_url: str | None = None

    def _step_id(self) -> str:
        step = self.step_id
        return step[0] if isinstance(step, (list, tuple)) else str(step)

    def execute(self, context: Any) -> Any:
        self.use_settings()
        self.step_id = self._step_id()
        self.poke_interval = float(self.settings.get("step_poke_interval", self.poke_interval))
        # deferred, the trigger waits max_attempts x poke_interval: as long as the sensor's timeout
        self.max_attempts = max(self.max_attempts, math.ceil(float(self.timeout) / max(self.poke_interval, 1)))
        self._publish_links(context)
        # the job's own progress, from the bucket (deferred, no task process waits to log it)
        progress = None if self.deferrable or not self.metrics_uri else progress_location(self.metrics_uri)
        try:
            with bucket_progress(self.log, progress, self.aws_conn_id):
                super().execute(context)
        except TaskDeferred:  # the step is watched by the triggerer; execute_complete takes over
            raise
        except BaseException:
            self._copy_log()
            raise
        return self._finish()

    def execute_complete(self, context: Any, event: dict[str, Any] | None = None) -> Any:
        self.step_id = self._step_id()
        try:
            super().execute_complete(context, event)
        except BaseException:
            self._copy_log()
            raise
        return self._finish()

    def resume_execution(self, next_method: str, next_kwargs: dict[str, Any] | None, context: Any) -> Any:
        try:
            return super().resume_execution(next_method, next_kwargs, context)
        except BaseException:
            if next_method != "execute_complete":  # the trigger failed: still show the driver's log
                self.step_id = self._step_id()
                self._copy_log()
            raise

    def _finish(self) -> Any:
        self._copy_log()
        return fetch_metrics(self.aws_conn_id, self.metrics_uri, f"step {self.step_id}")

    def on_kill(self) -> None:
        """The task was killed: cancel the step it watches (``CancelSteps``; a running step gets
        ``SEND_INTERRUPT``), so the job flow does not keep running a job nobody waits for."""
        step_id = self._step_id() if self.step_id else ""
        if not step_id or not self.job_flow_id:
            return
        try:
            self.log.warning("Task killed: cancelling step %s of job flow %s", step_id, self.job_flow_id)
            response = self.hook.conn.cancel_steps(
                ClusterId=self.job_flow_id, StepIds=[step_id], StepCancellationOption="SEND_INTERRUPT"
            )
            self.log.info("CancelSteps: %s", response.get("CancelStepsInfoList"))
        except Exception as err:  # noqa: BLE001 - best effort, logged
            self.log.error("Could not cancel step %s of job flow %s: %s", step_id, self.job_flow_id, err)

    def _publish_links(self, context: Any) -> None:
        try:
            cluster = self.hook.conn.describe_cluster(ClusterId=self.job_flow_id)["Cluster"]
            dns = cluster.get("MasterPublicDnsName")
            self.spark_ui_url = f"http://{dns}:{SPARK_HISTORY_PORT}" if dns else None
        except Exception as err:
            self.log.warning("Could not work out the Spark history link of job flow %s: %s", self.job_flow_id, err)
        context["ti"].xcom_push(key=XCOM_SPARK_UI_URL, value=self.spark_ui_url)

    def _s3(self):
        return self.hook.get_session(region_name=self.region_name).client(
            "s3",
            endpoint_url=self.hook.conn_config.get_service_endpoint_url("s3"),
            config=self.hook.config,
            verify=self.hook.verify,
        )

    def _copy_log(self) -> None:
        try:
            cluster = self.hook.conn.describe_cluster(ClusterId=self.job_flow_id)["Cluster"]
            log_uri = (cluster.get("LogUri") or "").replace("s3n://", "s3://")
            if not log_uri:
                self.log.warning("Job flow %s has no LogUri: no driver log to copy", self.job_flow_id)
                return
            s3, base = self._s3(), f"{log_uri.rstrip('/')}/{self.job_flow_id}"
            wait = float(self.settings.get("log_wait_seconds", 300))
            client_log = wait_for_s3_logs(s3, f"{base}/steps/{self.step_id}", wait)
            found = _YARN_APP_RE.search(client_log)
            if not found:
                copy_log_to_task_log(self.log, client_log, f"spark-submit output of step {self.step_id}")
                self.log.warning("Step %s started no YARN application: no driver log to copy", self.step_id)
                return
            app = found.group(0)
            driver = wait_for_s3_logs(s3, f"{base}/containers/{app}", wait, container_suffix="_01_000001")
            if driver:
                copy_log_to_task_log(self.log, driver, f"driver log of step {self.step_id} ({app})")
            else:
                self.log.warning("EMR has not uploaded the driver log of %s within %.0f s", app, wait)
        except Exception as err:
            self.log.warning("Could not copy the driver log of step %s: %s", self.step_id, err)


# --------------------------------------------------------------------------- EMR Serverless
class SpindleEmrServerlessCreateApplicationOperator(FromSettings, EmrServerlessCreateApplicationOperator):
    """``EmrServerlessCreateApplicationOperator`` with release label, name and tags from the
    backend settings; returns the application id. When the task fails once the application
    exists (it failed to be created or started, a wait timed out, anything else), the
    application (found by its unique name) is stopped and deleted before the task fails
    (:meth:`delete_failed_create`); after a failed deferred wait, by its id."""

    template_fields: Sequence[str] = (*EmrServerlessCreateApplicationOperator.template_fields, "settings")
    operator_extra_links = (CloudConsoleLink(),)

    def __init__(self, *, settings: Any, **kwargs: Any) -> None:
        kwargs.setdefault("release_label", "from-settings")
        kwargs.setdefault("job_type", "SPARK")
        kwargs.setdefault("deferrable", default_deferrable())
        super().__init__(**kwargs)
        self.settings = settings
        self.console_url: str | None = None

    def execute(self, context: Any) -> str | None:
        s = self.settings
        self.use_settings()
        self.release_label = s["release_label"]
        self.waiter_delay = int(s.get("waiter_delay", self.waiter_delay))
        labels = spindle_labels(context, "emr_serverless", s["ttl_hours"])
        ti = context["ti"]
        self.config = {
            **(self.config or {}),
            "name": f"spindle-{ti.dag_id}-{labels['spindle-created']}",
            "tags": labels,
        }
        if s.get("image_uri"):  # workers from a custom image (e.g. one with the model libraries)
            self.config["imageConfiguration"] = {"imageUri": s["image_uri"]}
        try:
            app_id = super().execute(context)
        except TaskDeferred:  # waits for the application in the triggerer, then resumes
            raise
        except BaseException as err:  # also the task's execution_timeout (AirflowTaskTimeout)
            self.delete_failed_create(err)
            raise
        return self._publish(context, app_id)

    def resume_execution(self, next_method: str, next_kwargs: dict[str, Any] | None, context: Any) -> Any:
        try:
            app_id = super().resume_execution(next_method, next_kwargs, context)
        except TaskDeferred:
            raise
        except BaseException as err:  # the trigger failed or reported a failure
            event = (next_kwargs or {}).get("event")
            self._delete_after_deferral(event.get("application_id") if isinstance(event, dict) else None, err)
            raise
        return self._publish(context, app_id)

    def _publish(self, context: Any, app_id: str | None) -> str | None:
        self.console_url = (
            f"https://console.aws.amazon.com/emr/home?region={self.hook.conn_region_name}"
            f"#/serverless-applications/{app_id}"
        )
        context["ti"].xcom_push(key=XCOM_CONSOLE_URL, value=self.console_url)
        return app_id

    def _delete_after_deferral(self, app_id: str | None, err: BaseException) -> None:
        from spindle.aws.backend import _stop_and_delete

        if not app_id:
            self.log.error("A deferred wait failed (%s) and named no application: the reaper will find it", err)
            return
        try:
            self.log.warning("Create failed (%s): stopping and deleting application %s", err, app_id)
            client = self.hook.conn
            _stop_and_delete(client, client.get_application(applicationId=app_id)["application"])
        except Exception as cleanup:  # noqa: BLE001 - best effort, logged
            self.log.error("Could not delete application %s after the failed create: %s", app_id, cleanup)

    def delete_failed_create(self, err: BaseException) -> None:
        """Stop and delete the application this task created before it failed (best effort:
        the task fails with ``err`` either way; the reaper is the last resort)."""
        from spindle.aws.backend import SERVERLESS_LIVE, _stop_and_delete

        name = self.config.get("name")
        try:
            client = self.hook.conn
            apps = [
                a
                for page in client.get_paginator("list_applications").paginate(states=SERVERLESS_LIVE)
                for a in page["applications"]
                if a.get("name") == name
            ]
            for summary in apps:
                self.log.warning("Create failed (%s): stopping and deleting application %s", err, summary["id"])
                app = client.get_application(applicationId=summary["id"])["application"]
                _stop_and_delete(client, app)
        except Exception as cleanup:  # noqa: BLE001 - best effort, logged
            self.log.error("Could not delete the application %s after the failed create: %s", name, cleanup)


class SpindleEmrServerlessStartJobOperator(JobSpec, FromSettings, EmrServerlessStartJobOperator):
    """A staged ``spark_apps`` job as an EMR Serverless job run on ``application_id=create.output``;
    returns the job's metrics from the bucket. The driver's log
    (``<logUri>/applications/<app>/jobs/<run>/SPARK_DRIVER/``, uploaded after the run ends) is
    copied into the task log, waiting up to the setting ``log_wait_seconds``.

    The driver's environment goes through ``spark.emr-serverless.driverEnv.*`` (Serverless
    ignores YARN's ``spark.yarn.appMasterEnv.*``); archives through ``spark.archives``.

    Links: the provider's own, with its application UI links on (``enable_application_ui_links``:
    the Spark UI dashboard and the driver's stdout, made one-time when clicked, so they never
    expire in the UI), plus the job run's console page."""

    driver_env_prefix = "spark.emr-serverless.driverEnv."

    template_fields: Sequence[str] = (*EmrServerlessStartJobOperator.template_fields, *JobSpec.spec_template_fields)
    template_fields_renderers = {"job_args": "json", "settings": "json", "staged": "json", "job_driver": "json"}
    operator_extra_links = (*EmrServerlessStartJobOperator.operator_extra_links, CloudConsoleLink())

    def __init__(
        self,
        *,
        job: str,
        staged: Any,
        settings: Any,
        application_id: Any,
        job_args=None,
        application_args=None,
        executor_cores=None,
        executor_memory=None,
        task_cpus=None,
        driver_memory=None,
        conf=None,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("execution_role_arn", "from-settings")
        kwargs.setdefault("job_driver", {})
        kwargs.setdefault("enable_application_ui_links", True)
        kwargs.setdefault("deferrable", default_deferrable())
        super().__init__(application_id=application_id, **kwargs)
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
        self.console_url: str | None = None

    def execute(self, context: Any, event: dict[str, Any] | None = None) -> Any:
        s = self.settings
        self.use_settings()
        self.execution_role_arn = s["execution_role_arn"]
        self.waiter_delay = int(s.get("waiter_delay", self.waiter_delay))
        # wait as long as a job may run (6 h), however short the polling delay
        self.waiter_max_attempts = max(self.waiter_max_attempts, int(6 * 3600 / max(self.waiter_delay, 1)))
        ti = context["ti"]
        self.name = f"spindle.{ti.dag_id}.{ti.task_id}.{ti.try_number}"
        self.job_driver = {
            "sparkSubmit": {
                "entryPoint": self.job_uri(),
                "entryPointArguments": self.cli_args(context),
                "sparkSubmitParameters": shlex.join(spark_submit_args(self, conf_style=True)),
            }
        }
        self.log_base = _log_base(s, "emr-serverless")
        self.configuration_overrides = {
            "monitoringConfiguration": {"s3MonitoringConfiguration": {"logUri": self.log_base}}
        }
        self.config = {**(self.config or {}), "tags": spindle_labels(context, "emr_serverless", s["ttl_hours"])}
        try:
            # the job's own progress, from the bucket (deferred, no task process waits to log it)
            with bucket_progress(self.log, None if self.deferrable else self.progress_uri, self.aws_conn_id):
                super().execute(context)
        except TaskDeferred:  # the job run is watched by the triggerer; execute_complete takes over
            raise
        except BaseException:
            self._copy_log(context)
            raise
        self._copy_log(context)
        return self.fetch_metrics(self.aws_conn_id)

    def execute_complete(self, context: Any, event: dict[str, Any] | None = None) -> Any:
        """Resumed after the deferred wait: the same log copy and metrics as :meth:`execute`."""
        self.log_base = _log_base(self.settings, "emr-serverless")
        self.metrics_uri = self.metrics_location(context)
        self.job_id = ((event or {}).get("job_details") or {}).get("job_id")
        try:
            super().execute_complete(context, event)
        except BaseException:
            self._copy_log(context)
            raise
        self._copy_log(context)
        return self.fetch_metrics(self.aws_conn_id)

    def job_env(self) -> dict[str, str]:
        env = super().job_env()
        if "PYSPARK_PYTHON" in env:  # the driver runs the shipped interpreter too (AWS's own recipe)
            env["PYSPARK_DRIVER_PYTHON"] = env["PYSPARK_PYTHON"]
        return env

    def spark_properties(self) -> dict[str, str]:
        props = super().spark_properties()
        props.pop("spark.executorEnv.PYSPARK_DRIVER_PYTHON", None)  # a driver setting only
        return props

    def _copy_log(self, context: Any) -> None:
        run_id = getattr(self, "job_id", None)
        if not run_id:
            return
        region = self.hook.conn_region_name
        self.console_url = SERVERLESS_CONSOLE.format(region=region, app_id=self.application_id, run_id=run_id)
        context["ti"].xcom_push(key=XCOM_CONSOLE_URL, value=self.console_url)
        prefix = f"{self.log_base.rstrip('/')}/applications/{self.application_id}/jobs/{run_id}/SPARK_DRIVER"
        try:
            s3 = self.hook.get_session(region_name=self.region_name).client(
                "s3",
                endpoint_url=self.hook.conn_config.get_service_endpoint_url("s3"),
                config=self.hook.config,
                verify=self.hook.verify,
            )
            wait = float(self.settings.get("log_wait_seconds", 300))
            text = wait_for_s3_logs(s3, prefix, wait)
            if text:
                copy_log_to_task_log(self.log, text, f"driver log of job run {run_id} ({prefix})")
            else:
                self.log.warning("EMR Serverless has not uploaded the driver log at %s within %.0f s", prefix, wait)
        except Exception as err:
            self.log.warning("Could not copy the driver log of job run %s: %s", run_id, err)


class SpindleEmrTerminateJobFlowOperator(FromSettings, EmrTerminateJobFlowOperator):
    """``EmrTerminateJobFlowOperator`` (``job_flow_id=create.output``) with the AWS connection
    from the backend settings; the lane's teardown."""

    template_fields: Sequence[str] = (*EmrTerminateJobFlowOperator.template_fields, "settings")

    def __init__(self, *, settings: Any, **kwargs: Any) -> None:
        kwargs.setdefault("deferrable", default_deferrable())
        super().__init__(**kwargs)
        self.settings = settings

    def execute(self, context: Any) -> None:
        self.use_settings()
        if not self.job_flow_id:
            raise ValueError("job_flow_id is required: pass job_flow_id=create.output")
        return super().execute(context)


class SpindleEmrServerlessDeleteApplicationOperator(FromSettings, EmrServerlessDeleteApplicationOperator):
    """``EmrServerlessDeleteApplicationOperator`` (stop, then delete; ``application_id=create.output``)
    with the AWS connection from the backend settings; the lane's teardown. ``force_stop``: job
    runs still going (their task was killed without its ``on_kill``) are cancelled first, since
    the service refuses to stop an application with unfinished job runs."""

    template_fields: Sequence[str] = (*EmrServerlessDeleteApplicationOperator.template_fields, "settings")

    def __init__(self, *, settings: Any, **kwargs: Any) -> None:
        kwargs.setdefault("deferrable", default_deferrable())
        kwargs.setdefault("force_stop", True)
        super().__init__(**kwargs)
        self.settings = settings

    def execute(self, context: Any) -> None:
        self.use_settings()
        if not self.application_id:
            raise ValueError("application_id is required: pass application_id=create.output")
        return super().execute(context)
