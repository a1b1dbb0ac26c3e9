"""The reaper of the local lane: Spark standalone clusters under ``$SPINDLE_HOME/clusters``.

A local cluster records ``created_at`` (and who created it: ``labels`` ``dag``, ``run``) in its
``state.json`` (:mod:`spindle.hooks.local_spark`). One that is not deleted (status ``RUNNING``,
``STARTING`` or ``FAILED``) and older than the TTL is expired; deleting it stops its processes
(``LocalSparkClusterHook.delete_cluster``: idempotent, verifies they are gone) and keeps its logs.
The TTL: the reaper's ``ttl_hours`` when given, else env ``SPINDLE_LOCAL_TTL_HOURS``, else 6 hours.
Before its TTL, a cluster whose DAG has no active run is an orphan and deleted too (:mod:`.reaper`).
Local clusters have no settings Variable: the reaper always looks at them.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from spindle.backends.common import LABEL_CREATED, LABEL_DAG, LABEL_MANAGED, LABEL_RUN, LABEL_SCOPE, LABEL_TTL

ENV_TTL_HOURS = "SPINDLE_LOCAL_TTL_HOURS"
DEFAULT_TTL_HOURS = 6.0


def default_ttl_hours() -> float:
    raw = os.environ.get(ENV_TTL_HOURS, "").strip()
    try:
        return float(raw) if raw else DEFAULT_TTL_HOURS
    except ValueError:
        raise ValueError(f"env {ENV_TTL_HOURS}={raw!r} is not a number of hours") from None


def _epoch(created_at: str) -> str:
    try:
        return str(datetime.fromisoformat(created_at).timestamp())
    except (TypeError, ValueError):
        return "0"  # unknown age: counted as expired


def reap(settings: Mapping[str, Any], dry_run: bool, ttl_override: float | None, now: float) -> list[Any]:
    """Findings for the local clusters that are not deleted; the expired ones are deleted
    unless ``dry_run`` (same signature as the cloud backends' ``reap``; ``settings`` unused)."""
    from spindle.backends.reaper import act_on, finding
    from spindle.hooks.local_spark import LocalSparkClusterHook

    hook = LocalSparkClusterHook()
    ttl = default_ttl_hours()
    findings = []
    for cluster in hook.list_clusters():
        if cluster.status == "DELETED":
            continue
        labels = {
            LABEL_MANAGED: "true",
            LABEL_CREATED: _epoch(cluster.created_at),
            LABEL_TTL: str(ttl),
            LABEL_DAG: cluster.labels.get("dag", ""),
            LABEL_RUN: cluster.labels.get("run", ""),
            LABEL_SCOPE: "run",  # a local cluster always belongs to the run that created it
        }
        found = finding("local", cluster.cluster_id, cluster.cluster_id, labels, now, ttl_override)
        act_on(found, dry_run, hook.delete_cluster, cluster.cluster_id)
        findings.append(found)
    return findings
