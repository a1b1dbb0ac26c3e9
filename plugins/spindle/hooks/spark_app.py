"""spark-submit for ``spark_apps`` jobs: the apache-spark provider's hook, pointed at a cluster
handle instead of an Airflow connection, and reading the driver's output as it streams by.

Reused from :class:`SparkSubmitHook` as is: the command line (``--conf``, ``--py-files``,
``--executor-*``, ``--total-executor-cores``), masking of ``password``/``secret`` values in the
logged command, line-by-line streaming of spark-submit's output into the task log, the error
with the output's tail when spark-submit fails. Changed here: the master comes from the cluster
(``_resolve_connection``), the Spark application id and the ``SPINDLE_METRICS {json}`` line are
picked out of the stream, and ``on_kill`` stops the whole spark-submit process group (the driver
JVM and its Python child) and asks the master to kill the application. When the task process
dies without running ``on_kill`` (SIGKILL, the OOM killer), Linux's parent-death signal stops
spark-submit too (:func:`stop_with_parent`), so no orphaned driver keeps running on the worker.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import os
import re
import signal
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from typing import Any

from airflow.providers.apache.spark.hooks.spark_submit import SparkSubmitHook

from spindle.hooks.local_spark import spark_home

METRICS_PREFIX = "SPINDLE_METRICS "
# Standalone masters name applications app-<yyyyMMddHHmmss>-<counter>.
_APP_ID_RE = re.compile(r"\b(app-\d{14}-\d{4,})\b")


def parse_metrics_line(line: str) -> dict[str, Any] | None:
    """The JSON object of a ``SPINDLE_METRICS {json}`` line, or None for any other line.

    Only the object itself is read: the driver's stdout and the JVM's stderr reach us as one
    stream, and a log line can land right after the object before its newline does."""
    index = line.find(METRICS_PREFIX)
    if index < 0:
        return None
    try:
        value, _ = json.JSONDecoder().raw_decode(line[index + len(METRICS_PREFIX) :].lstrip())
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _prctl() -> Any:
    if not os.uname().sysname == "Linux":
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True).prctl
    except (OSError, AttributeError):
        return None


_PRCTL = _prctl()
_PR_SET_PDEATHSIG = 1


def stop_with_parent() -> None:
    """``preexec_fn`` of spark-submit: SIGTERM it when the process that started it dies (Linux
    ``PR_SET_PDEATHSIG``). Resolved before the fork, so the child only makes one C call."""
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, signal.SIGTERM)


class SparkAppSubmitHook(SparkSubmitHook):
    """:class:`SparkSubmitHook` in client mode against an explicit master URL.

    :param master: e.g. ``spark://127.0.0.1:7077``; no Airflow connection is looked up.
    :param master_ui_url: the cluster's UI, used to find the application when its id did not
        appear in the driver's output and to kill it on ``on_kill``.
    Other keyword arguments go to :class:`SparkSubmitHook`.
    """

    def __init__(self, *, master: str, master_ui_url: str | None = None, **kwargs: Any) -> None:
        # _resolve_connection() runs inside SparkSubmitHook.__init__: set what it reads first.
        self._spindle_master = master
        self.master_ui_url = master_ui_url
        self.spark_app_id: str | None = None
        self.metrics: dict[str, Any] | None = None
        self.submitted_at: float | None = None
        kwargs.setdefault("spark_binary", str(spark_home() / "bin" / "spark-submit"))
        kwargs.setdefault("deploy_mode", "client")
        super().__init__(conn_id="", **kwargs)

    def _resolve_connection(self) -> dict[str, Any]:
        return {
            "master": self._spindle_master,
            "queue": None,
            "deploy_mode": self._deploy_mode,
            "spark_binary": self.spark_binary,
            "namespace": None,
            "principal": self._principal,
            "keytab": self._keytab,
            "rest_scheme": "http",
            "rest_port": 6066,
            "rest_endpoint": None,
        }

    # ------------------------------------------------------------------ output
    def _inspect(self, lines: Iterator[str]) -> Iterator[str]:
        for line in lines:
            if self.spark_app_id is None:
                match = _APP_ID_RE.search(line)
                if match:
                    self.spark_app_id = match.group(1)
            metrics = parse_metrics_line(line)
            if metrics is not None:
                self.metrics = metrics
            yield line

    def _process_spark_submit_log(self, itr: Iterator[Any]) -> None:
        super()._process_spark_submit_log(self._inspect(itr))

    def submit(self, application: str = "", **kwargs: Any) -> str | None:
        # Its own session: on_kill can signal the driver JVM *and* its Python child at once.
        kwargs.setdefault("start_new_session", True)
        # ...and it ends with the task process even when that is SIGKILLed (no on_kill then).
        if _PRCTL is not None:
            kwargs.setdefault("preexec_fn", stop_with_parent)
        self.submitted_at = time.time()
        return super().submit(application, **kwargs)

    # ------------------------------------------------------------------ the master's view
    def _master_json(self) -> dict[str, Any] | None:
        if not self.master_ui_url:
            return None
        try:
            with urllib.request.urlopen(f"{self.master_ui_url}/json/", timeout=3) as response:
                return json.load(response)
        except (OSError, ValueError):
            return None

    def find_application_id(self, app_name: str | None = None) -> str | None:
        """The application id: from the driver's output, else the master's list of applications
        (by name, else the only one started since this submit)."""
        if self.spark_app_id:
            return self.spark_app_id
        status = self._master_json() or {}
        apps = list(status.get("activeapps", [])) + list(status.get("completedapps", []))
        since_ms = (self.submitted_at or 0) * 1000 - 1000
        recent = [a for a in apps if a.get("starttime", 0) >= since_ms]
        named = [a for a in recent if app_name and a.get("name") == app_name]
        candidates = named or recent
        if len(candidates) == 1:
            self.spark_app_id = candidates[0].get("id")
        return self.spark_app_id

    def kill_application(self) -> None:
        """Ask the master to kill the application (``POST /app/kill/``, ``spark.ui.killEnabled``)."""
        if not (self.master_ui_url and self.spark_app_id):
            return
        data = urllib.parse.urlencode({"id": self.spark_app_id, "terminate": "true"}).encode()
        try:
            urllib.request.urlopen(urllib.request.Request(f"{self.master_ui_url}/app/kill/", data=data), timeout=5)
            self.log.info("Asked the master to kill application %s", self.spark_app_id)
        except OSError as err:
            self.log.info("Could not ask the master to kill application %s: %s", self.spark_app_id, err)

    def on_kill(self) -> None:
        """Stop spark-submit's process group (TERM, then KILL after 10 s), then the application."""
        proc = self._submit_sp
        if proc is not None and proc.poll() is None:
            self.log.info("Stopping spark-submit (process group %s)", proc.pid)
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=10)
            except ProcessLookupError:
                pass
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        self.kill_application()
        super().on_kill()
