"""Progress on the cloud lanes: the task logs what the job wrote to the bucket (--progress-output)."""

from __future__ import annotations

import json
import time

from spindle.spark_progress import BucketProgressPoller, bucket_progress

from tests.support.cloud import BUCKET
from tests.support.progress import ListLog, stage

EMBED_STAGE = "mapInPandas at /tmp/x/spindle_spark_apps.zip/spark_apps/jobs/embed_text.py:120"


def test_the_bucket_poller_logs_the_jobs_progress_and_its_last_write(fake_aws):
    s3, key = fake_aws.moto.client("s3"), "spindle/progress/dag/run/emr.embed_text.try1.json"

    def put(at, stages, final=False):
        doc = {"app_id": "application_1_0001", "started": 1000.0, "at": at, "final": final, "stages": stages}
        s3.put_object(Bucket=BUCKET, Key=key, Body=json.dumps(doc).encode())

    log = ListLog()
    poller = BucketProgressPoller(log, uri=f"s3a://{BUCKET}/{key}", aws_conn_id="aws_default", interval=0.1)
    with poller:
        deadline = time.monotonic() + 30
        while not any("waiting for the job" in line for line in log.lines) and time.monotonic() < deadline:
            time.sleep(0.05)
        put(
            1010.0,
            [
                stage(0, "COMPLETE", 1, 1, rows=10, name=EMBED_STAGE),
                stage(1, "ACTIVE", 3, 8, 2, rows=300, name=EMBED_STAGE),
            ],
        )
        while not any(line.startswith("Spark progress application_1_0001:") for line in log.lines):
            assert time.monotonic() < deadline, log.lines
            time.sleep(0.05)
        put(
            1020.0,
            [
                stage(0, "COMPLETE", 1, 1, rows=10, name=EMBED_STAGE),
                stage(1, "COMPLETE", 8, 8, rows=800, name=EMBED_STAGE),
            ],
            final=True,
        )
    progress = [line for line in log.lines if line.startswith("Spark progress application_1_0001")]
    assert progress[0] == (
        "Spark progress application_1_0001: stage 1: tasks 3/8 done, 2 running (mapInPandas at embed_text.py:120)"
        " | stages 1/2 done | 310 rows (avg 31 rows/s) | 10 s"
    )
    # the job's last write is read when the wait ends, however short the job; each document once
    assert progress[-2] == (
        "Spark progress application_1_0001: no stage running | stages 2/2 done | 810 rows, 50 rows/s"
        " (avg 40 rows/s) | 20 s"
    )
    assert progress[-1] == (
        "Spark progress application_1_0001, last seen: stages 2/2 done, 0 failed, tasks 9/9 done, 810 rows in 20 s"
    )
    assert len(progress) == 3


def test_progress_off_or_nowhere_to_read_it_polls_nothing(monkeypatch):
    monkeypatch.setenv("SPINDLE_PROGRESS_INTERVAL", "0")
    assert not isinstance(bucket_progress(ListLog(), "s3://b/p.json", "aws_default"), BucketProgressPoller)
    monkeypatch.setenv("SPINDLE_PROGRESS_INTERVAL", "5")
    assert not isinstance(bucket_progress(ListLog(), None, "aws_default"), BucketProgressPoller)
    assert bucket_progress(ListLog(), "s3://b/p.json", "aws_default").interval == 5
