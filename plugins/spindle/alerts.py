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
"""

from __future__ import annotations

import json
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
        from airflow.sdk import BaseHook, Variable

        try:
            connection = BaseHook.get_connection(self.smtp_conn_id)
        except Exception as err:  # noqa: BLE001 - AirflowNotFoundException (core or SDK flavour)
            if "NotFound" not in type(err).__name__:
                raise
            self.log.info("No failure email: connection %r is not configured", self.smtp_conn_id)
            return
        to = recipients(self.to if self.to is not None else Variable.get(RECIPIENTS_VARIABLE, default=None))
        if not to:
            self.log.info("No failure email: Airflow Variable %r names no recipient", RECIPIENTS_VARIABLE)
            return
        from airflow.providers.smtp.notifications.smtp import SmtpNotifier

        from_email = (connection.extra_dejson or {}).get("from_email") or DEFAULT_FROM
        context["spindle_error"] = _redacted(context.get("exception"))
        # A fresh notifier per email: SmtpNotifier renders its templates in place.
        SmtpNotifier(
            to=to,
            from_email=from_email,
            smtp_conn_id=self.smtp_conn_id,
            subject=SUBJECT,
            html_content=HTML,
        )(context)
        ti = context["ti"]
        self.log.info("Failure email for %s.%s sent to %s", ti.dag_id, ti.task_id, ", ".join(to))
