"""What the progress tests share: a logger that keeps its lines, and one stage as the driver's
monitoring REST API (``/api/v1/applications/<app>/stages``) returns it."""

from __future__ import annotations


class ListLog:
    """A ``logging.Logger`` stand-in that keeps every formatted line."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def info(self, msg, *args) -> None:
        self.lines.append(msg % args if args else msg)

    debug = info


def stage(stage_id, status, done, total, active=0, rows=0, name="count at job.py:10") -> dict:
    return {
        "stageId": stage_id,
        "attemptId": 0,
        "status": status,
        "name": name,
        "numTasks": total,
        "numCompleteTasks": done,
        "numActiveTasks": active,
        "numFailedTasks": 0,
        "inputRecords": rows,
        "shuffleReadRecords": 0,
    }
