"""The job operator's building blocks: arguments, Spark properties, environment, packaging."""

from __future__ import annotations

import os
import sys
import zipfile

from spindle.operators.spark_app import SparkAppJobOperator, job_args_to_cli
from spindle.pipelines import read_sts_sentences, run_key, run_prefix
from spindle.spark_package import build_spark_apps_package, source_hash

from tests.support.airflow_env import CONNECTIONS_FILE, REPO, WAREHOUSE_SECRET


def test_job_args_to_cli():
    args = {
        "input": "a b",
        "min_pages": 100,
        "languages": ["eng", "fre"],
        "dry_run": True,
        "skip": None,
        "no": "",
    }
    assert job_args_to_cli(args) == [
        "--input",
        "a b",
        "--min-pages",
        "100",
        "--languages",
        "eng",
        "fre",
        "--dry-run",
    ]


def _operator(**kwargs) -> SparkAppJobOperator:
    return SparkAppJobOperator(task_id="t", job="embed_text", cluster_id="c", **kwargs)


def test_conf_from_mapping_or_rendered_json():
    cluster_conf = {"spark.driver.host": "127.0.0.1"}
    conf = _operator(conf='{"spark.task.maxFailures": 1, "spark.x.enabled": true}', task_cpus="2").build_conf(
        cluster_conf
    )
    assert conf["spark.task.maxFailures"] == "1" and conf["spark.x.enabled"] == "true"
    assert conf["spark.task.cpus"] == "2" and conf["spark.driver.host"] == "127.0.0.1"
    assert conf["spark.pyspark.python"] == (os.environ.get("PYSPARK_PYTHON") or sys.executable)
    assert _operator(conf={"spark.a": "b"}).build_conf({})["spark.a"] == "b"
    assert "spark.task.cpus" not in _operator(conf="{}").build_conf({})


def test_job_gets_a_reference_to_the_secrets_never_a_value():
    operator = _operator(job_args={"input": "x"})
    assert operator.build_arguments() == ["--input", "x", "--warehouse-conn-id", "spindle_warehouse"]
    env = operator.build_env()
    assert env["SPINDLE_SECRETS_SOURCE"] == f"file://{CONNECTIONS_FILE}"
    assert WAREHOUSE_SECRET not in repr(env) + repr(operator.build_arguments())
    # the driver imports spark_apps from the shipped package, not from the checkout
    assert str(REPO) not in env["PYTHONPATH"].split(os.pathsep)
    assert "SPINDLE_SECRETS_SOURCE" not in _operator(warehouse_conn_id=None).build_env()


def test_spark_apps_package_is_built_once_per_source_hash(tmp_path):
    package = build_spark_apps_package(cache_dir=tmp_path)
    assert package.suffix == ".zip" and package.parent.name == source_hash()[:16]
    assert package.with_suffix(".whl").exists()  # the wheel itself, for managed clusters
    with zipfile.ZipFile(package) as archive:
        names = archive.namelist()
    assert "spark_apps/__init__.py" in names and "spark_apps/jobs/embed_text.py" in names
    assert not any(name.startswith(("spindle/", "dags/", "tests/")) for name in names)
    mtime = package.stat().st_mtime
    assert build_spark_apps_package(cache_dir=tmp_path) == package and package.stat().st_mtime == mtime


def test_run_paths_are_stable_and_folder_safe():
    run_id = "manual__2026-11-24T16:43:29.004533+00:00"
    assert run_key(run_id) == "manual__2026-11-24T16_43_29.004533_00_00"
    assert run_prefix("spindle_nightly_books", run_id) == f"runs/spindle_nightly_books/{run_key(run_id)}"
    assert run_key("../../etc") == "etc"


def test_sts_sentence_table():
    rows = read_sts_sentences(REPO / "data/samples/stsbenchmark/sts-dev.csv", limit=5)
    assert len(rows) == 5 and len({r["id"] for r in rows}) == 5
    assert rows[0] == {"id": "sts-dev-00001a", "text": "A man with a hard hat is dancing."}
