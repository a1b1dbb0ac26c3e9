"""What a cloud job task sends to its service: the environment and the job's own models through
that service's knobs, user lists merged, the run's spark_conf honoured, metrics located per try,
Data Proc job names the API accepts; and what the stage task uploads (content-addressed, once).

The operators are built as the lanes build them and asked for their spark-submit arguments /
properties; the stage task runs for real against a moto S3 server.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from types import SimpleNamespace

import pytest

from spindle.aws.operators import SpindleEmrAddStepsOperator, SpindleEmrServerlessStartJobOperator, spark_submit_args
from spindle.backends import environment
from spindle.backends.staging import StageSparkAppsOperator
from spindle.yandex.operators import SpindleDataprocPysparkJobOperator, dataproc_job_name

ENV = "s3://b/spindle/artifacts/environments/spindle-env.tar.gz#environment"
TEXT_MODEL, CLIP_MODEL = "/models/minilm", "/models/clip"
STAGED = {
    "bucket": "b",
    "prefix": "spindle",
    "scheme": "s3",
    "jobs": {"embed_text": "s3://b/j/embed_text.py", "prepare_books": "s3://b/j/prepare_books.py"},
    "py_files": ["s3://b/code/spark_apps.zip"],
    "environment": ENV,
    "models": {TEXT_MODEL: "s3://b/m/minilm.tar.gz#model", CLIP_MODEL: "s3://b/m/clip.tar.gz#model2"},
    "rewrites": {TEXT_MODEL: "model", CLIP_MODEL: "model2"},
}
SETTINGS = {
    "aws_conn_id": "aws_default",
    "secrets_source": "aws-sm://spindle",
    "warehouse_conn_id": "wh",
    "spark_properties": {"spark.archives": "s3://b/user/extra.zip#extra", "spark.sql.shuffle.partitions": "7"},
}
CONTEXT = {
    "ti": SimpleNamespace(
        dag_id="spindle_nightly_books",
        task_id="emr.embed_text",
        run_id="manual__2026-12-01T10:00:00+00:00",
        try_number=2,
    )
}


def job(cls, name="embed_text", args=None, **kwargs):
    args = {"input": "runs/x/books.parquet", "model": TEXT_MODEL} if args is None else args
    extra = {"job_flow_id": "j-1"} if cls is SpindleEmrAddStepsOperator else {}
    extra = {"application_id": "app-1"} if cls is SpindleEmrServerlessStartJobOperator else extra
    extra = {"cluster_id": "c-1"} if cls is SpindleDataprocPysparkJobOperator else extra
    return cls(task_id=name, job=name, staged=STAGED, settings=SETTINGS, job_args=args, **extra, **kwargs)


def conf_of(argv):
    return dict(argv[i + 1].split("=", 1) for i, a in enumerate(argv) if a == "--conf")


def test_emr_step_ships_environment_and_only_its_model_through_yarn_knobs():
    spec = job(SpindleEmrAddStepsOperator, conf='{"spark.sql.shuffle.partitions": 9}')
    argv = spark_submit_args(spec)
    archives = argv[argv.index("--archives") + 1].split(",")
    assert archives == [ENV, "s3://b/m/minilm.tar.gz#model", "s3://b/user/extra.zip#extra"]
    conf = conf_of(argv)
    assert conf["spark.yarn.appMasterEnv.PYSPARK_PYTHON"] == environment.PYTHON == "./environment/bin/python"
    assert conf["spark.executorEnv.PYSPARK_PYTHON"] == environment.PYTHON
    assert conf["spark.yarn.appMasterEnv.SPINDLE_SECRETS_SOURCE"] == "aws-sm://spindle"
    assert conf["spark.sql.shuffle.partitions"] == "9"  # the run's spark_conf wins over the settings'
    assert "spark.archives" not in conf and not any(k.startswith("spark.emr-serverless") for k in conf)
    cli = spec.cli_args(CONTEXT)
    assert cli[cli.index("--model") + 1] == "model" and TEXT_MODEL not in cli
    assert cli[cli.index("--metrics-output") + 1] == (
        "s3://b/spindle/metrics/spindle_nightly_books/manual__2026-12-01T10_00_00_00_00/emr.embed_text.try2.json"
    )
    # the job's progress goes next to its metrics, per try (what the wait logs)
    assert cli[cli.index("--progress-output") + 1] == (
        "s3://b/spindle/progress/spindle_nightly_books/manual__2026-12-01T10_00_00_00_00/emr.embed_text.try2.json"
    )


def test_a_job_without_a_model_ships_no_environment():
    spec = job(SpindleEmrAddStepsOperator, name="prepare_books", args={"input": "s3://b/in/dump.txt"})
    argv = spark_submit_args(spec)
    assert argv[argv.index("--archives") + 1] == "s3://b/user/extra.zip#extra"
    assert not any("PYSPARK_PYTHON" in k for k in conf_of(argv))


def test_serverless_uses_driver_env_and_merged_spark_archives():
    spec = job(
        SpindleEmrServerlessStartJobOperator,
        args={"model": CLIP_MODEL, "input": "x"},
        conf={"spark.archives": "s3://b/run/more.zip#more"},
    )
    conf = conf_of(shlex.split(shlex.join(spark_submit_args(spec, conf_style=True))))
    assert conf["spark.archives"].split(",") == [ENV, "s3://b/m/clip.tar.gz#model2", "s3://b/run/more.zip#more"]
    assert conf["spark.emr-serverless.driverEnv.PYSPARK_PYTHON"] == environment.PYTHON
    assert conf["spark.emr-serverless.driverEnv.PYSPARK_DRIVER_PYTHON"] == environment.PYTHON
    assert conf["spark.executorEnv.PYSPARK_PYTHON"] == environment.PYTHON
    assert conf["spark.emr-serverless.driverEnv.SPINDLE_SECRETS_SOURCE"] == "aws-sm://spindle"
    assert not any(k.startswith("spark.yarn.") for k in conf)


def test_dataproc_job_properties_and_name():
    spec = job(SpindleDataprocPysparkJobOperator)
    assert spec.archives()[:2] == [ENV, "s3://b/m/minilm.tar.gz#model"]
    props = spec.spark_properties()
    assert props["spark.yarn.appMasterEnv.PYSPARK_PYTHON"] == environment.PYTHON
    name = dataproc_job_name(CONTEXT["ti"])
    assert re.fullmatch(r"[a-z][-a-z0-9]{1,61}[a-z0-9]", name), name
    other_try = SimpleNamespace(**{**vars(CONTEXT["ti"]), "try_number": 3})
    assert dataproc_job_name(other_try) != name


def test_environment_setting_forms():
    assert environment.check_setting("build") is None and environment.check_setting("provided") is None
    assert environment.check_setting("s3://bucket/envs/spindle-env.tar.gz") is None
    assert "must be" in environment.check_setting("/local/env.tar.gz")
    assert "must be" in environment.check_setting("s3://bucket/envs/folder/")


# --------------------------------------------------------------------------- stage, against moto
@pytest.fixture(scope="module")
def moto_s3(tmp_path_factory):
    import json
    import os

    from tests.fakes.aws import moto_bucket

    with moto_bucket("stage-bucket") as server:
        conn = {
            "conn_type": "aws",
            "login": "testing",
            "password": "testing",
            "extra": {"endpoint_url": server.endpoint_url, "region_name": "us-east-1"},
        }
        os.environ["AIRFLOW_CONN_STAGE_S3"] = json.dumps(conn)
        yield server
        os.environ.pop("AIRFLOW_CONN_STAGE_S3")


def stage(inputs, models, run_id):
    operator = StageSparkAppsOperator(
        task_id="stage",
        jobs=["embed_text"],
        conn_key="s3_conn_id",
        scheme="s3a",
        settings={"bucket": "stage-bucket", "prefix": "p", "s3_conn_id": "stage_s3", "environment": "provided"},
        model_path=models,
        input_paths=inputs,
    )
    return operator.execute({"ti": SimpleNamespace(run_id=run_id, dag_id="d")})


def keys(server):
    listed = server.client("s3").list_objects_v2(Bucket="stage-bucket").get("Contents", [])
    return {o["Key"] for o in listed}


def test_stage_uploads_content_addressed_once(moto_s3, tmp_path):
    dumps = tmp_path / "dumps"
    dumps.mkdir()
    for name, text in (("part-1.txt", "a\n"), ("part-2.txt", "b\n"), ("notes.md", "n")):
        (dumps / name).write_text(text)
    covers = tmp_path / "covers"
    (covers / "x").mkdir(parents=True)
    (covers / "x" / "c.jpg").write_bytes(b"jpg")
    models = []
    for name in ("minilm", "clip"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text('{"name": "%s"}' % name)
        models.append(str(tmp_path / name))
    glob = str(dumps / "part-*.txt")

    first = stage([glob, str(covers)], [*models, None], "run-1")
    assert first["environment"] is None  # 'provided': nothing shipped
    assert list(first["models"].values())[0].endswith("#model") and list(first["models"].values())[1].endswith(
        "#model2"
    )
    assert first["rewrites"][models[0]] == "model" and first["rewrites"][models[1]] == "model2"
    dump_uri, covers_uri = first["rewrites"][glob], first["rewrites"][str(covers)]
    assert dump_uri.startswith("s3a://stage-bucket/p/inputs/") and dump_uri.endswith("/part-*.txt")
    folder = dump_uri[len("s3a://stage-bucket/") :].rsplit("/", 1)[0]
    assert {k for k in keys(moto_s3) if k.startswith(folder)} == {f"{folder}/part-1.txt", f"{folder}/part-2.txt"}
    assert f"{covers_uri[len('s3a://stage-bucket/') :]}/x/c.jpg" in keys(moto_s3)

    uploaded = keys(moto_s3)
    second = stage([glob, str(covers)], [*models, None], "run-2")  # another night, same content
    assert second["rewrites"] == first["rewrites"] and keys(moto_s3) == uploaded

    (dumps / "part-2.txt").write_text("b changed\n")
    third = stage([glob, str(covers)], [*models, None], "run-3")
    assert third["rewrites"][glob] != dump_uri and third["rewrites"][str(covers)] == covers_uri
    assert Path(third["rewrites"][glob]).name == "part-*.txt"
