"""The ``SPINDLE_METRICS {json}`` line: the one machine-readable result of a job.

The Airflow job operator scans the driver's stdout for it and pushes the JSON to XCom, so a
job prints it exactly once, last, on stdout, flushed.
"""

import json
import sys
import time
from contextlib import contextmanager

PREFIX = "SPINDLE_METRICS "


class Stopwatch:
    """Wall seconds per named stage: ``with watch.stage("write"): ...``."""

    def __init__(self):
        self.started = time.perf_counter()
        self.seconds = {}

    @contextmanager
    def stage(self, name):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = round(self.seconds.get(name, 0.0) + time.perf_counter() - start, 3)

    def total(self):
        return round(time.perf_counter() - self.started, 3)


def format_line(metrics):
    """One line: ``SPINDLE_METRICS`` + compact JSON (sorted keys, so runs diff cleanly)."""
    return PREFIX + json.dumps(metrics, sort_keys=True, separators=(",", ":"), default=str)


def emit(metrics, stream=None):
    stream = stream or sys.stdout
    stream.write(format_line(metrics) + "\n")
    stream.flush()
    return metrics


def parse_line(line):
    """The JSON object of a metrics line, or None for any other line."""
    if not line.startswith(PREFIX):
        return None
    return json.loads(line[len(PREFIX) :])
