"""Progress people can see: a running Spark application's stages, tasks and rows/s, logged at a
steady interval while a job task waits for spark-submit.

:class:`SparkProgressPoller` runs a daemon thread that reads the driver's monitoring REST API
(``/api/v1/applications/<app id>/stages`` on the driver UI, port ``spark.ui.port``, default 4040,
or the next free one of ``spark.port.maxRetries``) every ``interval`` seconds and logs one line::

    Spark progress app-20261124172023-0001: stage 4: tasks 1/2 done, 1 running (parquet at
    embed_text.py:120) | stages 3/5 done | 8,000 rows, 412 rows/s (avg 236 rows/s) | 34 s

Until the driver's UI answers (JVM and Python start-up) the line says it is waiting.

Rows are the records entering stages (input plus shuffle reads), so a job that reads 1,000 rows
and shuffles them counts 2,000; rows/s is the change since the previous line. Spark updates the
metrics of running tasks with executor heartbeats (every 10 s by default) and at task end.

The driver UI is found by application id (``app_id``: the id, or a callable returning it once the
driver printed it) or, until the id is known, by application name. Nothing here can fail a task:
every error of the poll is swallowed, and a driver that has no UI just yields no progress lines.

On the cloud lanes the driver UI is out of reach: the job writes the same stages to the bucket
itself (``--progress-output``, :mod:`spark_apps.common.progress`) and :class:`BucketProgressPoller`
reads that object instead (same loop, same lines; only :meth:`SparkProgressPoller.poll_once`, the
source of a snapshot, differs).

No Airflow imports (the bucket poller imports the amazon provider's S3 hook when it polls): any
``logging.Logger``-like object (``self.log`` of an operator) will do.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Self

DEFAULT_UI_PORT = 4040
DEFAULT_PORT_RETRIES = 16  # spark.port.maxRetries
DEFAULT_INTERVAL = 15.0
ENV_INTERVAL = "SPINDLE_PROGRESS_INTERVAL"


def default_interval() -> float:
    """Seconds between progress lines: ``$SPINDLE_PROGRESS_INTERVAL`` or 15; 0 turns them off."""
    try:
        return max(0.0, float(os.environ.get(ENV_INTERVAL, DEFAULT_INTERVAL)))
    except ValueError:
        return DEFAULT_INTERVAL


@dataclass
class StageProgress:
    stage_id: int
    attempt_id: int
    status: str
    name: str
    num_tasks: int
    complete: int
    active: int
    failed: int
    rows: int


@dataclass
class ProgressSnapshot:
    """One poll of the application: every stage the driver knows, and the time it was taken."""

    app_id: str
    at: float
    stages: list[StageProgress] = field(default_factory=list)

    @property
    def rows(self) -> int:
        return sum(s.rows for s in self.stages)

    @property
    def active(self) -> list[StageProgress]:
        return [s for s in self.stages if s.status == "ACTIVE"]

    @property
    def done(self) -> int:
        return sum(1 for s in self.stages if s.status in ("COMPLETE", "SKIPPED"))

    @property
    def failed(self) -> int:
        return sum(1 for s in self.stages if s.status == "FAILED")

    @property
    def tasks(self) -> tuple[int, int]:
        """(tasks done, tasks) over the stages that ran (skipped ones run no task)."""
        ran = [s for s in self.stages if s.status != "SKIPPED"]
        return sum(s.complete for s in ran), sum(s.num_tasks for s in ran)


def parse_stages(app_id: str, data: list[dict[str, Any]], at: float) -> ProgressSnapshot:
    """A snapshot from the JSON of ``/api/v1/applications/<id>/stages``."""
    stages = [
        StageProgress(
            stage_id=int(s.get("stageId", -1)),
            attempt_id=int(s.get("attemptId", 0)),
            status=str(s.get("status", "")),
            name=str(s.get("name", "")),
            num_tasks=int(s.get("numTasks", 0)),
            complete=int(s.get("numCompleteTasks", 0)),
            active=int(s.get("numActiveTasks", 0)),
            failed=int(s.get("numFailedTasks", 0)),
            rows=int(s.get("inputRecords", 0)) + int(s.get("shuffleReadRecords", 0)),
        )
        for s in data
        if isinstance(s, dict)
    ]
    stages.sort(key=lambda s: (s.stage_id, s.attempt_id))
    return ProgressSnapshot(app_id=app_id, at=at, stages=stages)


def short_stage_name(name: str, limit: int = 60) -> str:
    """``collect at /tmp/x/pkg.zip/spark_apps/common/warmup.py:42`` -> ``collect at warmup.py:42``."""
    name = re.sub(r" at (?:\S*/)?([^/\s]+)$", r" at \1", name.strip())
    return name if len(name) <= limit else name[: limit - 3] + "..."


def format_progress(snap: ProgressSnapshot, previous: ProgressSnapshot | None, started_at: float) -> str:
    """One human line: what runs now, how far it is, and how fast rows go through."""
    parts = []
    for stage in snap.active or []:
        text = f"stage {stage.stage_id}: tasks {stage.complete}/{stage.num_tasks} done"
        if stage.active:
            text += f", {stage.active} running"
        if stage.failed:
            text += f", {stage.failed} failed"
        parts.append(f"{text} ({short_stage_name(stage.name)})")
    if not parts:
        parts.append("no stage running")
    summary = f"stages {snap.done}/{len(snap.stages)} done"
    if snap.failed:
        summary += f", {snap.failed} failed"
    parts.append(summary)
    elapsed = max(snap.at - started_at, 1e-6)
    rows = f"{snap.rows:,} rows"
    if previous is not None and snap.at > previous.at:
        rows += f", {(snap.rows - previous.rows) / (snap.at - previous.at):,.0f} rows/s"
    rows += f" (avg {snap.rows / elapsed:,.0f} rows/s)"
    parts.append(rows)
    parts.append(f"{elapsed:.0f} s")
    return f"Spark progress {snap.app_id}: " + " | ".join(parts)


def _get_json(url: str, timeout: float) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.load(response)


class SparkProgressPoller:
    """Log a Spark application's progress every ``interval`` seconds from a daemon thread.

    Use as a context manager around the blocking submit::

        with SparkProgressPoller(self.log, app_id=lambda: hook.spark_app_id, app_name=name):
            hook.submit(application)

    :param log: where the lines go (``log.info``).
    :param app_id: the application id, or a callable that returns it (None until known).
    :param app_name: ``spark.app.name``, used to find the driver UI before the id is known.
    :param ui_url: the driver UI (``http://host:port``) when known; otherwise the ports
        ``base_port`` .. ``base_port + port_retries`` on ``host`` are tried.
    :param interval: seconds between lines.
    :param give_up_after: seconds without finding the driver UI after which the poller logs
        once that no progress is available and stops (e.g. ``spark.ui.enabled=false``).
    """

    def __init__(
        self,
        log: Any,
        *,
        app_id: str | Callable[[], str | None] | None = None,
        app_name: str | None = None,
        ui_url: str | None = None,
        host: str = "127.0.0.1",
        base_port: int = DEFAULT_UI_PORT,
        port_retries: int = DEFAULT_PORT_RETRIES,
        interval: float = 15.0,
        give_up_after: float = 120.0,
        timeout: float = 2.0,
    ) -> None:
        self.log = log
        self._app_id = app_id
        self.app_name = app_name
        self.ui_url = ui_url.rstrip("/") if ui_url else None
        self._fixed_ui = ui_url is not None
        self.host = host
        self.base_port = base_port
        self.port_retries = port_retries
        self.interval = interval
        self.give_up_after = give_up_after
        self.timeout = timeout
        self.found_app_id: str | None = None
        self.lines: list[str] = []
        self.last: ProgressSnapshot | None = None
        self.started_at = time.time()
        self._previous: ProgressSnapshot | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    #: read once more when stopped (a source that still holds the end state: the bucket)
    final_poll = False

    # ------------------------------------------------------------------ discovery
    def known_app_id(self) -> str | None:
        value = self._app_id() if callable(self._app_id) else self._app_id
        return value or None

    def _candidates(self) -> list[str]:
        if self.ui_url:
            return [self.ui_url]
        ports = range(self.base_port, self.base_port + self.port_retries + 1)
        return [f"http://{self.host}:{port}" for port in ports]

    def discover(self) -> tuple[str, str] | None:
        """``(driver UI url, app id)`` of our application, or None while it cannot be seen."""
        wanted = self.known_app_id()
        for url in self._candidates():
            try:
                apps = _get_json(f"{url}/api/v1/applications", self.timeout)
            except (OSError, ValueError):
                continue
            for app in apps if isinstance(apps, list) else []:
                app_id, name = app.get("id"), app.get("name")
                if (wanted and app_id == wanted) or (not wanted and self.app_name and name == self.app_name):
                    return url, app_id
        return None

    # ------------------------------------------------------------------ polling
    def poll_once(self) -> ProgressSnapshot | None:
        """Read the stages once (finding the driver UI first if need be); None if not visible."""
        if self.found_app_id is None or (self.ui_url is None):
            found = self.discover()
            if found is None:
                return None
            self.ui_url, self.found_app_id = found
        wanted = self.known_app_id()
        if wanted and wanted != self.found_app_id:  # matched by name first, the id disagrees
            self.found_app_id = None
            if not self._fixed_ui:
                self.ui_url = None
            return None
        app = urllib.parse.quote(self.found_app_id, safe="")
        try:
            data = _get_json(f"{self.ui_url}/api/v1/applications/{app}/stages", self.timeout)
        except (OSError, ValueError):
            return None
        return parse_stages(self.found_app_id, data if isinstance(data, list) else [], time.time())

    def tick(self) -> str | None:
        """Poll and log one line; returns it (None when nothing could be read)."""
        snap = self.poll_once()
        if snap is None:
            return None
        line = format_progress(snap, self._previous, self.started_at)
        self._previous = self.last = snap
        self.lines.append(line)
        self.log.info("%s", line)
        return line

    def _safe_tick(self) -> str | None:
        try:
            return self.tick()
        except Exception as err:  # noqa: BLE001 - progress must never fail the task
            self.log.debug("Spark progress poll failed: %s", err)
            return None

    def _run(self) -> None:
        gave_up = False
        while not self._stop.wait(self.interval):
            line = self._safe_tick()
            waited = time.time() - self.started_at
            if line is None and self.last is None and waited <= self.give_up_after:
                self.log.info(
                    "Spark progress: waiting for the driver UI of %s (%.0f s)",
                    self.known_app_id() or self.app_name or "the application",
                    waited,
                )
            elif line is None and self.last is None and not gave_up:
                self.log.info(
                    "Spark progress: no driver UI of %s found on %s; no progress lines for this job",
                    self.known_app_id() or self.app_name or "the application",
                    self.ui_url or f"{self.host}:{self.base_port}-{self.base_port + self.port_retries}",
                )
                gave_up = True
                return

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> Self:
        self.started_at = time.time()
        self._thread = threading.Thread(target=self._run, name="spark-progress", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.timeout * (self.port_retries + 2) + 1)
        if self.final_poll:
            self._safe_tick()
        if self.last is not None:
            snap = self.last
            self.log.info(
                "Spark progress %s, last seen: stages %d/%d done, %d failed, tasks %d/%d done, %s rows in %.0f s",
                snap.app_id,
                snap.done,
                len(snap.stages),
                snap.failed,
                *snap.tasks,
                f"{snap.rows:,}",
                snap.at - self.started_at,
            )

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class BucketProgressPoller(SparkProgressPoller):
    """The progress a job writes to object storage itself (``--progress-output``), for the cloud
    lanes, whose driver UI Airflow cannot reach. Same loop and lines as the driver-UI poller; a
    line is logged only when the job wrote a newer document, and once more when stopped (the
    job's last write, at its end). Elapsed time is the application's own (``started`` in the
    document): the cluster's clock, never compared with this machine's.

    :param uri: ``s3://``/``s3a://`` URI of the document (:meth:`JobSpec.progress_location`).
    :param aws_conn_id: the lane's S3 connection (the one its metrics are read with).
    """

    final_poll = True

    def __init__(self, log: Any, *, uri: str, aws_conn_id: str | None, interval: float = 15.0) -> None:
        super().__init__(log, interval=interval, give_up_after=float("inf"))
        self.uri, self.aws_conn_id = uri, aws_conn_id
        self._hook: Any = None
        self._waiting_logged = False

    def read(self) -> dict[str, Any] | None:
        """The document, or None while the job has written none."""
        from airflow.providers.amazon.aws.hooks.s3 import S3Hook

        if self._hook is None:
            self._hook = S3Hook(aws_conn_id=self.aws_conn_id)
        bucket, key = S3Hook.parse_s3_url(self.uri.replace("s3a://", "s3://", 1))
        if not self._hook.check_for_key(key, bucket_name=bucket):
            return None
        return json.loads(self._hook.read_key(key, bucket_name=bucket))

    def poll_once(self) -> ProgressSnapshot | None:
        doc = self.read()
        if not isinstance(doc, dict) or not isinstance(doc.get("stages"), list):
            return None
        at = float(doc.get("at") or 0.0)
        if self.last is not None and at <= self.last.at:
            return None  # nothing new since the last line
        if doc.get("started"):
            self.started_at = float(doc["started"])
        self.found_app_id = str(doc.get("app_id") or "")
        return parse_stages(self.found_app_id, doc["stages"], at)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            if self._safe_tick() is None and self.last is None and not self._waiting_logged:
                self._waiting_logged = True
                self.log.info("Spark progress: waiting for the job to write its progress to %s", self.uri)


def bucket_progress(log: Any, uri: str | None, aws_conn_id: str | None, interval: float | None = None) -> Any:
    """A started :class:`BucketProgressPoller` for a cloud job task's wait (a context manager), or a
    no-op one when progress is off (``SPINDLE_PROGRESS_INTERVAL=0``) or the job writes none."""
    import contextlib

    interval = default_interval() if interval is None else interval
    if not uri or interval <= 0:
        return contextlib.nullcontext()
    return BucketProgressPoller(log, uri=uri, aws_conn_id=aws_conn_id, interval=interval)
