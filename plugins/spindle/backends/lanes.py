"""One DAG file, four backends: cloud lanes next to the local create → jobs → delete lane.

A DAG builds its local lane as usual (create, :class:`SparkAppJobOperator` jobs, delete as
teardown), then calls :func:`add_backend_lanes`. That adds:

- ``check_backend``, which must be the DAG's **first** task: it resolves the backend (run
  param ``backend`` > Variable ``spindle_backend`` > env ``SPINDLE_BACKEND`` > ``local``) and
  validates its settings (:mod:`spindle.backends.config`), failing with a message that names
  the missing or malformed setting before any cluster exists;
- ``choose_backend``, a branch after the DAG's plan task that follows the chosen lane and
  skips the others (skipped setups skip their teardowns);
- one task group per cloud backend, the same shape as the local lane: ``stage`` (upload code,
  model, inputs) → ``create`` → one job task per local job (same job, same arguments) →
  ``delete`` as the teardown of ``create``; the cluster / job flow / application id goes to
  every task explicitly as ``create.output``.

Why a branch and not one generic operator that dispatches at run time: every cloud lane
consists of the providers' own operators (visible as such in the UI and logs), each lane's
teardown is a plain Airflow teardown of its own create task, and a per-run ``backend`` param
still picks the lane.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

from airflow.sdk import Param, get_current_context, task
from airflow.sdk.definitions.taskgroup import TaskGroup

from spindle.backends import config, registry


def backend_param() -> Param:
    """The run's ``backend`` param (empty: Variable ``spindle_backend``, env, ``local``)."""
    return Param(
        None,
        type=["null", "string"],
        enum=[None, *config.BACKENDS],
        title="Backend",
        description="Where the Spark cluster runs: local, yandex (Data Proc), yandex_spark (Managed Service for "
        "Apache Spark), emr, emr_serverless. "
        "Empty: Airflow Variable spindle_backend, else env SPINDLE_BACKEND, else local.",
    )


def _check_inlets() -> list[Any]:
    return [inlet for name in registry.names() for inlet in registry.get(name).check_inlets]


@task(task_id="check_backend", multiple_outputs=True, inlets=_check_inlets())
def check_backend() -> dict[str, Any]:
    """Resolve the backend and validate its settings; fails naming the bad setting. Then the
    backend's own check step (``Backend.on_check``: Data Proc ``strategy: shared`` acquires
    the published cluster here, hence the inlets)."""
    context = get_current_context()
    params = context["params"]
    resolved = config.resolve(params.get("backend"))
    if resolved["backend"] != "local":
        on_check = registry.get(resolved["backend"]).on_check
        if on_check is not None:
            on_check(context, resolved["settings"])
    print(
        f"Backend {resolved['backend']!r} (chosen by {resolved['chosen_by']}); settings:\n"
        + json.dumps(resolved["settings"], indent=2, sort_keys=True)
    )
    return resolved


def _job_kwargs(job: Any) -> dict[str, Any]:
    """What a cloud job task copies from a local :class:`SparkAppJobOperator` (its
    ``pre_execute`` hook too: a job skipped by a run condition is skipped on every lane, and the
    hook sets the task's ``execution_timeout`` from param ``job_timeout_minutes``)."""
    kwargs = {
        "job": job.job,
        "job_args": job.job_args,
        "application_args": job.application_args,
        "executor_cores": job.executor_cores,
        "executor_memory": job.executor_memory,
        "task_cpus": job.task_cpus,
        "driver_memory": job.driver_memory,
        "conf": job.conf,
    }
    if job.execution_timeout is not None:
        kwargs["execution_timeout"] = job.execution_timeout
    pre_execute = getattr(job, "_pre_execute_hook", None)
    if pre_execute is not None:
        kwargs["pre_execute"] = pre_execute
    return kwargs


def single_task_lane(
    check: Any,
    jobs: Sequence[Any],
    model: Any,
    inputs: Any,
    job_kwargs: Callable[[Any], dict[str, Any]],
    *,
    operators: tuple[type, type, type],
    scheme: str = "s3a",
) -> tuple[Any, Any, Any]:
    """:func:`lane` for a backend whose create, job and delete are one operator each (Data Proc,
    Managed Spark): ``operators`` are their classes (create, job, delete)."""
    create_op, job_op, delete_op = operators

    def job_task(job, cluster_id, staged, settings, kwargs):
        run = job_op(task_id=job.task_id, cluster_id=cluster_id, staged=staged, settings=settings, **kwargs)
        return run, run

    return lane(
        check,
        jobs,
        model,
        inputs,
        job_kwargs,
        storage_conn_key="s3_conn_id",
        scheme=scheme,
        create=lambda settings: create_op(task_id="create_cluster", settings=settings),
        job_tasks=job_task,
        delete=lambda cluster_id, settings: delete_op(
            task_id="delete_cluster", cluster_id=cluster_id, settings=settings
        ),
    )


def lane(
    check: Any,
    jobs: Sequence[Any],
    model: Any,
    inputs: Any,
    job_kwargs: Callable[[Any], dict[str, Any]],
    *,
    storage_conn_key: str,
    scheme: str,
    create: Callable[[Any], Any],
    job_tasks: Callable[[Any, Any, Any, Any, dict[str, Any]], tuple[Any, Any]],
    delete: Callable[[Any, Any], Any],
) -> tuple[Any, Any, Any]:
    """The skeleton every cloud lane shares: ``stage`` → ``create`` → the jobs in order →
    ``delete`` as the teardown of ``create``; returns (stage, create, delete).

    :param storage_conn_key: the setting naming the S3 connection the stage task uploads with.
    :param scheme: the URI scheme the cluster reads the bucket with (``s3a``, ``s3``).
    :param create: ``create(settings)`` -> the create task (its output is the cluster id).
    :param job_tasks: ``job_tasks(job, cluster_id, staged, settings, kwargs)`` -> (first, last)
        task of one job (a single task, or submit → wait).
    :param delete: ``delete(cluster_id, settings)`` -> the teardown task.
    """
    from spindle.backends.staging import StageSparkAppsOperator

    settings = check["settings"]
    stage = StageSparkAppsOperator(
        task_id="stage",
        jobs=[j.job for j in jobs],
        settings=settings,
        conn_key=storage_conn_key,
        scheme=scheme,
        model_path=model,
        input_paths=inputs,
    )
    created = create(settings)
    previous = created
    for job in jobs:
        first, last = job_tasks(job, created.output, stage.output, settings, job_kwargs(job))
        previous >> first
        previous = last
    deleted = delete(created.output, settings)
    stage >> created
    previous >> deleted
    deleted.as_teardown(setups=created)
    return stage, created, deleted


def add_backend_lanes(
    *,
    check: Any,
    plan: Any,
    create: Any,
    after: Any = None,
    jobs: Sequence[Any],
    model: Any = None,
    inputs: Any = None,
    backends: Sequence[str] | None = None,
) -> dict[str, TaskGroup]:
    """Add the cloud lanes to the DAG being defined (call it inside ``with DAG(...)``).

    :param check: ``check_backend()`` (must be upstream of everything: the first task).
    :param plan: the DAG's plan task (``check`` goes right before it); the branch runs after it,
        or after ``after`` when given (tasks that must run before any lane, e.g. local prep).
    :param create: the local lane's create task (the branch's ``local`` target).
    :param jobs: the local lane's :class:`SparkAppJobOperator` tasks, in order.
    :param model: XComArg of the local model directory to ship as an archive, a list of them
        (one archive each; a None entry ships nothing), or None.
    :param inputs: XComArg(s) of local input paths to upload (unless ``upload_inputs`` is false).
    :param backends: which cloud lanes to add (default: every backend of the registry).
    """
    backends = registry.names() if backends is None else tuple(backends)
    groups: dict[str, TaskGroup] = {}
    firsts: dict[str, str] = {"local": create.task_id}
    for backend in backends:
        with TaskGroup(group_id=backend, tooltip=registry.get(backend).title) as group:
            stage, _, _ = registry.get(backend).build_lane(check, jobs, model, inputs, _job_kwargs)
        groups[backend] = group
        firsts[backend] = stage.task_id

    @task.branch(task_id="choose_backend")
    def choose_backend(backend: str) -> str:
        """Follow the chosen backend's lane; the others are skipped."""
        print(f"Backend {backend!r}: running {firsts[backend]}")
        return firsts[backend]

    branch = choose_backend(check["backend"])
    check >> plan
    (after if after is not None else plan) >> branch >> create
    for backend in backends:
        branch >> groups[backend]
    return groups
