"""The cloud fakes behave like managed clusters: nothing from the Airflow machine reaches a job.

Jobs run on the fake managed image (its own Python and Spark 3.5: no torch), read and write
object storage through S3A, get only what they ship through the service's own knobs
(``--archives`` + ``spark.yarn.appMasterEnv.*`` / ``spark.emr-serverless.driverEnv.*``), are
refused when they name a local path, and leave their logs where the services do, late. The Yandex
fake refuses requests that break the protos' validation options.

Uses the session fakes of ``conftest.py`` (one moto server + runner per process: moto's
backends are process-wide, so a second runner would run the same steps).
"""

from __future__ import annotations

import gzip
import json
import subprocess
import tarfile
import time
import uuid

import grpc
import pytest

from tests.fakes.spark_runner import EMR_SERVERLESS, YARN, JobFailed, SparkJob, interpret, refuse_local_paths
from tests.fakes.yc_validation import within
from tests.support.cloud import BUCKET, FOLDER_ID, OAUTH_TOKEN, REPO

pytestmark = pytest.mark.timeout(600)
LOGS = f"s3://{BUCKET}/fake-tests/logs/"
ENV_ARGS = [
    "--conf",
    "spark.yarn.appMasterEnv.PYSPARK_PYTHON=./environment/bin/python",
    "--conf",
    "spark.executorEnv.PYSPARK_PYTHON=./environment/bin/python",
]

TORCH_JOB = """
import torch  # not on a managed image: must be shipped
"""
# Facts about the node the driver runs on, then Parquet through S3A (s3a:// and EMRFS's s3://).
PARQUET_JOB = """
import json, os, sys
import boto3
from pyspark.sql import SparkSession
print("PYTHON", sys.executable)
print("SYSPATH", json.dumps(sys.path + os.environ.get("PYTHONPATH", "").split(os.pathsep)))
print("ENV", sorted(k for k in ("VIRTUAL_ENV", "PYSPARK_DRIVER_PYTHON", "AWS_ENDPOINT_URL", "HF_HUB_OFFLINE")
                    if k in os.environ))
spark = SparkSession.builder.getOrCreate()
bucket = sys.argv[1]
spark.range(100).write.mode("overwrite").parquet(f"s3a://{bucket}/fake-tests/a.parquet")
spark.range(7).write.mode("overwrite").parquet(f"s3://{bucket}/fake-tests/b.parquet")
print("COUNTS", spark.read.parquet(f"s3a://{bucket}/fake-tests/a.parquet").count(),
      spark.read.parquet(f"s3://{bucket}/fake-tests/b.parquet").count())
print("BOTO3", bucket in [b["Name"] for b in boto3.client("s3").list_buckets()["Buckets"]])
spark.stop()
"""
# The shipped environment must be the driver's Python and the executors'.
ENV_JOB = """
import sys
import spindle_marker
from pyspark.sql import SparkSession
spark = SparkSession.builder.getOrCreate()
def probe(_):
    import sys, spindle_marker
    return spindle_marker.WHERE + " " + sys.prefix
print("DRIVER", spindle_marker.WHERE, sys.prefix)
print("EXECUTOR", spark.sparkContext.parallelize([0], 1).map(probe).collect()[0])
spark.stop()
"""


# --------------------------------------------------------------------------- helpers
def _s3(fake_aws):
    return fake_aws.moto.client("s3")


def upload(fake_aws, key: str, body: str | bytes) -> str:
    _s3(fake_aws).put_object(Bucket=BUCKET, Key=key, Body=body.encode() if isinstance(body, str) else body)
    return f"s3://{BUCKET}/{key}"


def read_log(fake_aws, key: str) -> str | None:
    try:
        body = _s3(fake_aws).get_object(Bucket=BUCKET, Key=key)["Body"].read()
    except _s3(fake_aws).exceptions.NoSuchKey:
        return None
    return gzip.decompress(body).decode(errors="replace")


def wait_log(fake_aws, key: str, timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = read_log(fake_aws, key)
        if text is not None:
            return text
        time.sleep(0.5)
    raise AssertionError(f"no log at {key} after {timeout} s")


def run_step(fake_aws, job_flow: str, argv: list[str], timeout: float = 300) -> tuple[str, str, float]:
    """(final state, step id, monotonic time the final state was seen)."""
    emr = fake_aws.moto.client("emr")
    step = {
        "Name": "fake-test",
        "ActionOnFailure": "CONTINUE",
        "HadoopJarStep": {"Jar": "command-runner.jar", "Args": ["spark-submit", *argv]},
    }
    step_id = emr.add_job_flow_steps(JobFlowId=job_flow, Steps=[step])["StepIds"][0]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = emr.describe_step(ClusterId=job_flow, StepId=step_id)["Step"]["Status"]["State"]
        if state not in ("PENDING", "RUNNING"):
            return state, step_id, time.monotonic()
        time.sleep(0.3)
    raise AssertionError(f"step {step_id} still running after {timeout} s")


def step_log(fake_aws, job_flow: str, step_id: str, name: str) -> str:
    return wait_log(fake_aws, f"fake-tests/logs/{job_flow}/steps/{step_id}/{name}", timeout=10)


def container_prefix(job_flow: str, step_stderr: str) -> str:
    app = next(w for w in step_stderr.split() if w.startswith("application_"))
    container = app.replace("application_", "container_", 1) + "_01_000001"
    return f"fake-tests/logs/{job_flow}/containers/{app}/{container}"


def make_env_archive(folder) -> bytes:
    """A tiny packed venv (what venv-pack makes: the venv's contents at the archive's top level,
    ``bin/python`` linking to the base interpreter) holding module ``spindle_marker``."""
    venv = folder / "venv"
    subprocess.run(["/usr/bin/python3", "-m", "venv", "--without-pip", str(venv)], check=True)
    site = next(venv.glob("lib/python3.*")) / "site-packages"
    (site / "spindle_marker.py").write_text('WHERE = "shipped"\n')
    archive = folder / "env.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for entry in sorted(venv.iterdir()):
            tar.add(entry, arcname=entry.name)
    return archive.read_bytes()


@pytest.fixture(scope="module")
def job_flow(fake_aws):
    emr = fake_aws.moto.client("emr")
    flow = emr.run_job_flow(
        Name="fake-tests",
        LogUri=LOGS,
        ReleaseLabel="emr-7.0.0",
        JobFlowRole="r",
        ServiceRole="r",
        Instances={"InstanceCount": 1, "KeepJobFlowAliveWhenNoSteps": True, "MasterInstanceType": "m5.xlarge"},
    )["JobFlowId"]
    yield flow
    emr.terminate_job_flows(JobFlowIds=[flow])
    fake_aws.wait_idle(120)
    assert fake_aws.runner.clusters.running == []


@pytest.fixture(scope="module")
def env_archive(fake_aws, tmp_path_factory):
    return upload(fake_aws, "fake-tests/env.tar.gz", make_env_archive(tmp_path_factory.mktemp("env")))


# --------------------------------------------------------------------------- rules, no Spark
def test_service_rules_pick_the_driver_environment_and_deploy_mode():
    props = {
        "spark.yarn.appMasterEnv.A": "yarn",
        "spark.emr-serverless.driverEnv.A": "serverless",
        "spark.executorEnv.A": "executor",
        "spark.archives": "s3://b/e.tgz#environment",
    }
    client = interpret(SparkJob("s3://b/j.py", properties=props), YARN)
    assert not client.cluster_mode and client.driver_env == {}  # YARN client mode: the AM's env, not the driver's
    assert client.lists["archives"] == ["s3://b/e.tgz#environment"]
    assert client.properties == {"spark.executorEnv.A": "executor"}
    cluster = interpret(SparkJob("s3://b/j.py", properties={**props, "spark.submit.deployMode": "cluster"}), YARN)
    assert cluster.cluster_mode and cluster.driver_env == {"A": "yarn"}
    serverless = interpret(SparkJob("s3://b/j.py", properties=props), EMR_SERVERLESS)
    assert serverless.cluster_mode and serverless.driver_env == {"A": "serverless"}


@pytest.mark.parametrize(
    "job",
    [
        SparkJob("s3://b/j.py", args=["--out", "/tmp/x"]),
        SparkJob("s3://b/j.py", args=["--out=file:///tmp/x"]),
        SparkJob("/home/me/job.py"),
        SparkJob("s3://b/j.py", archives=["file:///env.tgz#environment"]),
    ],
)
def test_local_paths_are_refused(job):
    with pytest.raises(JobFailed, match="a managed cluster cannot read the Airflow machine's files"):
        refuse_local_paths(job, interpret(job, YARN).lists)


def test_relative_and_object_storage_values_pass():
    job = SparkJob("s3://b/j.py", args=["out.parquet", "--n", "3", "s3a://b/in"], py_files=["s3://b/p.zip"])
    refuse_local_paths(job, interpret(job, YARN).lists)


def test_validation_specs():
    assert within(5, "0-100") and not within(101, "0-100")
    assert within(120, "1m-10m") and not within(30, "1m-10m")
    assert within(3, "0,1,3") and not within(2, "0,1,3")
    assert within(50, "<=50") and not within(51, "<=50") and within(1, ">=1")
    assert within(0.5, "0.0-1.0")


# --------------------------------------------------------------------------- EMR on EC2
def test_step_cannot_import_what_the_image_lacks_and_logs_arrive_late(fake_aws, job_flow):
    job = upload(fake_aws, "fake-tests/torch_job.py", TORCH_JOB)
    state, step_id, ended = run_step(fake_aws, job_flow, ["--deploy-mode", "cluster", job])
    assert state == "FAILED"
    stderr = step_log(fake_aws, job_flow, step_id, "stderr.gz")  # the spark-submit client's, at once
    assert "Submitted application application_" in stderr and "final status: FAILED" in stderr
    assert step_log(fake_aws, job_flow, step_id, "stdout.gz") == ""
    prefix = container_prefix(job_flow, stderr)
    if time.monotonic() - ended < fake_aws.runner.log_upload_delay - 1:
        assert read_log(fake_aws, f"{prefix}/stderr.gz") is None, "container logs must be uploaded late"
    wait_log(fake_aws, f"{prefix}/stderr.gz", timeout=fake_aws.runner.log_upload_delay + 15)
    assert time.monotonic() - ended >= fake_aws.runner.log_upload_delay - 1
    # Spark's PythonRunner merges the Python driver's stderr into its stdout (as on YARN).
    assert "ModuleNotFoundError: No module named 'torch'" in read_log(fake_aws, f"{prefix}/stdout.gz")


def test_step_reads_and_writes_parquet_on_object_storage_from_a_scrubbed_node(fake_aws, job_flow):
    job = upload(fake_aws, "fake-tests/parquet_job.py", PARQUET_JOB)
    state, step_id, _ = run_step(fake_aws, job_flow, ["--deploy-mode", "client", job, BUCKET])
    stdout = step_log(fake_aws, job_flow, step_id, "stdout.gz")  # client mode: the driver's own streams
    assert state == "COMPLETED", step_log(fake_aws, job_flow, step_id, "stderr.gz")[-3000:]
    assert "COUNTS 100 7" in stdout and "BOTO3 True" in stdout
    assert "/.spindle/fake-cluster-image/" in stdout.split("PYTHON ", 1)[1].splitlines()[0]
    paths = json.loads(stdout.split("SYSPATH ", 1)[1].splitlines()[0])
    leaked = [p for p in paths if p.startswith(str(REPO / ".venv")) or p in (str(REPO), str(REPO / "plugins"))]
    assert not leaked, f"the Airflow side's paths reached the node: {leaked}"
    assert "ENV ['AWS_ENDPOINT_URL', 'HF_HUB_OFFLINE']" in stdout


def test_step_with_a_local_path_argument_fails_with_a_clear_error(fake_aws, job_flow):
    job = upload(fake_aws, "fake-tests/noop_job.py", "print('never runs')\n")
    state, step_id, _ = run_step(fake_aws, job_flow, ["--deploy-mode", "cluster", job, "/work/main/data/x.csv"])
    assert state == "FAILED"
    expected = (
        "ERROR local path /work/main/data/x.csv in job arguments: a managed cluster cannot read the "
        "Airflow machine's files; stage it to object storage"
    )
    stderr = step_log(fake_aws, job_flow, step_id, "stderr.gz")
    assert expected[len("ERROR ") :] in stderr
    driver = wait_log(fake_aws, f"{container_prefix(job_flow, stderr)}/stderr.gz", timeout=30)
    assert expected in driver


def test_step_with_a_shipped_environment_runs_it_on_driver_and_executors(fake_aws, job_flow, env_archive):
    job = upload(fake_aws, "fake-tests/env_job.py", ENV_JOB)
    argv = ["--deploy-mode", "cluster", "--archives", f"{env_archive}#environment", *ENV_ARGS, job]
    state, step_id, _ = run_step(fake_aws, job_flow, argv)
    stderr = step_log(fake_aws, job_flow, step_id, "stderr.gz")
    stdout = wait_log(fake_aws, f"{container_prefix(job_flow, stderr)}/stdout.gz", timeout=30)
    assert state == "COMPLETED", wait_log(fake_aws, f"{container_prefix(job_flow, stderr)}/stderr.gz")[-3000:]
    assert "DRIVER shipped" in stdout and "/container/environment" in stdout
    assert "EXECUTOR shipped" in stdout


# --------------------------------------------------------------------------- EMR Serverless
def test_serverless_driver_env_selects_the_shipped_python(fake_aws, env_archive):
    client = fake_aws.moto.client("emr-serverless")
    app = client.create_application(name="fake-tests", releaseLabel="emr-7.0.0", type="SPARK")["applicationId"]
    client.start_application(applicationId=app)
    job = upload(fake_aws, "fake-tests/env_job.py", ENV_JOB)
    params = (
        f"--conf spark.archives={env_archive}#environment "
        "--conf spark.emr-serverless.driverEnv.PYSPARK_PYTHON=./environment/bin/python "
        "--conf spark.executorEnv.PYSPARK_PYTHON=./environment/bin/python"
    )
    run = client.start_job_run(
        applicationId=app,
        executionRoleArn="arn:aws:iam::123456789012:role/r",
        name="fake-test",
        jobDriver={"sparkSubmit": {"entryPoint": job, "sparkSubmitParameters": params}},
        configurationOverrides={"monitoringConfiguration": {"s3MonitoringConfiguration": {"logUri": LOGS}}},
    )["jobRunId"]
    try:
        deadline = time.monotonic() + 300
        while client.get_job_run(applicationId=app, jobRunId=run)["jobRun"]["state"] not in ("SUCCESS", "FAILED"):
            assert time.monotonic() < deadline
            time.sleep(0.5)
        state = client.get_job_run(applicationId=app, jobRunId=run)["jobRun"]["state"]
        prefix = f"fake-tests/logs/applications/{app}/jobs/{run}/SPARK_DRIVER"
        stdout = wait_log(fake_aws, f"{prefix}/stdout.gz", timeout=fake_aws.runner.log_upload_delay + 15)
        assert state == "SUCCESS", wait_log(fake_aws, f"{prefix}/stderr.gz")[-3000:]
        assert "DRIVER shipped" in stdout and "EXECUTOR shipped" in stdout
    finally:
        client.stop_application(applicationId=app)
        fake_aws.wait_idle(120)
    assert not [c for c in fake_aws.runner.clusters.running if app.lower() in c]


# --------------------------------------------------------------------------- Yandex Data Proc
def _dataproc_stub(fake_yandex):
    import yandexcloud
    from yandex.cloud.dataproc.v1 import job_service_pb2_grpc

    sdk = yandexcloud.SDK(token=OAUTH_TOKEN, endpoint=fake_yandex.endpoint)
    return sdk, sdk.client(job_service_pb2_grpc.JobServiceStub)


def test_yandex_refuses_a_job_name_the_api_refuses(fake_yandex):
    from yandex.cloud.dataproc.v1 import job_pb2, job_service_pb2

    _, stub = _dataproc_stub(fake_yandex)
    spec = job_pb2.PysparkJob(main_python_file_uri=f"s3a://{BUCKET}/x.py")
    with pytest.raises(grpc.RpcError) as refused:
        stub.Create(
            job_service_pb2.CreateJobRequest(
                cluster_id="c9qmissing", name="spindle.dag.task.manual__2026", pyspark_job=spec
            )
        )
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert refused.value.details().startswith("Request validation error: name: ")
    with pytest.raises(grpc.RpcError) as missing:  # a valid request reaches the handler
        stub.Create(job_service_pb2.CreateJobRequest(cluster_id="c9qmissing", name="spindle-ok", pyspark_job=spec))
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND


def test_yandex_job_runs_in_client_mode_on_the_image(fake_yandex, fake_aws):
    """Through the SDK's Data Proc wrapper (what the provider uses): the request passes
    validation, the driver runs on the master node (image Python, the node's metadata address,
    ``spark.yarn.appMasterEnv`` ignored in client mode) and reads ``s3a://``."""
    sdk, _ = _dataproc_stub(fake_yandex)
    dataproc = sdk.wrappers.Dataproc(default_folder_id=FOLDER_ID)
    dataproc.create_cluster(
        folder_id=FOLDER_ID,
        cluster_name=f"fake-tests-{uuid.uuid4().hex[:6]}",
        subnet_id="e9bspindle",
        service_account_id="ajespindle",
        s3_bucket=BUCKET,
        ssh_public_keys=["ssh-ed25519 AAAA test"],
        masternode_resource_preset="s2.micro",
        datanode_count=1,
        datanode_resource_preset="s2.micro",
    )
    try:
        job = upload(
            fake_aws,
            "fake-tests/yc_job.py",
            (
                "import os, sys\nfrom pyspark.sql import SparkSession\n"
                "spark = SparkSession.builder.getOrCreate()\n"
                f"print('ROWS', spark.read.parquet('s3a://{BUCKET}/fake-tests/a.parquet').count())\n"
                "print('NODE', sys.executable, os.environ.get('YC_METADATA_ADDR'), os.environ.get('MARK'))\n"
            ),
        )
        rows = spark_input(fake_aws)
        try:
            dataproc.create_pyspark_job(
                main_python_file_uri=job.replace("s3://", "s3a://"),
                name="fake-tests-job",
                properties={"spark.yarn.appMasterEnv.MARK": "am"},
            )
        finally:
            (job,) = [j for j in fake_yandex.state.jobs.values() if j.proto.name == "fake-tests-job"]
            log_text = job.running.submit_log_text()
        assert f"ROWS {rows}" in log_text, log_text[-3000:]
        assert "/.spindle/fake-cluster-image/" in log_text and f"{fake_yandex.metadata_addr} None" in log_text
    finally:
        dataproc.delete_cluster()
    assert fake_yandex.live_clusters == []


def spark_input(fake_aws) -> int:
    """Rows of the Parquet file the EMR test wrote (or a fresh one, when run alone)."""
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    keys = [
        o["Key"]
        for o in _s3(fake_aws).list_objects_v2(Bucket=BUCKET, Prefix="fake-tests/a.parquet/").get("Contents", [])
        if o["Key"].endswith(".parquet")
    ]
    if keys:
        return 100
    buffer = io.BytesIO()
    pq.write_table(pa.table({"id": list(range(5))}), buffer)
    upload(fake_aws, "fake-tests/a.parquet/part-0.parquet", buffer.getvalue())
    return 5
