"""Find what Spindle created (in the clouds and local Spark clusters) that outlived its TTL, and delete it.

Every create is labelled (Data Proc labels, EMR / EMR Serverless tags) with
``spindle-managed=true``, ``spindle-dag``, ``spindle-run``, ``spindle-created`` (epoch seconds)
and ``spindle-ttl-hours``. A resource is *expired* when it is older than its own TTL label (or
than ``ttl_hours`` when the reaper is given one). Only live resources are considered (Data Proc
clusters not being deleted, EMR job flows not terminated, Serverless applications not
terminated). A resource labelled ``spindle-scope=run`` (it serves one DAG run, which deletes it)
is also expired, before its TTL, once it is older than a grace period (env
``SPINDLE_ORPHAN_GRACE_MINUTES``, 15) and its DAG has no queued or running run: nothing will use
or delete it any more (its create task was killed, the run was marked failed and its teardown
skipped, the scheduler died...). Dry run by default: the report says what *would* be deleted; the reaper DAG's
scheduled runs are never dry runs (:func:`is_dry_run`). Each backend's
folder lists and deletes its own resources (``Backend.reap``, see :mod:`.registry`; the local
lane's clusters: :mod:`.local`, no labels but ``state.json``'s ``created_at``); this module
has the verdict (:func:`finding`) and the report.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import asdict, dataclass
from typing import Any

from spindle.backends import registry
from spindle.backends.common import LABEL_CREATED, LABEL_DAG, LABEL_MANAGED, LABEL_RUN, LABEL_SCOPE, LABEL_TTL

ENV_ORPHAN_GRACE_MINUTES = "SPINDLE_ORPHAN_GRACE_MINUTES"

#: ``dag_id -> whether it has a queued or running run`` while a reaper run lasts (set by
#: :func:`reap`; the backends' reapers call :func:`finding` without knowing about it).
_dag_is_active: ContextVar[Callable[[str], bool] | None] = ContextVar("spindle_dag_is_active", default=None)


def orphan_grace_minutes() -> float:
    raw = os.environ.get(ENV_ORPHAN_GRACE_MINUTES, "").strip()
    return float(raw) if raw else 15.0


@contextmanager
def dag_activity(is_active: Callable[[str], bool] | None) -> Iterator[None]:
    token = _dag_is_active.set(is_active)
    try:
        yield
    finally:
        _dag_is_active.reset(token)


def _orphaned(labels: dict[str, str], age_hours: float) -> bool:
    """A run-scoped resource past the grace period whose DAG has no active run."""
    is_active = _dag_is_active.get()
    dag = labels.get(LABEL_DAG)
    if is_active is None or labels.get(LABEL_SCOPE) != "run" or not dag:
        return False
    return age_hours * 60 > orphan_grace_minutes() and not is_active(dag)


@dataclass
class Finding:
    backend: str
    resource_id: str
    name: str
    dag: str
    run: str
    age_hours: float
    ttl_hours: float
    expired: bool
    action: str = "keep"
    error: str | None = None
    reason: str = ""


def finding(
    backend: str, resource_id: str, name: str, labels: dict[str, str], now: float, ttl_override: float | None
) -> Finding | None:
    """The verdict on one resource with these labels; None when Spindle did not create it."""
    if labels.get(LABEL_MANAGED) != "true":
        return None
    try:
        created = float(labels.get(LABEL_CREATED, "0"))
    except ValueError:
        created = 0.0
    try:
        ttl = float(ttl_override if ttl_override is not None else labels.get(LABEL_TTL, "6"))
    except ValueError:
        ttl = 6.0
    age = (now - created) / 3600 if created else float("inf")
    found = Finding(
        backend, resource_id, name, labels.get(LABEL_DAG, ""), labels.get(LABEL_RUN, ""), round(age, 2), ttl, age > ttl
    )
    if found.expired:
        found.reason = "past its TTL"
    elif _orphaned(labels, age):
        found.expired, found.reason = True, "orphan: its DAG has no active run"
    return found


def act_on(found: Finding, dry_run: bool, delete: Callable[..., Any], *args: Any, verb: str = "delete") -> None:
    """Carry out the verdict: an expired resource is deleted with ``delete(*args)`` unless this
    is a dry run; the finding records what was (or would be) done, or the error."""
    if not found.expired:
        return
    past = "terminated" if verb == "terminate" else "deleted"
    found.action = f"would {verb}" if dry_run else past
    if dry_run:
        return
    try:
        delete(*args)
    except Exception as err:
        found.action, found.error = f"{verb} failed", str(err)


def is_dry_run(run_type: str, requested: bool) -> bool:
    """Whether a reaper DAG run only reports: a scheduled run always deletes (its ``dry_run``
    param is ignored); any other run (manual, REST API, asset) does what ``dry_run`` says."""
    return False if getattr(run_type, "value", run_type) == "scheduled" else bool(requested)


def reap(
    backends: list[str],
    dry_run: bool = True,
    ttl_hours: float | None = None,
    now: float | None = None,
    dag_is_active: Callable[[str], bool] | None = None,
) -> dict[str, Any]:
    """Run the reapers of ``backends`` whose settings exist; return the report (and print it).
    ``dag_is_active(dag_id)``: whether the DAG has a queued or running run (the reaper DAG asks
    Airflow); without it, resources are judged by their TTL alone."""
    from airflow.sdk import Variable

    from spindle.backends.config import settings_variable, validate_settings

    now = time.time() if now is None else now
    report: dict[str, Any] = {"dry_run": dry_run, "findings": [], "skipped": {}}
    for backend in backends:
        settings: dict[str, Any] = {}
        if backend != "local":  # the local lane has no settings: always looked at
            variable = settings_variable(backend)
            raw = Variable.get(variable, default=None)
            if raw is None:
                report["skipped"][backend] = f"Airflow Variable {variable!r} is not set"
                continue
            settings = validate_settings(backend, raw, f"Airflow Variable {variable!r}")
        with dag_activity(dag_is_active):
            found = registry.reaper(backend)(settings, dry_run, ttl_hours, now)
        report["findings"] += [asdict(f) for f in found]
    print(format_report(report))
    return report


def format_report(report: dict[str, Any]) -> str:
    mode = "DRY RUN: nothing deleted" if report["dry_run"] else "deleting expired resources"
    lines = [f"Spindle reaper ({mode})"]
    rows = report["findings"]
    if rows:
        lines.append(f"{'backend':<15} {'id':<24} {'age h':>8} {'ttl h':>6}  {'action':<16} dag / run")
        for f in rows:
            lines.append(
                f"{f['backend']:<15} {f['resource_id']:<24} {f['age_hours']:>8} {f['ttl_hours']:>6}  "
                f"{f['action']:<16} {f['dag']} / {f['run']}"
                + (f"  ({f['reason']})" if f.get("reason") else "")
                + (f"  ERROR {f['error']}" if f["error"] else "")
            )
    expired = sum(1 for f in rows if f["expired"])
    lines.append(f"{len(rows)} Spindle resource(s) found, {expired} expired (past their TTL or orphaned).")
    for backend, why in report["skipped"].items():
        lines.append(f"{backend}: skipped ({why})")
    return "\n".join(lines)
