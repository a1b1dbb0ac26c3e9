"""One Data Proc cluster shared by several model DAGs (``strategy: shared``), wired with
Airflow 3 assets whose events carry the cluster id in their ``extra``.

The bank's nightly pattern: open one cluster, run every model DAG on it, delete it when the
last model is done. Three parts, three DAGs:

- ``spindle_shared_cluster_open`` creates the cluster (the provider's
  ``DataprocCreateClusterOperator``, labelled ``spindle-shared=true`` plus the usual TTL
  labels) and **publishes** it: an event on :data:`SHARED_CLUSTER` whose extra is
  ``{"cluster_id", "models", "ttl_hours", "created", "opened_by"}``. ``models`` lists the DAG
  ids that will use it (the open run's ``models`` param, default :data:`SHARED_MODEL_DAGS`).
- A model DAG whose Yandex settings say ``strategy: shared`` **acquires** it in its first task
  (``check_backend``, which has :data:`SHARED_CLUSTER` as inlet): the newest event's
  ``cluster_id`` is checked against the Data Proc API (exists, RUNNING, within its TTL, this
  DAG among ``models``) and put into the run's settings; ``create_cluster`` then returns that
  id (no Create call) and every job gets it explicitly as ``create.output``. Its
  ``delete_cluster`` teardown does not delete: it **releases** the cluster, an event on
  :data:`SHARED_CLUSTER_RELEASED` (through the alias :data:`RELEASE_ALIAS`, so create/delete
  and start/stop runs, which use the same teardown task, emit nothing) with extra
  ``{"cluster_id", "dag_id", "run_id"}``. The teardown runs when jobs fail too.
- ``spindle_shared_cluster_close`` runs on every release (and at a daily deadline): a
  reference count. It deletes the published cluster once every DAG in ``models`` has released
  *that* cluster id since it was opened, or unconditionally at the deadline (a scheduled run)
  or with ``force``. Deleting an already deleted cluster is a no-op, so late or repeated close
  runs are harmless. Past both, the reaper's next scheduled run deletes it once its
  ``spindle-ttl-hours`` expire.

Why assets and not cross-DAG XCom: the event is a durable, typed hand-over that the scheduler
understands (the close DAG is *scheduled* on releases; the UI shows producer and consumers),
the consumer reads it with ``inlet_events`` without knowing the producer's run id, and its
``extra`` keeps the id, the model list and the TTL together with who published them. Cross-DAG
XCom would need the producer's dag/run/task ids in every consumer and schedules nothing.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from airflow.sdk import Asset, AssetAlias
from airflow.sdk.exceptions import AirflowFailException

#: Published by ``spindle_shared_cluster_open``: extra ``{"cluster_id", "models", ...}``.
SHARED_CLUSTER = Asset(name="spindle_shared_cluster", uri="spindle://yandex/shared-cluster")
#: One event per model DAG run done with the shared cluster: extra ``{"cluster_id", "dag_id", "run_id"}``.
SHARED_CLUSTER_RELEASED = Asset(name="spindle_shared_cluster_released", uri="spindle://yandex/shared-cluster/released")
#: Outlet of every Data Proc ``delete_cluster`` teardown; only ``strategy: shared`` adds an event.
RELEASE_ALIAS = AssetAlias(name="spindle_shared_cluster_release")
#: The model DAGs that share the cluster unless the open run's ``models`` param says otherwise.
SHARED_MODEL_DAGS = ("spindle_nightly_books", "spindle_llm_transform")
LABEL_SHARED = "spindle-shared"

OPEN_DAG_ID = "spindle_shared_cluster_open"
CLOSE_DAG_ID = "spindle_shared_cluster_close"


class SharedClusterError(AirflowFailException):
    """No usable shared cluster (never opened, deleted, stopped, expired, not for this DAG)."""


def latest_event(inlet_events: Any, asset: Asset = SHARED_CLUSTER) -> Any | None:
    """The newest event of ``asset`` (the task must have it among its inlets), or None."""
    events = inlet_events[asset].ascending(False).limit(1)
    return events[0] if len(events) else None


def _describe(event: Any) -> str:
    extra = event.extra or {}
    return (
        f"published by DAG {event.source_dag_id or '?'} run {event.source_run_id or '?'} at "
        f"{event.timestamp:%Y-%m-%d %H:%M:%S} UTC, models {list(extra.get('models') or [])}"
    )


def _cluster_status(hook: Any, cluster_id: str) -> str | None:
    """The cluster's status name, or None when Data Proc does not know it (deleted)."""
    import grpc
    import yandex.cloud.dataproc.v1.cluster_pb2 as cluster_pb

    try:
        cluster = hook.get_cluster(cluster_id)
    except grpc.RpcError as err:
        if err.code() == grpc.StatusCode.NOT_FOUND:
            return None
        raise
    return cluster_pb.Cluster.Status.Name(cluster.status)


def acquire(inlet_events: Any, settings: Mapping[str, Any], dag_id: str, now: float | None = None) -> dict[str, Any]:
    """Check the newest published shared cluster for ``dag_id``; its publication record.

    Raises :class:`SharedClusterError` (naming the cluster and what to do) when nothing was
    published, or the cluster is gone, not running, past its TTL, or not meant for ``dag_id``.
    """
    from spindle.yandex.hooks import SpindleDataprocHook

    now = time.time() if now is None else now
    event = latest_event(inlet_events)
    if event is None:
        raise SharedClusterError(
            f"strategy 'shared': no shared Data Proc cluster was ever published (asset "
            f"{SHARED_CLUSTER.name!r} has no events); run DAG {OPEN_DAG_ID} first"
        )
    extra = dict(event.extra or {})
    cluster_id = extra.get("cluster_id")
    if not cluster_id:
        raise SharedClusterError(
            f"strategy 'shared': the newest {SHARED_CLUSTER.name!r} event has no "
            f"'cluster_id' in its extra ({_describe(event)})"
        )
    models = list(extra.get("models") or [])
    if dag_id not in models:
        raise SharedClusterError(
            f"strategy 'shared': DAG {dag_id} is not among the models of shared cluster {cluster_id} "
            f"({_describe(event)}); the close DAG would not wait for it. Open the cluster with "
            f"{dag_id} in the 'models' param of {OPEN_DAG_ID}"
        )
    created, ttl_hours = float(extra.get("created") or 0), float(extra.get("ttl_hours") or 0)
    if created and ttl_hours and now > created + ttl_hours * 3600:
        raise SharedClusterError(
            f"strategy 'shared': shared cluster {cluster_id} is past its TTL of {ttl_hours:g} h (opened "
            f"{(now - created) / 3600:.1f} h ago; {_describe(event)}): the reaper may delete it at any "
            f"time; run DAG {OPEN_DAG_ID} to open a new one"
        )
    hook = SpindleDataprocHook(yandex_conn_id=settings["connection_id"])
    status = _cluster_status(hook, cluster_id)
    if status is None:
        raise SharedClusterError(
            f"strategy 'shared': shared cluster {cluster_id} no longer exists (closed or reaped; "
            f"{_describe(event)}); run DAG {OPEN_DAG_ID} to open a new one"
        )
    if status != "RUNNING":
        raise SharedClusterError(
            f"strategy 'shared': shared cluster {cluster_id} is {status}, not RUNNING ({_describe(event)})"
        )
    return {**extra, "cluster_id": cluster_id, "models": models}


def publication(
    cluster_id: str, models: Sequence[str], ttl_hours: float, dag_id: str, run_id: str, now: float | None = None
) -> dict[str, Any]:
    """The extra of a :data:`SHARED_CLUSTER` event."""
    if not cluster_id:
        raise SharedClusterError("the create task returned no cluster id: nothing to publish")
    return {
        "cluster_id": str(cluster_id),
        "models": [str(m) for m in models],
        "ttl_hours": ttl_hours,
        "created": int(time.time() if now is None else now),
        "opened_by": f"{dag_id}/{run_id}",
    }


def release(outlet_events: Any, cluster_id: str, dag_id: str, run_id: str) -> dict[str, Any]:
    """Add a :data:`SHARED_CLUSTER_RELEASED` event (the task must have :data:`RELEASE_ALIAS`
    among its outlets); returns its extra."""
    extra = {"cluster_id": str(cluster_id), "dag_id": dag_id, "run_id": run_id}
    outlet_events[RELEASE_ALIAS].add(SHARED_CLUSTER_RELEASED, extra=extra)
    return extra


def plan_close(
    published: Mapping[str, Any] | None, releases: Iterable[Mapping[str, Any]], force: bool = False
) -> dict[str, Any]:
    """What the close DAG does: ``{"action": "delete" | "wait" | "none", "cluster_id", "pending",
    "released", "reason"}``.

    :param published: the newest :data:`SHARED_CLUSTER` event's extra (None: never opened).
    :param releases: extras of :data:`SHARED_CLUSTER_RELEASED` events since then; only those
        naming the published ``cluster_id`` count (a late release of an older cluster does not).
    :param force: delete even when some models have not released it (deadline, manual).
    """
    if not published or not published.get("cluster_id"):
        return {
            "action": "none",
            "cluster_id": None,
            "pending": [],
            "released": [],
            "reason": "no shared cluster was ever published",
        }
    cluster_id = published["cluster_id"]
    models = list(published.get("models") or [])
    released = sorted({r.get("dag_id") for r in releases if r.get("cluster_id") == cluster_id} - {None})
    pending = [m for m in models if m not in released]
    if not pending:
        action, reason = "delete", f"every model released it: {released}"
    elif force:
        action, reason = "delete", f"forced (deadline or 'force' param) while {pending} had not released it"
    else:
        action, reason = "wait", f"waiting for {pending} to release it (released: {released})"
    return {"action": action, "cluster_id": cluster_id, "pending": pending, "released": released, "reason": reason}


def decide_close(inlet_events: Any, settings: Mapping[str, Any], force: bool) -> str | None:
    """The cluster id to delete now, or None (nothing published, still in use, already gone).
    The task must have :data:`SHARED_CLUSTER` and :data:`SHARED_CLUSTER_RELEASED` as inlets."""
    from spindle.yandex.hooks import SpindleDataprocHook

    event = latest_event(inlet_events)
    releases = []
    if event is not None:
        releases = [e.extra or {} for e in inlet_events[SHARED_CLUSTER_RELEASED].after(event.timestamp)]
    plan = plan_close(event.extra if event is not None else None, releases, force)
    print(f"Shared cluster {plan['cluster_id']}: {plan['action']} ({plan['reason']})")
    if plan["action"] != "delete":
        return None
    status = _cluster_status(SpindleDataprocHook(yandex_conn_id=settings["connection_id"]), plan["cluster_id"])
    if status is None or status == "DELETING":
        print(f"Shared cluster {plan['cluster_id']} is already {'gone' if status is None else 'being deleted'}")
        return None
    return plan["cluster_id"]


def check_none_open(inlet_events: Any, settings: Mapping[str, Any]) -> None:
    """Refuse to open a second shared cluster while the newest published one still runs (the
    model DAGs acquire only the newest, so the older one would never be closed)."""
    from spindle.yandex.hooks import SpindleDataprocHook

    event = latest_event(inlet_events)
    cluster_id = (event.extra or {}).get("cluster_id") if event is not None else None
    if not cluster_id:
        return
    status = _cluster_status(SpindleDataprocHook(yandex_conn_id=settings["connection_id"]), cluster_id)
    if status not in (None, "DELETING", "ERROR"):
        raise SharedClusterError(
            f"shared cluster {cluster_id} is still {status} ({_describe(event)}): close it first "
            f"(DAG {CLOSE_DAG_ID} with force: true) or wait for its models to release it"
        )


def discard_unpublished(cluster_id: str | None, published: Any, settings: Mapping[str, Any]) -> str:
    """Teardown of the open DAG's create: delete the cluster unless it was published."""
    from spindle.yandex.hooks import SpindleDataprocHook

    if not cluster_id:
        return "no cluster was created"
    if published:
        return f"cluster {cluster_id} was published: left running for the model DAGs"
    SpindleDataprocHook(yandex_conn_id=settings["connection_id"]).dataproc_client.delete_cluster(cluster_id)
    print(f"Deleted cluster {cluster_id}: it was created but never published")
    return f"deleted unpublished cluster {cluster_id}"
