"""
### Open the shared Data Proc cluster for the nightly models

`check_backend` → `create_cluster` → `publish` (→ `discard_unpublished`, teardown).

One Yandex Data Proc cluster for all nightly model DAGs (the bank's "shared cluster" strategy):
this DAG creates it from the Airflow Variable `spindle_backend_yandex` settings (labelled
`spindle-shared=true`, with the usual DAG/run/TTL labels) and **publishes** its id as an event on
the asset `spindle_shared_cluster`, extra `{"cluster_id", "models", "ttl_hours", "created",
"opened_by"}`. Model DAGs whose settings say `strategy: shared` take the cluster id from that
event in their first task and release it when done; `spindle_shared_cluster_close` deletes it
once every DAG in `models` released it (or at its deadline). See docs/CLOUD_BACKENDS.md.

- Refuses to open a second cluster while the last published one is still running.
- `discard_unpublished` deletes the new cluster only when `publish` did not succeed, so a failed
  open leaks nothing; a published cluster is left running for the model DAGs.

Schedule: none by default; set env `SPINDLE_SHARED_CLUSTER_SCHEDULE` (a cron expression, e.g.
`30 1 * * *`, before the nightly DAG's 02:00) where the deployment uses the shared strategy.
"""

from __future__ import annotations

import os

import pendulum
from airflow.sdk import DAG, Param, get_current_context, task
from spindle.backends import config
from spindle.yandex import shared
from spindle.yandex.shared import LABEL_SHARED, SHARED_CLUSTER, SHARED_MODEL_DAGS
from spindle.yandex.operators import SpindleDataprocCreateClusterOperator
from spindle.pipelines import task_defaults

with DAG(
    dag_id=shared.OPEN_DAG_ID,
    description="Create the Data Proc cluster the nightly model DAGs share and publish its id (asset)",
    schedule=os.environ.get("SPINDLE_SHARED_CLUSTER_SCHEDULE") or None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    tags=["spindle", "yandex", "shared-cluster"],
    doc_md=__doc__,
    default_args=task_defaults(),  # retries with backoff, failure email (spindle.pipelines)
    params={
        "models": Param(
            list(SHARED_MODEL_DAGS),
            type="array",
            items={"type": "string", "pattern": "^[A-Za-z0-9_.-]{1,250}$"},
            minItems=1,
            uniqueItems=True,
            title="Model DAGs",
            description="DAG ids that use this cluster (strategy: shared); the close DAG deletes it "
            "once each of them released it.",
        ),
        "ttl_hours": Param(
            None,
            type=["null", "number"],
            exclusiveMinimum=0,
            maximum=72,
            title="TTL (hours)",
            description="The cluster's spindle-ttl-hours label and the model DAGs' staleness limit "
            "(empty: the setting ttl_hours).",
        ),
    },
) as dag:

    @task(task_id="check_backend", inlets=[SHARED_CLUSTER])
    def check_backend() -> dict:
        """Validate the Data Proc settings and refuse to open a second shared cluster."""
        context = get_current_context()
        settings = config.resolve("yandex")["settings"]
        if context["params"]["ttl_hours"] is not None:
            settings["ttl_hours"] = context["params"]["ttl_hours"]
        shared.check_none_open(context["inlet_events"], settings)
        return settings

    settings = check_backend()
    create = SpindleDataprocCreateClusterOperator(
        task_id="create_cluster", settings=settings, strategy="create_delete", labels={LABEL_SHARED: "true"}
    )

    @task(task_id="publish", outlets=[SHARED_CLUSTER])
    def publish(cluster_id: str, settings: dict) -> dict:
        """The event the model DAGs acquire the cluster from (its extra), also returned."""
        context = get_current_context()
        ti = context["ti"]
        extra = shared.publication(cluster_id, context["params"]["models"], settings["ttl_hours"], ti.dag_id, ti.run_id)
        context["outlet_events"][SHARED_CLUSTER].extra = extra
        print(f"Published shared Data Proc cluster {cluster_id}: {extra}")
        return extra

    @task(task_id="discard_unpublished")
    def discard_unpublished(cluster_id: str | None, settings: dict) -> str:
        """Teardown: delete the cluster when it was not published (the open failed)."""
        ti = get_current_context()["ti"]
        return shared.discard_unpublished(cluster_id, ti.xcom_pull(task_ids="publish"), settings)

    published = publish(create.output, settings)
    discard = discard_unpublished(create.output, settings)
    published >> discard
    discard.as_teardown(setups=create)
