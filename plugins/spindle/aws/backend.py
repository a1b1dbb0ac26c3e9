"""The AWS backends, EMR on EC2 and EMR Serverless: settings, lanes and reapers (see
:mod:`spindle.backends.registry`). Both read object storage as ``s3://`` (EMRFS on the nodes).

- EMR on EC2: ``stage`` → ``create_cluster`` (``EmrCreateJobFlowOperator``) → per job an
  ``EmrAddStepsOperator`` step (``spark-submit --deploy-mode cluster``) and an ``EmrStepSensor``
  → ``delete_cluster`` (``EmrTerminateJobFlowOperator``, teardown).
- EMR Serverless: ``stage`` → ``create_cluster`` (``EmrServerlessCreateApplicationOperator``) →
  one ``EmrServerlessStartJobOperator`` per job → ``delete_cluster``
  (``EmrServerlessDeleteApplicationOperator``, teardown).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from spindle.backends.registry import REQUIRED, Backend

EMR_LIVE = ["STARTING", "BOOTSTRAPPING", "RUNNING", "WAITING"]
SERVERLESS_LIVE = ["CREATING", "CREATED", "STARTING", "STARTED", "STOPPING", "STOPPED"]

EMR_SETTINGS: dict[str, tuple[Any, Any, str]] = {
    "aws_conn_id": (str, "aws_default", "AWS connection (region, credentials, endpoint_url)"),
    "region_name": ((str, type(None)), None, "AWS region (default: the connection's)"),
    "release_label": (str, "emr-7.5.0", "EMR release"),
    "instance_type": (str, "m5.xlarge", "instance type of the master and core nodes"),
    "core_instance_count": (int, 1, "core nodes"),
    "ec2_subnet_id": ((str, type(None)), None, "subnet of the cluster"),
    "job_flow_role": (str, "EMR_EC2_DefaultRole", "instance profile of the nodes"),
    "service_role": (str, "EMR_DefaultRole", "EMR service role"),
    "log_uri": ((str, type(None)), None, "S3 log location (default s3://<bucket>/<prefix>/logs/emr/)"),
    "step_poke_interval": ((int, float), 30, "seconds between step state checks"),
    "bootstrap_actions": (
        list,
        [],
        "EMR BootstrapActions of the job flow (e.g. a script that pip-installs the "
        "model libraries, with environment: provided)",
    ),
    "configurations": (list, [], "EMR Configurations of the job flow (classification/properties)"),
    "idle_timeout_minutes": (
        (int, type(None)),
        60,
        (
            "EMR AutoTerminationPolicy: the job flow terminates "
            "itself after this many idle minutes (no step running), 1 to 10080; null: no policy"
        ),
    ),
    "create_timeout_minutes": (
        (int, float),
        30,
        (
            "how long create_cluster waits for the job flow to be ready "
            "(WAITING/RUNNING) before terminating it and failing"
        ),
    ),
}


def validate_emr(settings: Mapping[str, Any]) -> list[str]:
    errors = []
    idle = settings["idle_timeout_minutes"]
    if idle is not None and not 1 <= idle <= 7 * 24 * 60:
        errors.append(f"idle_timeout_minutes must be 1 to 10080 (EMR's IdleTimeout is 60 s to 7 days), not {idle}")
    if settings["create_timeout_minutes"] <= 0:
        errors.append("create_timeout_minutes must be positive")
    return errors


EMR_SERVERLESS_SETTINGS: dict[str, tuple[Any, Any, str]] = {
    "aws_conn_id": (str, "aws_default", "AWS connection (region, credentials, endpoint_url)"),
    "region_name": ((str, type(None)), None, "AWS region (default: the connection's)"),
    "release_label": (str, "emr-7.5.0", "EMR release"),
    "execution_role_arn": (str, REQUIRED, "IAM role the job runs as"),
    "log_uri": (
        (str, type(None)),
        None,
        "S3 log location (default s3://<bucket>/<prefix>/logs/emr-serverless/)",
    ),
    "waiter_delay": (int, 30, "seconds between job state checks"),
    "image_uri": (
        (str, type(None)),
        None,
        "custom image (ECR URI) of the application's workers, e.g. one with "
        "the model libraries (with environment: provided)",
    ),
}


# --------------------------------------------------------------------------- lanes
def build_emr_lane(
    check: Any, jobs: Sequence[Any], model: Any, inputs: Any, job_kwargs: Callable[[Any], dict[str, Any]]
) -> tuple[Any, Any, Any]:
    """stage → create_cluster (job flow) → (<job>_submit → <job>) per job → delete_cluster (teardown)."""
    from airflow.sdk import XComArg

    from spindle.aws.operators import (
        XCOM_METRICS_URI,
        SpindleEmrAddStepsOperator,
        SpindleEmrCreateJobFlowOperator,
        SpindleEmrStepSensor,
        SpindleEmrTerminateJobFlowOperator,
    )
    from spindle.backends.lanes import lane
    from spindle.pipelines import set_job_timeout

    def step(job, job_flow_id, staged, settings, kwargs):
        submit = SpindleEmrAddStepsOperator(
            task_id=f"{job.task_id}_submit", job_flow_id=job_flow_id, staged=staged, settings=settings, **kwargs
        )
        watch = SpindleEmrStepSensor(
            task_id=job.task_id,
            # the step's time limit (param job_timeout_minutes), as on the other lanes' job tasks
            pre_execute=set_job_timeout,
            execution_timeout=kwargs.get("execution_timeout"),
            job_flow_id=job_flow_id,
            step_id=submit.output,
            settings=settings,
            metrics_uri=XComArg(submit, key=XCOM_METRICS_URI),
            poke_interval=5,
            timeout=6 * 3600,
            mode="poke",
        )
        submit >> watch
        return submit, watch

    return lane(
        check,
        jobs,
        model,
        inputs,
        job_kwargs,
        storage_conn_key="aws_conn_id",
        scheme="s3",
        create=lambda settings: SpindleEmrCreateJobFlowOperator(task_id="create_cluster", settings=settings),
        job_tasks=step,
        delete=lambda job_flow_id, settings: SpindleEmrTerminateJobFlowOperator(
            task_id="delete_cluster",
            job_flow_id=job_flow_id,
            settings=settings,
            waiter_delay=5,
            waiter_max_attempts=120,
        ),
    )


def build_emr_serverless_lane(
    check: Any, jobs: Sequence[Any], model: Any, inputs: Any, job_kwargs: Callable[[Any], dict[str, Any]]
) -> tuple[Any, Any, Any]:
    """stage → create_cluster (application) → one job run per job → delete_cluster (teardown)."""
    from spindle.aws.operators import (
        SpindleEmrServerlessCreateApplicationOperator,
        SpindleEmrServerlessDeleteApplicationOperator,
        SpindleEmrServerlessStartJobOperator,
    )
    from spindle.backends.lanes import lane

    def job_run(job, application_id, staged, settings, kwargs):
        run = SpindleEmrServerlessStartJobOperator(
            task_id=job.task_id, application_id=application_id, staged=staged, settings=settings, **kwargs
        )
        return run, run

    return lane(
        check,
        jobs,
        model,
        inputs,
        job_kwargs,
        storage_conn_key="aws_conn_id",
        scheme="s3",
        create=lambda settings: SpindleEmrServerlessCreateApplicationOperator(
            task_id="create_cluster", settings=settings, waiter_delay=5
        ),
        job_tasks=job_run,
        delete=lambda application_id, settings: SpindleEmrServerlessDeleteApplicationOperator(
            task_id="delete_cluster",
            application_id=application_id,
            settings=settings,
            waiter_delay=5,
            waiter_max_attempts=120,
            force_stop=True,
        ),
    )


# --------------------------------------------------------------------------- reapers
def _aws_client(settings: Mapping[str, Any], service: str):
    from airflow.providers.amazon.aws.hooks.base_aws import AwsBaseHook

    return AwsBaseHook(
        aws_conn_id=settings["aws_conn_id"], client_type=service, region_name=settings.get("region_name")
    ).get_conn()


def reap_emr(settings: Mapping[str, Any], dry_run: bool, ttl_override: float | None, now: float) -> list[Any]:
    from spindle.backends.reaper import act_on, finding

    emr = _aws_client(settings, "emr")
    findings = []
    for page in emr.get_paginator("list_clusters").paginate(ClusterStates=EMR_LIVE):
        for summary in page["Clusters"]:
            cluster = emr.describe_cluster(ClusterId=summary["Id"])["Cluster"]
            tags = {t["Key"]: t["Value"] for t in cluster.get("Tags", [])}
            found = finding("emr", cluster["Id"], cluster.get("Name", ""), tags, now, ttl_override)
            if found is None:
                continue
            act_on(found, dry_run, _terminate, emr, cluster["Id"], verb="terminate")
            findings.append(found)
    return findings


def reap_emr_serverless(
    settings: Mapping[str, Any], dry_run: bool, ttl_override: float | None, now: float
) -> list[Any]:
    from spindle.backends.reaper import act_on, finding

    client = _aws_client(settings, "emr-serverless")
    findings = []
    for page in client.get_paginator("list_applications").paginate(states=SERVERLESS_LIVE):
        for summary in page["applications"]:
            app = client.get_application(applicationId=summary["id"])["application"]
            found = finding(
                "emr_serverless", app["applicationId"], app.get("name", ""), app.get("tags", {}), now, ttl_override
            )
            if found is None:
                continue
            act_on(found, dry_run, _stop_and_delete, client, app)
            findings.append(found)
    return findings


def _terminate(emr: Any, job_flow_id: str) -> None:
    emr.terminate_job_flows(JobFlowIds=[job_flow_id])


#: Job run states in which EMR Serverless refuses to stop the application (the provider hook's
#: JOB_INTERMEDIATE_STATES plus QUEUED and CANCELLING, which a stop must also wait out).
SERVERLESS_UNFINISHED_RUNS = ("PENDING", "SUBMITTED", "SCHEDULED", "RUNNING", "QUEUED", "CANCELLING")


def _cancel_job_runs(client: Any, app_id: str) -> None:
    """Cancel the application's unfinished job runs and wait until none is left (up to 10 min)."""
    for _ in range(120):
        runs = [
            run["id"]
            for page in client.get_paginator("list_job_runs").paginate(
                applicationId=app_id, states=list(SERVERLESS_UNFINISHED_RUNS)
            )
            for run in page["jobRuns"]
        ]
        if not runs:
            return
        for run_id in runs:
            try:
                client.cancel_job_run(applicationId=app_id, jobRunId=run_id)
            except client.exceptions.ValidationException:  # already ending
                pass
        time.sleep(5)


def _stop_and_delete(client: Any, app: Mapping[str, Any]) -> None:
    """An application can be deleted only when CREATED or STOPPED, and stopped only without
    unfinished job runs: cancel those, stop it and wait, then delete it."""
    if app["state"] not in ("CREATED", "STOPPED"):
        _cancel_job_runs(client, app["applicationId"])
        client.stop_application(applicationId=app["applicationId"])
        for _ in range(120):
            state = client.get_application(applicationId=app["applicationId"])
            if state["application"]["state"] == "STOPPED":
                break
            time.sleep(5)
    client.delete_application(applicationId=app["applicationId"])


EMR = Backend(
    name="emr",
    title="EMR on EC2",
    settings=EMR_SETTINGS,
    build_lane=build_emr_lane,
    reap=reap_emr,
    validate=validate_emr,
)
EMR_SERVERLESS = Backend(
    name="emr_serverless",
    title="EMR Serverless",
    settings=EMR_SERVERLESS_SETTINGS,
    build_lane=build_emr_serverless_lane,
    reap=reap_emr_serverless,
)
