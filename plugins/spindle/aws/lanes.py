"""The EMR on EC2 and EMR Serverless lanes (see :mod:`spindle.backends.lanes`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from spindle.aws.operators import (
    SpindleEmrAddStepsOperator,
    SpindleEmrCreateJobFlowOperator,
    SpindleEmrServerlessCreateApplicationOperator,
    SpindleEmrServerlessDeleteApplicationOperator,
    SpindleEmrServerlessStartJobOperator,
    SpindleEmrStepSensor,
    SpindleEmrTerminateJobFlowOperator,
)
from spindle.backends.staging import StageSparkAppsOperator


def emr_lane(check: Any, jobs: Sequence[Any], model: Any, inputs: Any,
             job_kwargs: Callable[[Any], dict[str, Any]]) -> tuple[Any, Any, Any]:  # fmt: skip
    """stage → create_job_flow → (<job>_submit → <job>) per job → terminate_job_flow (teardown)."""
    settings = check["settings"]
    stage = StageSparkAppsOperator(
        task_id="stage", jobs=[j.job for j in jobs], settings=settings, conn_key="aws_conn_id",
        scheme="s3", model_path=model, input_paths=inputs,
    )  # fmt: skip
    create = SpindleEmrCreateJobFlowOperator(task_id="create_cluster", settings=settings)
    previous = create
    for job in jobs:
        submit = SpindleEmrAddStepsOperator(
            task_id=f"{job.task_id}_submit", job_flow_id=create.output, staged=stage.output,
            settings=settings, **job_kwargs(job),
        )  # fmt: skip
        watch = SpindleEmrStepSensor(
            task_id=job.task_id, job_flow_id=create.output, step_id=submit.output, settings=settings,
            poke_interval=5, timeout=6 * 3600, mode="poke",
        )  # fmt: skip
        previous >> submit >> watch
        previous = watch
    delete = SpindleEmrTerminateJobFlowOperator(
        task_id="delete_cluster", job_flow_id=create.output, settings=settings,
        waiter_delay=5, waiter_max_attempts=120,
    )  # fmt: skip
    stage >> create
    previous >> delete
    delete.as_teardown(setups=create)
    return stage, create, delete


def emr_serverless_lane(check: Any, jobs: Sequence[Any], model: Any, inputs: Any,
                        job_kwargs: Callable[[Any], dict[str, Any]]) -> tuple[Any, Any, Any]:  # fmt: skip
    """stage → create_application → one job run per job → delete_application (teardown)."""
    settings = check["settings"]
    stage = StageSparkAppsOperator(
        task_id="stage", jobs=[j.job for j in jobs], settings=settings, conn_key="aws_conn_id",
        scheme="s3", model_path=model, input_paths=inputs,
    )  # fmt: skip
    create = SpindleEmrServerlessCreateApplicationOperator(task_id="create_cluster", settings=settings,
                                                           waiter_delay=5)  # fmt: skip
    previous = create
    for job in jobs:
        run = SpindleEmrServerlessStartJobOperator(
            task_id=job.task_id, application_id=create.output, staged=stage.output, settings=settings,
            **job_kwargs(job),
        )  # fmt: skip
        previous >> run
        previous = run
    delete = SpindleEmrServerlessDeleteApplicationOperator(
        task_id="delete_cluster", application_id=create.output, settings=settings,
        waiter_delay=5, waiter_max_attempts=120, force_stop=True,
    )  # fmt: skip
    stage >> create
    previous >> delete
    delete.as_teardown(setups=create)
    return stage, create, delete
