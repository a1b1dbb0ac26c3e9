"""
### Spindle reaper: delete clusters that outlived their TTL, local and cloud

Lists the local Spark clusters still running (`$SPINDLE_HOME/clusters/<id>/state.json`, TTL: the
`ttl_hours` param, else env `SPINDLE_LOCAL_TTL_HOURS`, else 6 h) and the Data Proc clusters, EMR
job flows and EMR Serverless applications labelled `spindle-managed=true` (every Spindle create is
labelled with its DAG id, run id, creation time and TTL), and marks those older than their
`spindle-ttl-hours` label (or the `ttl_hours` param) as expired; so is, before its TTL, a cluster of a
single run (`spindle-scope=run`, every local cluster) older than 15 minutes
(`SPINDLE_ORPHAN_GRACE_MINUTES`) whose DAG has no queued or running run: an orphan nothing will
use or delete (its create task was killed, its run was marked failed and the teardown skipped). **Scheduled runs delete** the
expired ones (local clusters stopped, Data Proc clusters deleted, EMR job flows terminated,
Serverless applications stopped and deleted), whatever the `dry_run` param says.
**Manual runs are dry runs by default** (`dry_run` defaults to true): the report lists what
would be deleted and nothing is; trigger with `dry_run: false` to delete. Cloud backends whose
settings Variable (`spindle_backend_<name>`) is not set are skipped and reported.

`drop_partial_vectors` does the same for vector versions: a `load_vectors` killed half way and
never re-run leaves a collection marked partial (never behind an alias, never a rollback
target); those older than the TTL (`ttl_hours`, else env `SPINDLE_LOCAL_TTL_HOURS`, else 6 h) are
dropped, with the same dry-run rule.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import DAG, Param, get_current_context, task
from spindle.backends.registry import reaper_names
from spindle.pipelines import task_defaults

with DAG(
    dag_id="spindle_reaper",
    description="Delete Spindle's clusters (local and cloud) past their TTL (manual runs: dry run by default)",
    schedule="*/15 * * * *",  # an orphan lives at most ~30 min (grace + interval)
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    tags=["spindle", "safety"],
    doc_md=__doc__,
    default_args=task_defaults(),  # retries with backoff, failure email (spindle.pipelines)
    params={
        "dry_run": Param(
            True,
            type="boolean",
            title="Dry run",
            description="Manual runs: only report what would be deleted. Scheduled runs always delete.",
        ),
        "backends": Param(
            list(reaper_names()),
            type="array",
            items={"type": "string", "enum": list(reaper_names())},
            minItems=1,
            title="Backends",
            description="Where to look: local (this machine's Spark clusters) and the clouds.",
        ),
        "ttl_hours": Param(
            None,
            type=["null", "number"],
            minimum=0,
            maximum=24 * 365,
            title="TTL override (hours)",
            description="Treat everything older than this as expired (empty: each cloud resource's own TTL "
            "label; local clusters: env SPINDLE_LOCAL_TTL_HOURS, else 6).",
        ),
    },
) as dag:

    @task(task_id="reap")
    def reap_expired() -> dict:
        """List Spindle's local clusters and labelled cloud resources and delete the expired ones: always in a scheduled
        run, in a manual one unless ``dry_run``; the report is printed and returned (XCom)."""
        from spindle.backends.reaper import is_dry_run, reap

        context = get_current_context()
        params = context["params"]
        dry_run = is_dry_run(context["dag_run"].run_type, bool(params["dry_run"]))
        ti = context["ti"]

        def dag_is_active(dag_id: str) -> bool:
            return ti.get_dr_count(dag_id=dag_id, states=["queued", "running"]) > 0

        return reap(
            list(params["backends"]), dry_run=dry_run, ttl_hours=params["ttl_hours"], dag_is_active=dag_is_active
        )

    @task(task_id="drop_partial_vectors")
    def drop_partial_vectors() -> dict:
        """Drop vector versions whose load never completed and that are older than the TTL."""
        import datetime as dt

        from spindle.backends.local import default_ttl_hours
        from spindle.backends.reaper import is_dry_run
        from spindle.vectors.hook import MilvusHook

        context = get_current_context()
        params = context["params"]
        dry_run = is_dry_run(context["dag_run"].run_type, bool(params["dry_run"]))
        hours = params["ttl_hours"] if params["ttl_hours"] is not None else default_ttl_hours()
        with MilvusHook().get_conn() as store:
            found = store.drop_partial(dt.timedelta(hours=hours), dry_run=dry_run)
        names = [info.name for info in found]
        print(f"{'would drop' if dry_run else 'dropped'} {len(names)} partial vector version(s) older than {hours} h")
        for name in names:
            print(f"  {name}")
        return {"dry_run": dry_run, "partial_versions": names}

    reap_expired()
    drop_partial_vectors()
