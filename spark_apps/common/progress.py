"""The job's progress, written by the driver itself to a file or object (``--progress-output``).

On a managed cluster the driver UI is out of Airflow's reach, so a daemon thread of the driver
reads its own UI's stages (``<uiWebUrl>/api/v1/applications/<id>/stages``) every ``interval``
seconds and overwrites one small JSON document there, which the Airflow task reads and logs
(``spindle.spark_progress.BucketProgressPoller``)::

    {"app_id": ..., "started": <epoch s>, "at": <epoch s>, "final": false,
     "stages": [{"stageId", "attemptId", "status", "name", "numTasks", "numCompleteTasks",
                 "numActiveTasks", "numFailedTasks", "inputRecords", "shuffleReadRecords"}]}

Without a UI (``spark.ui.enabled=false``, or it does not answer) the stages come from
``sparkContext.statusTracker()``: the same counts, no rows. One last write when the job ends.
Progress never fails a job: every error is swallowed and logged once, on stderr.
"""

import json
import sys
import threading
import time
import urllib.request

from spark_apps.common import storage

DEFAULT_INTERVAL = 10.0
FIELDS = (
    "stageId",
    "attemptId",
    "status",
    "name",
    "numTasks",
    "numCompleteTasks",
    "numActiveTasks",
    "numFailedTasks",
    "inputRecords",
    "shuffleReadRecords",
)


def ui_stages(sc, timeout=5.0):
    """The stages from the driver's own UI, or None when it has none or it does not answer."""
    url = sc.uiWebUrl
    if not url:
        return None
    try:
        with urllib.request.urlopen(
            f"{url.rstrip('/')}/api/v1/applications/{sc.applicationId}/stages", timeout=timeout
        ) as response:
            data = json.load(response)
    except (OSError, ValueError):
        return None
    if not isinstance(data, list):
        return None
    return [{k: s.get(k) for k in FIELDS if k in s} for s in data if isinstance(s, dict)]


def tracker_stages(sc):
    """The stages of every job the driver still knows, from its status tracker (no rows). A stage
    of ended jobs only that did not run all its tasks was skipped (its shuffle output reused)."""
    tracker = sc.statusTracker()
    active = set(tracker.getActiveStageIds())
    stage_ids, running = set(active), set(active)
    for job_id in tracker.getJobIdsForGroup():
        info = tracker.getJobInfo(job_id)
        if info is not None:
            stage_ids.update(info.stageIds)
            if info.status not in ("SUCCEEDED", "FAILED"):
                running.update(info.stageIds)
    stages = []
    for stage_id in sorted(stage_ids):
        info = tracker.getStageInfo(stage_id)
        if info is None:
            continue
        if stage_id in active:
            status = "ACTIVE"
        elif info.numCompletedTasks >= info.numTasks:
            status = "COMPLETE"
        else:
            status = "PENDING" if stage_id in running else "SKIPPED"
        stages.append(
            {
                "stageId": info.stageId,
                "attemptId": info.currentAttemptId,
                "status": status,
                "name": info.name,
                "numTasks": info.numTasks,
                "numCompleteTasks": info.numCompletedTasks,
                "numActiveTasks": info.numActiveTasks,
                "numFailedTasks": info.numFailedTasks,
            }
        )
    return stages


class ProgressWriter:
    """Writes the progress document every ``interval`` seconds from a daemon thread; use as a
    context manager around the job's body (the exit writes the last document)."""

    def __init__(self, spark, path, interval=DEFAULT_INTERVAL):
        self.spark, self.path, self.interval = spark, path, max(float(interval), 0.1)
        self._stop = threading.Event()
        self._thread = None
        self._failed = False
        self.writes = 0

    def document(self, final=False):
        sc = self.spark.sparkContext
        stages = ui_stages(sc)
        if stages is None:
            stages = tracker_stages(sc)
        return {
            "app_id": sc.applicationId,
            "started": sc.startTime / 1000.0,
            "at": time.time(),
            "final": final,
            "stages": stages,
        }

    def write(self, final=False):
        try:
            storage.write_json(self.spark, self.path, self.document(final))
            self.writes += 1
        except Exception as err:  # noqa: BLE001 - progress never fails the job
            if not self._failed:
                self._failed = True
                print(f"spindle progress: cannot write {self.path}: {err}", file=sys.stderr)

    def _run(self):
        while not self._stop.wait(self.interval):
            self.write()

    def __enter__(self):
        self._thread = threading.Thread(target=self._run, name="spindle-progress", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=30)
        self.write(final=True)
