"""spindle.spark_progress: progress lines at a steady interval while a Spark application runs.

Against a fake driver REST API (discovery by port scan, by id and by name, formatting, a driver
that goes away) and against a real local Spark application whose driver UI it has to find."""

from __future__ import annotations

import json
import logging
import re
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from spindle.spark_progress import (
    SparkProgressPoller,
    format_progress,
    parse_stages,
    short_stage_name,
)

from tests.support.progress import ListLog, stage


class FakeDriver:
    """A driver UI's REST API serving the stages set in ``self.stages``."""

    def __init__(self, app_id="app-20260101000000-0007", name="spindle.dag.embed_text") -> None:
        self.app_id, self.name, self.stages, self.requests = app_id, name, [], []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                fake.requests.append(self.path)
                if self.path == "/api/v1/applications":
                    body = [{"id": fake.app_id, "name": fake.name}]
                elif self.path == f"/api/v1/applications/{fake.app_id}/stages":
                    body = fake.stages
                else:
                    self.send_error(404)
                    return
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def driver():
    fake = FakeDriver()
    yield fake
    fake.close()


def test_stage_names_keep_the_file_and_line():
    name = "collect at /tmp/spindle-ui-x/spindle/packages/7e44/spindle_spark_apps.zip/spark_apps/common/warmup.py:42"
    assert short_stage_name(name) == "collect at warmup.py:42"
    assert short_stage_name("save at NativeMethodAccessorImpl.java:0") == "save at NativeMethodAccessorImpl.java:0"
    assert short_stage_name("x" * 100).endswith("...") and len(short_stage_name("x" * 100)) == 60


def test_format_names_stage_tasks_and_rate():
    first = parse_stages("app-1", [stage(0, "COMPLETE", 2, 2, rows=1000), stage(1, "ACTIVE", 1, 4, 2, 500)], 100.0)
    second = parse_stages("app-1", [stage(0, "COMPLETE", 2, 2, rows=1000), stage(1, "ACTIVE", 3, 4, 1, 1500)], 110.0)
    line = format_progress(second, first, started_at=90.0)
    assert line.startswith("Spark progress app-1: stage 1: tasks 3/4 done, 1 running (count at job.py:10) |")
    assert "stages 1/2 done" in line
    assert "2,500 rows, 100 rows/s (avg 125 rows/s)" in line
    assert line.endswith("| 20 s")
    idle = format_progress(parse_stages("app-1", [stage(0, "COMPLETE", 2, 2, rows=10)], 95.0), None, 90.0)
    assert "no stage running | stages 1/1 done | 10 rows (avg 2 rows/s)" in idle


def wait_for(predicate, timeout=60.0, step=0.05):
    """Conditions, not sleeps: this machine is shared, and a loaded CI box stretches every sleep."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return False


def test_finds_the_driver_ui_by_port_scan_and_logs_at_a_steady_interval(driver):
    log = ListLog()
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    base = closed.getsockname()[1]  # a closed port below the driver's, as when 4040 is taken
    closed.close()
    poller = SparkProgressPoller(
        log,
        app_id=lambda: driver.app_id,
        base_port=min(base, driver.port),
        port_retries=abs(driver.port - base),
        interval=0.2,
    )

    def progress():
        return [line for line in log.lines if line.startswith("Spark progress app-")]

    def seen(text):
        return lambda: any(text in line for line in progress())

    driver.stages = [stage(0, "ACTIVE", 0, 4, active=2)]
    with poller:
        assert wait_for(seen("stage 0: tasks 0/4 done, 2 running")), log.lines
        driver.stages = [stage(0, "ACTIVE", 2, 4, active=2, rows=2000)]
        assert wait_for(seen("stage 0: tasks 2/4 done, 2 running")), log.lines
        driver.stages = [stage(0, "COMPLETE", 4, 4, rows=4000), stage(1, "ACTIVE", 0, 1, 1)]
        assert wait_for(seen("stage 1: tasks 0/1 done")), log.lines
        ticks = len(progress())
        assert wait_for(lambda: len(progress()) >= ticks + 2), "no steady ticks: " + repr(log.lines)
    assert poller.ui_url == f"http://127.0.0.1:{driver.port}"
    assert any("stage 1: tasks 0/1 done" in line and "stages 1/2 done" in line for line in progress())
    assert any("rows/s" in line and "4,000 rows" in line for line in progress())
    assert log.lines[-1].startswith(f"Spark progress {driver.app_id}, last seen: stages 1/2 done")


def test_matches_by_name_until_the_id_is_known_and_ignores_other_apps(driver):
    log = ListLog()
    driver.stages = [stage(0, "ACTIVE", 1, 2, 1)]
    by_name = SparkProgressPoller(log, app_name=driver.name, base_port=driver.port, port_retries=0)
    assert by_name.tick() is not None
    other = SparkProgressPoller(log, app_id="app-someone-else", base_port=driver.port, port_retries=0)
    assert other.tick() is None
    wrong_name = SparkProgressPoller(log, app_name="spindle.other.task", base_port=driver.port, port_retries=0)
    assert wrong_name.tick() is None


def test_a_driver_that_goes_away_or_never_comes_fails_nothing():
    fake = FakeDriver()
    fake.stages = [stage(0, "ACTIVE", 1, 2, 1, rows=10)]
    log = ListLog()
    poller = SparkProgressPoller(log, app_id=fake.app_id, ui_url=f"http://127.0.0.1:{fake.port}", interval=0.1)
    with poller:
        assert wait_for(lambda: poller.last is not None)
        fake.close()
        seen = len(log.lines)
        assert wait_for(lambda: len(log.lines) > seen or poller.last is not None)
        time.sleep(0.3)  # a few polls against the closed port: none may raise
    assert poller.last is not None and poller.last.rows == 10
    log2 = ListLog()
    with SparkProgressPoller(
        log2, app_id="app-x", base_port=fake.port, port_retries=0, interval=0.05, give_up_after=0.2
    ):
        assert wait_for(lambda: any("no driver UI of app-x found" in line for line in log2.lines))
    assert log2.lines and "no driver UI of app-x found" in log2.lines[-1]
    assert log2.lines[0].startswith("Spark progress: waiting for the driver UI of app-x")


@pytest.mark.timeout(240)
def test_progress_of_a_real_local_spark_application(tmp_path):
    """A real driver UI: a slow pandas UDF over 4 Parquet files on local[2]; the poller finds the
    UI on its own (port scan from spark.ui.port) and reports the stage's tasks and rows."""
    pytest.importorskip("pyspark")
    from pyspark.sql import SparkSession

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        ui_port = sock.getsockname()[1]
    spark = (
        SparkSession.builder.master("local[2]")
        .appName("spindle.progress.test")
        .config("spark.ui.enabled", "true")  # builder options are shared class state: another test may have set false
        .config("spark.ui.port", str(ui_port))
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.driver.host", "127.0.0.1")
        .config("spark.sql.shuffle.partitions", "2")
        .config("spark.executor.heartbeatInterval", "1s")
        .config("spark.sql.files.openCostInBytes", str(256 << 20))  # one task per file
        .getOrCreate()
    )
    try:
        assert spark.conf.get("spark.ui.port") == str(ui_port), (
            "getOrCreate() returned a session another test left open"
        )
        assert spark.sparkContext.uiWebUrl, "the driver UI is off"
        spark.range(0, 4000, numPartitions=4).write.parquet(str(tmp_path / "rows"))

        release = tmp_path / "release"

        def held(batches):  # each task waits until the test has seen progress, at most 120 s
            for batch in batches:
                deadline = time.monotonic() + 120
                while not release.exists() and time.monotonic() < deadline:
                    time.sleep(0.1)
                yield batch

        df = spark.read.parquet(str(tmp_path / "rows")).mapInPandas(held, "id long")
        log = ListLog()
        poller = SparkProgressPoller(log, app_id=spark.sparkContext.applicationId, base_port=ui_port, interval=0.5)

        def progress():
            return [line for line in log.lines if line.startswith("Spark progress local-")]

        with poller:
            writer = threading.Thread(target=lambda: df.write.format("noop").mode("overwrite").save())
            writer.start()
            running = wait_for(
                lambda: any(re.search(r"stage \d+: tasks 0/4 done, [12] running", line) for line in progress()),
                timeout=120,
            )
            ticks = len(progress())
            steady = wait_for(lambda: len(progress()) >= ticks + 2, timeout=30)
            release.touch()
            writer.join(timeout=180)
            assert wait_for(lambda: poller.last is not None and poller.last.rows > 0, timeout=30), log.lines[-3:]
        assert running, log.lines
        assert steady, log.lines
    finally:
        spark.stop()
    assert any(re.search(r"stage \d+: tasks 4/4 done|stages \d+/\d+ done", line) for line in progress())
    logging.getLogger(__name__).info("\n".join(progress()))
