"""
### Close the shared Data Proc cluster when the last model DAG released it

`plan_close` (short-circuit) → `check_backend` → `delete_cluster`.

Scheduled on the asset `spindle_shared_cluster_released` (every model DAG run with
`strategy: shared` releases the cluster in its `delete_cluster` teardown, failed runs too) **or**
a daily deadline. A reference count, not `Asset.all(...)`: each run compares the DAGs listed in
the newest `spindle_shared_cluster` event (`models`) with the releases of *that* cluster id since
it was published, and deletes the cluster with the provider's `DataprocDeleteClusterOperator`
only when none is pending. The deadline run (a scheduled run) and `force: true` delete it
anyway. A cluster that is already gone is not deleted twice. Anything still alive after that is
found by `spindle_reaper` through its `spindle-ttl-hours` label.

Deadline: env `SPINDLE_SHARED_CLUSTER_DEADLINE` (cron, default `0 9 * * *` UTC).
"""

from __future__ import annotations

import os

import pendulum
from airflow.sdk import DAG, AssetOrTimeSchedule, CronTriggerTimetable, Param, get_current_context, task
from spindle.backends import config
from spindle.yandex import shared
from spindle.yandex.shared import SHARED_CLUSTER, SHARED_CLUSTER_RELEASED
from spindle.yandex.operators import SpindleDataprocDeleteClusterOperator
from spindle.pipelines import task_defaults

DEADLINE = os.environ.get("SPINDLE_SHARED_CLUSTER_DEADLINE") or "0 9 * * *"

with DAG(
    dag_id=shared.CLOSE_DAG_ID,
    description="Delete the shared Data Proc cluster once every model DAG released it (or at the deadline)",
    schedule=AssetOrTimeSchedule(
        timetable=CronTriggerTimetable(DEADLINE, timezone="UTC"), assets=SHARED_CLUSTER_RELEASED
    ),
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    tags=["spindle", "yandex", "shared-cluster"],
    doc_md=__doc__,
    default_args=task_defaults(),  # retries with backoff, failure email (spindle.pipelines)
    params={
        "force": Param(
            False,
            type="boolean",
            title="Force",
            description="Delete the shared cluster even if some model DAGs have not released it "
            "(scheduled deadline runs always do).",
        ),
    },
) as dag:

    @task.short_circuit(task_id="plan_close", inlets=[SHARED_CLUSTER, SHARED_CLUSTER_RELEASED])
    def plan_close() -> str | None:
        """The published cluster's id when it is to be deleted now; otherwise skip the rest."""
        context = get_current_context()
        deadline = context["dag_run"].run_type == "scheduled"  # the cron deadline, not a release
        force = bool(context["params"]["force"]) or deadline
        inlet_events = context["inlet_events"]
        if shared.latest_event(inlet_events) is None:
            print("No shared cluster was ever published: nothing to close")
            return None
        settings = config.resolve("yandex")["settings"]
        return shared.decide_close(inlet_events, settings, force=force)

    @task(task_id="check_backend")
    def check_backend() -> dict:
        """The Data Proc settings (connection) of the delete."""
        return config.resolve("yandex")["settings"]

    cluster_id = plan_close()
    settings = check_backend()
    delete = SpindleDataprocDeleteClusterOperator(
        task_id="delete_cluster", cluster_id=cluster_id, settings=settings, strategy="create_delete", outlets=[]
    )
    cluster_id >> settings >> delete
