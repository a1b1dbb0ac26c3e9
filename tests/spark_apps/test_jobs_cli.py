"""The jobs as CLIs: ``python -m spark_apps.jobs.<job> --help`` and a real ``spark-submit
spark_apps/jobs/prepare_books.py`` run from the repository root, with a warehouse connection
resolved inside the job from a secrets file."""

import json
import os
import secrets
import subprocess
import sys
from pathlib import Path

import pyspark
import pytest

from tests.support.spark_apps import EDITIONS, METRICS_PREFIX, REPO

JOBS = {
    "prepare_books": [
        "--quarantine",
        "--languages",
        "--min-pages",
        "--subject",
        "--max-age-years",
        "--reference-year",
        "--limit",
    ],
    "embed_text": [
        "--id-column",
        "--text-column",
        "--model",
        "--model-name",
        "--batch-size",
        "--arrow-batch-size",
        "--partitions",
    ],
    "llm_transform": ["--model", "--prompt-template", "--max-new-tokens", "--output-column", "--batch-size"],
    "embed_images": [
        "--id-column",
        "--cover-id-column",
        "--image-column",
        "--images-dir",
        "--url-template",
        "--model",
        "--timeout",
        "--retries",
        "--fetch-threads",
        "--batch-size",
    ],
}
COMMON = ["--master", "--input", "--output", "--warehouse-conn-id"]


def clean_env(**extra):
    """The environment of a job launched by the Airflow side: the checkout NOT on PYTHONPATH."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "SPINDLE_SECRETS_SOURCE")}
    env.update({"PYSPARK_PYTHON": sys.executable, "PYSPARK_DRIVER_PYTHON": sys.executable}, **extra)
    return env


@pytest.mark.parametrize("job", sorted(JOBS))
def test_help(job):
    result = subprocess.run(
        [sys.executable, "-m", f"spark_apps.jobs.{job}", "--help"],
        cwd=REPO,
        env=clean_env(),
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"usage: {job}")
    for option in COMMON + JOBS[job]:
        assert option in result.stdout, option


def test_spark_submit_prepare_books_with_warehouse_connection(tmp_path):
    password = "pw-" + secrets.token_urlsafe(16)
    warehouse = tmp_path / "warehouse"
    connections = tmp_path / "connections.json"
    connections.write_text(
        json.dumps({"wh": {"conn_type": "fs", "login": "u", "password": password, "extra": {"root": str(warehouse)}}})
    )
    spark_submit = Path(pyspark.__file__).parent / "bin" / "spark-submit"
    result = subprocess.run(
        [
            str(spark_submit),
            "--master",
            "local[1]",
            "--conf",
            "spark.ui.enabled=false",
            "spark_apps/jobs/prepare_books.py",
            "--input",
            str(EDITIONS),
            "--output",
            "run1/books.parquet",
            "--quarantine",
            "run1/quarantine.parquet",
            "--warehouse-conn-id",
            "wh",
            "--max-age-years",
            "40",
            "--reference-year",
            "2026",
        ],
        cwd=REPO,
        env=clean_env(SPINDLE_SECRETS_SOURCE=f"file://{connections}"),
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [line for line in result.stdout.splitlines() if line.startswith(METRICS_PREFIX)]
    assert len(lines) == 1, result.stdout
    metrics = json.loads(lines[0][len(METRICS_PREFIX) :])
    assert (metrics["rows_read"], metrics["rows_kept"], metrics["rows_quarantined"]) == (1000, 12, 0)
    assert metrics["outputs"]["books"] == str(warehouse / "run1" / "books.parquet")
    assert metrics["input"] == str(EDITIONS)  # absolute: not moved under the warehouse root
    assert (warehouse / "run1" / "books.parquet" / "_SUCCESS").exists()
    assert (warehouse / "run1" / "quarantine.parquet" / "_SUCCESS").exists()
    assert password not in result.stdout + result.stderr
