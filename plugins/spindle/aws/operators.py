"""EMR (on EC2 and Serverless) operators for Spindle: the amazon provider's operators,
configured at run time from the backend's settings, tagged for the reaper, and with the driver
log from the S3 log location copied into the task log.

EMR on EC2: :class:`SpindleEmrCreateJobFlowOperator` → per job :class:`SpindleEmrAddStepsOperator`
(one ``command-runner.jar spark-submit`` step) + :class:`SpindleEmrStepSensor` (waits, copies the
step's driver log, returns the job's metrics) → ``EmrTerminateJobFlowOperator`` as teardown.

EMR Serverless: :class:`SpindleEmrServerlessCreateApplicationOperator` → per job
:class:`SpindleEmrServerlessStartJobOperator` → ``EmrServerlessDeleteApplicationOperator``.
"""

from __future__ import annotations

import gzip
import shlex
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

from spindle.backends.common import (
    XCOM_CONSOLE_URL,
    XCOM_SPARK_UI_URL,
    CloudConsoleLink,
    CloudSparkUILink,
    JobSpec,
    copy_log_to_task_log,
    spindle_labels,
)

EMR_CONSOLE = "https://console.aws.amazon.com/emr/home?region={region}#/clusterDetails/{cluster_id}"
SERVERLESS_CONSOLE = (
    "https://console.aws.amazon.com/emr/home?region={region}#/serverless-applications/{app_id}/job-runs/{run_id}"
)
SPARK_HISTORY_PORT = 18080


def _log_base(settings: dict[str, Any], kind: str) -> str:
    return settings.get("log_uri") or f"s3://{settings['bucket']}/{settings.get('prefix', 'spindle')}/logs/{kind}/"


def read_s3_logs(s3_client: Any, uri_prefix: str) -> str:
    """``stdout.gz`` then ``stderr.gz`` under ``uri_prefix`` (where EMR writes a step's or a
    job run driver's output), as text; what is missing is skipped."""
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
class SpindleEmrCreateJobFlowOperator(EmrCreateJobFlowOperator):
    """``EmrCreateJobFlowOperator`` with its job flow built from the backend settings (Spark
    application, instance groups, log URI, roles) and tagged for the reaper."""

    template_fields: Sequence[str] = (*EmrCreateJobFlowOperator.template_fields, "settings")
    template_fields_renderers = {"settings": "json", "job_flow_overrides": "json"}
    operator_extra_links = (*EmrCreateJobFlowOperator.operator_extra_links, CloudConsoleLink())

    def __init__(self, *, settings: Any, **kwargs: Any) -> None:
        kwargs.setdefault("emr_conn_id", None)
        super().__init__(**kwargs)
        self.settings = settings
        self.console_url: str | None = None

    def build_overrides(self, context: Any) -> dict[str, Any]:
        s = self.settings
        ti = context["ti"]
        labels = spindle_labels(context, "emr", s["ttl_hours"])
        instances: dict[str, Any] = {
            "InstanceGroups": [
                {"Name": "master", "Market": "ON_DEMAND", "InstanceRole": "MASTER",
                 "InstanceType": s["instance_type"], "InstanceCount": 1},
                {"Name": "core", "Market": "ON_DEMAND", "InstanceRole": "CORE",
                 "InstanceType": s["instance_type"], "InstanceCount": s["core_instance_count"]},
            ],
            "KeepJobFlowAliveWhenNoSteps": True,
            "TerminationProtected": False,
        }  # fmt: skip
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
        }

    def execute(self, context: Any) -> str | None:
        self.aws_conn_id = self.settings["aws_conn_id"]
        if self.settings.get("region_name"):
            self.region_name = self.settings["region_name"]
        self.job_flow_overrides = self.build_overrides(context)
        job_flow_id = super().execute(context)
        self.console_url = EMR_CONSOLE.format(region=self.hook.conn_region_name, cluster_id=job_flow_id)
        context["ti"].xcom_push(key=XCOM_CONSOLE_URL, value=self.console_url)
        return job_flow_id


class SpindleEmrAddStepsOperator(JobSpec, EmrAddStepsOperator):
    """One ``spark-submit`` step (cluster deploy mode) running a staged ``spark_apps`` job on the
    job flow ``job_flow_id=create.output``; returns the step ids (like the provider's)."""

    template_fields: Sequence[str] = (*EmrAddStepsOperator.template_fields, *JobSpec.spec_template_fields)
    template_fields_renderers = {"job_args": "json", "settings": "json", "staged": "json", "steps": "json"}
    # The steps are built in execute(), never read from a file: without this, a job argument that
    # ends in ".json" (the incremental pointer) would be loaded as a Jinja template file.
    template_ext: Sequence[str] = ()

    def __init__(self, *, job: str, staged: Any, settings: Any, job_flow_id: Any, job_args=None,
                 application_args=None, executor_cores=None, executor_memory=None, task_cpus=None,
                 driver_memory=None, **kwargs: Any) -> None:  # fmt: skip
        super().__init__(job_flow_id=job_flow_id, **kwargs)
        self.init_spec(
            job=job, staged=staged, settings=settings, job_args=job_args, application_args=application_args,
            executor_cores=executor_cores, executor_memory=executor_memory, task_cpus=task_cpus,
            driver_memory=driver_memory,
        )  # fmt: skip

    def execute(self, context: Any) -> list[str]:
        self.aws_conn_id = self.settings["aws_conn_id"]
        if self.settings.get("region_name"):
            self.region_name = self.settings["region_name"]
        ti = context["ti"]
        argv = ["spark-submit", "--deploy-mode", "cluster", "--name", f"spindle.{ti.dag_id}.{self.job}",
                *spark_submit_args(self), self.job_uri(), *self.cli_args()]  # fmt: skip
        self.steps = [{
            "Name": f"spindle.{ti.dag_id}.{ti.task_id}.{ti.try_number}",
            "ActionOnFailure": "CONTINUE",  # the DAG's teardown ends the cluster
            "HadoopJarStep": {"Jar": "command-runner.jar", "Args": argv},
        }]  # fmt: skip
        return super().execute(context)


class SpindleEmrStepSensor(EmrStepSensor):
    """``EmrStepSensor`` that copies the step's driver log (``<LogUri>/<job flow>/steps/<step>/``)
    into the task log when the step ends, fails with it in view, and returns the job's
    ``SPINDLE_METRICS``. Links: the cluster's Spark history server and console page."""

    template_fields: Sequence[str] = (*EmrStepSensor.template_fields, "settings")
    operator_extra_links = (*EmrStepSensor.operator_extra_links, CloudSparkUILink(), CloudConsoleLink())

    def __init__(self, *, settings: Any, log_wait: float = 30.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.settings = settings
        self.log_wait = log_wait
        self.spark_ui_url: str | None = None
        self.console_url: str | None = None
        self.metrics: dict[str, Any] | None = None

    def _step_id(self) -> str:
        step = self.step_id
        return step[0] if isinstance(step, (list, tuple)) else str(step)

    def execute(self, context: Any) -> Any:
        self.aws_conn_id = self.settings["aws_conn_id"]
        if self.settings.get("region_name"):
            self.region_name = self.settings["region_name"]
        self.step_id = self._step_id()
        self.poke_interval = float(self.settings.get("step_poke_interval", self.poke_interval))
        self._publish_links(context)
        try:
            super().execute(context)
        except BaseException:
            self._copy_log(failed=True)
            raise
        self._copy_log(failed=False)
        if self.metrics is None:
            raise RuntimeError(f"step {self.step_id} finished without printing a SPINDLE_METRICS line")
        return self.metrics

    def _publish_links(self, context: Any) -> None:
        try:
            cluster = self.hook.conn.describe_cluster(ClusterId=self.job_flow_id)["Cluster"]
            dns = cluster.get("MasterPublicDnsName")
            self.spark_ui_url = f"http://{dns}:{SPARK_HISTORY_PORT}" if dns else None
            self.console_url = EMR_CONSOLE.format(region=self.hook.conn_region_name, cluster_id=self.job_flow_id)
        except Exception as err:
            self.log.warning("Could not work out the links of job flow %s: %s", self.job_flow_id, err)
        context["ti"].xcom_push(key=XCOM_SPARK_UI_URL, value=self.spark_ui_url)
        context["ti"].xcom_push(key=XCOM_CONSOLE_URL, value=self.console_url)

    def _copy_log(self, failed: bool) -> None:
        import time

        from spindle.backends.common import JobSpec as _Spec

        try:
            cluster = self.hook.conn.describe_cluster(ClusterId=self.job_flow_id)["Cluster"]
            log_uri = (cluster.get("LogUri") or "").replace("s3n://", "s3://")
            if not log_uri:
                self.log.warning("Job flow %s has no LogUri: no driver log to copy", self.job_flow_id)
                return
            prefix = f"{log_uri.rstrip('/')}/{self.job_flow_id}/steps/{self.step_id}"
            s3 = self.hook.get_session(region_name=self.region_name).client(
                "s3", endpoint_url=self.hook.conn_config.get_service_endpoint_url("s3"),
                config=self.hook.config, verify=self.hook.verify,
            )  # fmt: skip
            deadline = time.monotonic() + self.log_wait
            text = read_s3_logs(s3, prefix)
            while not text and time.monotonic() < deadline:
                time.sleep(2)
                text = read_s3_logs(s3, prefix)
            title = f"driver log of step {self.step_id} ({prefix})"
            if text:
                copy_log_to_task_log(self.log, text, title)
                spec = _Spec()
                spec.metrics = None
                self.metrics = spec.read_metrics(text)
            else:
                self.log.warning("No driver log at %s yet", prefix)
        except Exception as err:
            self.log.warning("Could not copy the driver log of step %s: %s", self.step_id, err)


# --------------------------------------------------------------------------- EMR Serverless
class SpindleEmrServerlessCreateApplicationOperator(EmrServerlessCreateApplicationOperator):
    """``EmrServerlessCreateApplicationOperator`` with release label, name and tags from the
    backend settings; returns the application id."""

    template_fields: Sequence[str] = (*EmrServerlessCreateApplicationOperator.template_fields, "settings")
    operator_extra_links = (CloudConsoleLink(),)

    def __init__(self, *, settings: Any, **kwargs: Any) -> None:
        kwargs.setdefault("release_label", "from-settings")
        kwargs.setdefault("job_type", "SPARK")
        super().__init__(**kwargs)
        self.settings = settings
        self.console_url: str | None = None

    def execute(self, context: Any) -> str | None:
        s = self.settings
        self.aws_conn_id = s["aws_conn_id"]
        if s.get("region_name"):
            self.region_name = s["region_name"]
        self.release_label = s["release_label"]
        self.waiter_delay = int(s.get("waiter_delay", self.waiter_delay))
        labels = spindle_labels(context, "emr_serverless", s["ttl_hours"])
        ti = context["ti"]
        self.config = {**(self.config or {}), "name": f"spindle-{ti.dag_id}-{labels['spindle-created']}",
                       "tags": labels}  # fmt: skip
        app_id = super().execute(context)
        self.console_url = (
            f"https://console.aws.amazon.com/emr/home?region={self.hook.conn_region_name}"
            f"#/serverless-applications/{app_id}"
        )
        context["ti"].xcom_push(key=XCOM_CONSOLE_URL, value=self.console_url)
        return app_id


class SpindleEmrServerlessStartJobOperator(JobSpec, EmrServerlessStartJobOperator):
    """A staged ``spark_apps`` job as an EMR Serverless job run on ``application_id=create.output``;
    the driver's log (``<logUri>/applications/<app>/jobs/<run>/SPARK_DRIVER/``) is copied into the
    task log when the run ends; returns the job's ``SPINDLE_METRICS``."""

    template_fields: Sequence[str] = (*EmrServerlessStartJobOperator.template_fields, *JobSpec.spec_template_fields)
    template_fields_renderers = {"job_args": "json", "settings": "json", "staged": "json", "job_driver": "json"}
    operator_extra_links = (*EmrServerlessStartJobOperator.operator_extra_links, CloudSparkUILink(),
                            CloudConsoleLink())  # fmt: skip

    def __init__(self, *, job: str, staged: Any, settings: Any, application_id: Any, job_args=None,
                 application_args=None, executor_cores=None, executor_memory=None, task_cpus=None,
                 driver_memory=None, log_wait: float = 30.0, **kwargs: Any) -> None:  # fmt: skip
        kwargs.setdefault("execution_role_arn", "from-settings")
        kwargs.setdefault("job_driver", {})
        super().__init__(application_id=application_id, **kwargs)
        self.init_spec(
            job=job, staged=staged, settings=settings, job_args=job_args, application_args=application_args,
            executor_cores=executor_cores, executor_memory=executor_memory, task_cpus=task_cpus,
            driver_memory=driver_memory,
        )  # fmt: skip
        self.log_wait = log_wait
        self.spark_ui_url: str | None = None
        self.console_url: str | None = None

    def execute(self, context: Any, event: dict[str, Any] | None = None) -> Any:
        s = self.settings
        self.aws_conn_id = s["aws_conn_id"]
        if s.get("region_name"):
            self.region_name = s["region_name"]
        self.execution_role_arn = s["execution_role_arn"]
        self.waiter_delay = int(s.get("waiter_delay", self.waiter_delay))
        # wait as long as a job may run (6 h), however short the polling delay
        self.waiter_max_attempts = max(self.waiter_max_attempts, int(6 * 3600 / max(self.waiter_delay, 1)))
        ti = context["ti"]
        self.name = f"spindle.{ti.dag_id}.{ti.task_id}.{ti.try_number}"
        self.job_driver = {"sparkSubmit": {
            "entryPoint": self.job_uri(),
            "entryPointArguments": self.cli_args(),
            "sparkSubmitParameters": shlex.join(spark_submit_args(self, conf_style=True)),
        }}  # fmt: skip
        self.log_base = _log_base(s, "emr-serverless")
        self.configuration_overrides = {
            "monitoringConfiguration": {"s3MonitoringConfiguration": {"logUri": self.log_base}}
        }
        self.config = {**(self.config or {}), "tags": spindle_labels(context, "emr_serverless", s["ttl_hours"])}
        try:
            super().execute(context)
        except BaseException:
            self._copy_log(context)
            raise
        self._copy_log(context)
        if self.metrics is None:
            raise RuntimeError(f"job run {self.job_id} finished without printing a SPINDLE_METRICS line")
        return self.metrics

    def _copy_log(self, context: Any) -> None:
        import time

        run_id = getattr(self, "job_id", None)
        if not run_id:
            return
        region = self.hook.conn_region_name
        self.console_url = SERVERLESS_CONSOLE.format(region=region, app_id=self.application_id, run_id=run_id)
        try:
            self.spark_ui_url = self.hook.conn.get_dashboard_for_job_run(
                applicationId=self.application_id, jobRunId=run_id
            ).get("url")
        except Exception:  # the dashboard API is optional (and not in every emulator)
            self.spark_ui_url = self.console_url
        context["ti"].xcom_push(key=XCOM_SPARK_UI_URL, value=self.spark_ui_url)
        context["ti"].xcom_push(key=XCOM_CONSOLE_URL, value=self.console_url)
        prefix = f"{self.log_base.rstrip('/')}/applications/{self.application_id}/jobs/{run_id}/SPARK_DRIVER"
        try:
            s3 = self.hook.get_session(region_name=self.region_name).client(
                "s3", endpoint_url=self.hook.conn_config.get_service_endpoint_url("s3"),
                config=self.hook.config, verify=self.hook.verify,
            )  # fmt: skip
            deadline = time.monotonic() + self.log_wait
            text = read_s3_logs(s3, prefix)
            while not text and time.monotonic() < deadline:
                time.sleep(2)
                text = read_s3_logs(s3, prefix)
            if text:
                copy_log_to_task_log(self.log, text, f"driver log of job run {run_id} ({prefix})")
                self.read_metrics(text)
            else:
                self.log.warning("No driver log at %s yet", prefix)
        except Exception as err:
            self.log.warning("Could not copy the driver log of job run %s: %s", run_id, err)


class SpindleEmrTerminateJobFlowOperator(EmrTerminateJobFlowOperator):
    """``EmrTerminateJobFlowOperator`` (``job_flow_id=create.output``) with the AWS connection
    from the backend settings; the lane's teardown."""

    template_fields: Sequence[str] = (*EmrTerminateJobFlowOperator.template_fields, "settings")

    def __init__(self, *, settings: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.settings = settings

    def execute(self, context: Any) -> None:
        self.aws_conn_id = self.settings["aws_conn_id"]
        if self.settings.get("region_name"):
            self.region_name = self.settings["region_name"]
        if not self.job_flow_id:
            raise ValueError("job_flow_id is required: pass job_flow_id=create.output")
        return super().execute(context)


class SpindleEmrServerlessDeleteApplicationOperator(EmrServerlessDeleteApplicationOperator):
    """``EmrServerlessDeleteApplicationOperator`` (stop, then delete; ``application_id=create.output``)
    with the AWS connection from the backend settings; the lane's teardown."""

    template_fields: Sequence[str] = (*EmrServerlessDeleteApplicationOperator.template_fields, "settings")

    def __init__(self, *, settings: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.settings = settings

    def execute(self, context: Any) -> None:
        self.aws_conn_id = self.settings["aws_conn_id"]
        if self.settings.get("region_name"):
            self.region_name = self.settings["region_name"]
        if not self.application_id:
            raise ValueError("application_id is required: pass application_id=create.output")
        return super().execute(context)
