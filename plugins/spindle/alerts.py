"""Failure emails: every task of Spindle's DAGs has :class:`FailureEmail` as ``on_failure_callback``
(``spindle.pipelines.task_defaults``).

It is an Airflow notifier that hands the email to the SMTP provider's own ``SmtpNotifier``,
configured by the connection ``spindle_alerts_smtp`` (type ``smtp``: host, port, login/password,
extra ``from_email``, ``disable_tls``, ``disable_ssl``, ``timeout``, ``retry_limit``) and sent to the
addresses in the Airflow Variable ``spindle_alert_emails`` (comma-separated, or a JSON list). A
missing connection or an unset Variable means no email: one log line says so, the task's state is
unaffected. The callback runs when a task fails for good (after its last retry), in the task's own
process; the email names the DAG, run, task and try, and links the task's log. The connection's
password is only handed to ``smtplib``; Airflow's secrets masker redacts it (and any other
connection secret) in the task log, and the exception text in the email is redacted the same way.

Two more alerts go the same way (same connection, same recipients):

- **drift**: :func:`notify_drift`, called by ``load_vectors`` when the run's manifest flags drift
  (domain-classifier AUC above its threshold), says whether the alias switch was held back
  (param ``hold_alias_on_drift``) and how to approve the held version;
- **deadline**: :func:`run_deadline` gives the DAGs an Airflow deadline alert (``DeadlineAlert``,
  reference: when the run was queued; interval: env ``SPINDLE_RUN_DEADLINE_MINUTES``, unset or
  0 = none). When a run is still going past it, the scheduler queues :func:`deadline_missed` to
  the executor, which emails the DAG, run and deadline. Off by default because Airflow 3.3.2's
  ``dag.test()`` (``airflow dags test``, the demo) fails a *successful* run of a DAG that has a
  deadline (it looks the alert up by an id only the dag processor assigns); the scheduler is
  unaffected. Set the variable on the machines that parse DAGs for scheduled runs.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

from airflow.sdk import BaseNotifier

ALERTS_CONN_ID = "spindle_alerts_smtp"
RECIPIENTS_VARIABLE = "spindle_alert_emails"
#: Sender when the connection has no ``from_email`` extra.
DEFAULT_FROM = "spindle-alerts@localhost"

SUBJECT = "[Spindle] {{ ti.dag_id }}: task {{ ti.task_id }} failed (run {{ ti.run_id }})"
HTML = (
    "<p>A task of a Spindle DAG failed after its last try.</p>"
    "<table>"
    "<tr><td>DAG</td><td>{{ ti.dag_id }}</td></tr>"
    "<tr><td>Run</td><td>{{ ti.run_id }}</td></tr>"
    "<tr><td>Task</td><td>{{ ti.task_id }}</td></tr>"
    "<tr><td>Try</td><td>{{ ti.try_number }} of {{ ti.max_tries + 1 }}</td></tr>"
    "<tr><td>Host</td><td>{{ ti.hostname }}</td></tr>"
    "<tr><td>Error</td><td><pre>{{ spindle_error | e }}</pre></td></tr>"
    '<tr><td>Log</td><td><a href="{{ ti.log_url }}">{{ ti.log_url }}</a></td></tr>'
    "</table>"
)


def recipients(raw: Any) -> list[str]:
    """Addresses from the Variable's value: a JSON list, or a comma/semicolon-separated string."""
    if raw is None:
        return []
    if isinstance(raw, str):
        text = raw.strip()
        if text.startswith("["):
            try:
                raw = json.loads(text)
            except ValueError:
                raw = text
        if isinstance(raw, str):
            raw = raw.replace(";", ",").split(",")
    return [str(address).strip() for address in raw if str(address).strip()]


def _redacted(error: Any) -> str:
    text = (
        "" if error is None else f"{type(error).__name__}: {error}" if isinstance(error, BaseException) else str(error)
    )
    try:
        from airflow.sdk.log import redact

        text = str(redact(text))
    except Exception:  # noqa: BLE001 - the email still goes, unredacted text is never worse than the log's
        pass
    return text[:2000]


class FailureEmail(BaseNotifier):
    """``on_failure_callback``: email the failed task's DAG, run, task and log URL through
    ``SmtpNotifier`` on connection ``smtp_conn_id``; nothing (one log line) when that connection
    does not exist or no recipient is configured.

    :param smtp_conn_id: the SMTP connection (default ``spindle_alerts_smtp``).
    :param to: recipients; default: Airflow Variable ``spindle_alert_emails``.
    """

    def __init__(self, smtp_conn_id: str = ALERTS_CONN_ID, to: list[str] | str | None = None) -> None:
        super().__init__()
        self.smtp_conn_id = smtp_conn_id
        self.to = to

    def notify(self, context: Any) -> None:
        context["spindle_error"] = _redacted(context.get("exception"))
        to = send_email(context, SUBJECT, HTML, "failure", self.smtp_conn_id, self.to, self.log)
        if to:
            ti = context["ti"]
            self.log.info("Failure email for %s.%s sent to %s", ti.dag_id, ti.task_id, ", ".join(to))


def send_email(
    context: Any,
    subject: str,
    html: str,
    what: str,
    smtp_conn_id: str = ALERTS_CONN_ID,
    to: Any = None,
    log: Any = None,
) -> list[str]:
    """Send one email (Jinja ``subject``/``html`` rendered with ``context``) through the SMTP
    provider's ``SmtpNotifier`` on ``smtp_conn_id`` to ``to`` (default: the recipients Variable).
    Returns the recipients; ``[]`` (one log line naming ``what``) when the connection or the
    recipients are missing."""
    import logging

    from airflow.sdk import BaseHook, Variable

    log = log or logging.getLogger(__name__)
    try:
        connection = BaseHook.get_connection(smtp_conn_id)
    except Exception as err:  # noqa: BLE001 - AirflowNotFoundException (core or SDK flavour)
        if "NotFound" not in type(err).__name__:
            raise
        log.info("No %s email: connection %r is not configured", what, smtp_conn_id)
        return []
    to = recipients(to if to is not None else Variable.get(RECIPIENTS_VARIABLE, default=None))
    if not to:
        log.info("No %s email: Airflow Variable %r names no recipient", what, RECIPIENTS_VARIABLE)
        return []
    from airflow.providers.smtp.notifications.smtp import SmtpNotifier

    from_email = (connection.extra_dejson or {}).get("from_email") or DEFAULT_FROM
    # A fresh notifier per email: SmtpNotifier renders its templates in place.
    SmtpNotifier(to=to, from_email=from_email, smtp_conn_id=smtp_conn_id, subject=subject, html_content=html)(context)
    return to


# --------------------------------------------------------------------------- drift
DRIFT_SUBJECT = "[Spindle] {{ ti.dag_id }}: embedding drift above the threshold (run {{ ti.run_id }})"
DRIFT_HTML = (
    "<p>The run's embeddings drifted from the previous version.</p>"
    "<table>"
    "<tr><td>DAG</td><td>{{ ti.dag_id }}</td></tr>"
    "<tr><td>Run</td><td>{{ ti.run_id }}</td></tr>"
    "<tr><td>Classifier AUC</td><td>{{ spindle_drift.classifier_auc }} (threshold {{ spindle_drift.auc_threshold }})</td></tr>"
    "<tr><td>Mean cosine distance</td><td>{{ spindle_drift.mean_cosine_distance }}</td></tr>"
    "<tr><td>MMD&sup2;</td><td>{{ spindle_drift.mmd2_rbf }}</td></tr>"
    "<tr><td>Search</td><td>{{ spindle_search | e }}</td></tr>"
    '<tr><td>Log</td><td><a href="{{ ti.log_url }}">{{ ti.log_url }}</a></td></tr>'
    "</table>"
)


def approve_command(alias: str, collection: str) -> str:
    """The command that approves a held-back version: the alias switch the run did not make."""
    return f"python -m spindle.vectors.versions switch {alias} {collection}"


def notify_drift(context: Any, drift: Mapping[str, Any], held: Mapping[str, str], log: Any = None) -> list[str]:
    """Email that the run drifted; ``held``: alias -> the loaded collection the alias was *not*
    moved to (empty: the aliases moved as usual). Returns the recipients."""
    if held:
        search = "Held back: search keeps serving the previous version. Approve with: " + "; ".join(
            approve_command(alias, collection) for alias, collection in held.items()
        )
    else:
        search = "The alias moved to this version (param hold_alias_on_drift is off)."
    context["spindle_drift"] = dict(drift)
    context["spindle_search"] = search
    return send_email(context, DRIFT_SUBJECT, DRIFT_HTML, "drift", log=log)


# --------------------------------------------------------------------------- deadline
ENV_RUN_DEADLINE = "SPINDLE_RUN_DEADLINE_MINUTES"
DEFAULT_RUN_DEADLINE_MINUTES = 0.0
DEADLINE_SUBJECT = "[Spindle] {{ dag_run.dag_id }}: run {{ dag_run.dag_run_id }} is past its deadline"
DEADLINE_HTML = (
    "<p>A Spindle DAG run is still not finished at its deadline.</p>"
    "<table>"
    "<tr><td>DAG</td><td>{{ dag_run.dag_id }}</td></tr>"
    "<tr><td>Run</td><td>{{ dag_run.dag_run_id }}</td></tr>"
    "<tr><td>Queued at</td><td>{{ dag_run.queued_at }}</td></tr>"
    "<tr><td>Deadline</td><td>{{ deadline.deadline_time }}</td></tr>"
    "<tr><td>State</td><td>{{ dag_run.state }}</td></tr>"
    "</table>"
)


def run_deadline_minutes() -> float:
    """Env ``SPINDLE_RUN_DEADLINE_MINUTES`` (read when the DAG file is parsed): a number >= 0;
    unset or 0 means no deadline (see the module's docstring for why that is the default)."""
    raw = os.environ.get(ENV_RUN_DEADLINE, "").strip()
    try:
        minutes = float(raw) if raw else DEFAULT_RUN_DEADLINE_MINUTES
    except ValueError:
        minutes = -1
    if minutes < 0:
        raise ValueError(f"env {ENV_RUN_DEADLINE}={raw!r}: expected a number of minutes >= 0")
    return minutes


def run_deadline() -> Any:
    """The DAGs' ``deadline``: an Airflow ``DeadlineAlert`` :func:`run_deadline_minutes` after the
    run was queued, calling :func:`deadline_missed` on the executor; None when set to 0."""
    from datetime import timedelta

    from airflow.sdk import DeadlineAlert, DeadlineReference, SyncCallback

    minutes = run_deadline_minutes()
    if not minutes:
        return None
    return DeadlineAlert(
        reference=DeadlineReference.DAGRUN_QUEUED_AT,
        interval=timedelta(minutes=minutes),
        callback=SyncCallback(deadline_missed, kwargs={"smtp_conn_id": ALERTS_CONN_ID}),
        name="spindle_run_deadline",
    )


def deadline_missed(context: Mapping[str, Any], smtp_conn_id: str = ALERTS_CONN_ID) -> list[str]:
    """The deadline alert's callback (run by the executor; ``context`` has ``dag_run`` and
    ``deadline`` as the scheduler recorded them): one email to the recipients Variable."""
    import logging

    log = logging.getLogger(__name__)
    to = send_email(dict(context), DEADLINE_SUBJECT, DEADLINE_HTML, "deadline", smtp_conn_id, log=log)
    run = context.get("dag_run") or {}
    if to:
        log.info("Deadline email for %s run %s sent to %s", run.get("dag_id"), run.get("dag_run_id"), ", ".join(to))
    return to
