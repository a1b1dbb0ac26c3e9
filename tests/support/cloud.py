"""Constants and helpers of the cloud-backend tests (the fixtures that start the fakes are in
``tests/cloud/conftest.py``).

gRPC reads ``GRPC_DEFAULT_SSL_ROOTS_FILE_PATH`` once, when the process makes its first TLS
channel, so the fake's self-signed certificate is made and named here, at import time (the
cloud conftest imports this module while pytest collects, before any test runs).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from tests.fakes.tls import make_self_signed
from tests.support.airflow_env import SESSION_DIR, WAREHOUSE
from tests.support.paths import REPO

CLOUD_DIR = SESSION_DIR / "cloud"
CERT = make_self_signed(CLOUD_DIR / "tls")
os.environ["GRPC_DEFAULT_SSL_ROOTS_FILE_PATH"] = str(CERT.cert_path)

BUCKET = "spindle-test-bucket"
FOLDER_ID = "b1gspindletests"
OAUTH_TOKEN = "fake-oauth-token"
#: The warehouse of each cloud, in the fake bucket: what the jobs write and load_vectors reads.
WAREHOUSES = {
    "yandex": ("spindle_warehouse_yandex", f"s3a://{BUCKET}/warehouse/yandex"),
    "yandex_spark": ("spindle_warehouse_yandex", f"s3a://{BUCKET}/warehouse/yandex"),
    "emr": ("spindle_warehouse_aws", f"s3://{BUCKET}/warehouse/aws"),
    "emr_serverless": ("spindle_warehouse_aws", f"s3://{BUCKET}/warehouse/aws"),
}
#: secrets_source per backend, filled in by the fake fixtures (Lockbox on the Yandex fake,
#: Secrets Manager on moto): the jobs resolve the warehouse connection there, as on a cloud.
SECRETS_SOURCES: dict[str, str] = {}
#: The cluster environment archive cache, kept across test sessions (1-2 min to build).
ENV_CACHE = REPO / ".spindle" / "artifacts" / "env"


def warehouse_connection(root: str) -> str:
    """A warehouse connection (JSON) whose files are under ``root``."""
    return json.dumps({"conn_type": "aws", "extra": {"root": root}})


def set_backend_settings(backend: str, **overrides) -> dict:
    """Settings for a backend, pointed at the fakes (env ``AIRFLOW_VAR_SPINDLE_BACKEND_<X>``): the
    bucket is the data plane, the environment is built here and shipped, secrets come from the
    fake cloud's own secret store."""
    base = {
        "bucket": BUCKET,
        "environment": "build",
        "warehouse_conn_id": WAREHOUSES[backend][0],
        "secrets_source": SECRETS_SOURCES.get(backend, "aws-sm://unset"),
        "log_wait_seconds": 30,
    }
    settings = {
        "yandex": {
            **base,
            "folder_id": FOLDER_ID,
            "subnet_id": "e9bspindle",
            "service_account_id": "ajespindle",
            "ssh_public_keys": ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFake spindle@test"],
        },
        "yandex_spark": {
            **base,
            "folder_id": FOLDER_ID,
            "subnet_ids": ["e9bspindle"],
            "service_account_id": "ajespindle",
            "poll_interval": 2,
        },
        "emr": {**base, "step_poke_interval": 3},
        "emr_serverless": {**base, "execution_role_arn": "arn:aws:iam::123456789012:role/spindle", "waiter_delay": 3},
    }[backend]
    settings.update(overrides)
    os.environ[f"AIRFLOW_VAR_SPINDLE_BACKEND_{backend.upper()}"] = json.dumps(settings)
    return settings


def run_dag(dagbag, dag_id: str, **conf):
    """Run a DAG in-process; (dag run, {task_id: state})."""
    run = dagbag.dags[dag_id].test(run_conf=conf)
    return run, {ti.task_id: str(ti.state) for ti in run.get_task_instances()}


def run_dag_scheduled(dagbag, dag_id: str, **conf):
    """Run a DAG in-process as a *scheduled* run (run_type ``scheduled``, triggered by the
    timetable): ``dag.test()`` only makes manual runs. The tasks run as ``dag.test()`` runs them
    (Airflow's ``_run_task``, the real task runner in process). The DAG must already be in the
    metadata DB (any earlier ``dag.test()`` of it puts it there). (dag run, {task_id: state})."""
    from airflow import settings
    from airflow.models.dagrun import DagRun
    from airflow.sdk import timezone
    from airflow.sdk.definitions.dag import _run_task
    from airflow.serialization.serialized_objects import DagSerialization
    from airflow.utils.state import DagRunState, TaskInstanceState
    from airflow.utils.types import DagRunTriggeredByType, DagRunType

    dag = dagbag.dags[dag_id]
    scheduler_dag = DagSerialization.deserialize_dag(DagSerialization.serialize_dag(dag))
    now = timezone.utcnow()
    session = settings.Session()
    run = scheduler_dag.create_dagrun(
        run_id=DagRun.generate_run_id(run_type=DagRunType.SCHEDULED, logical_date=now, run_after=now),
        logical_date=now,
        data_interval=(now, now),
        run_after=now,
        conf=conf,
        run_type=DagRunType.SCHEDULED,
        triggered_by=DagRunTriggeredByType.TIMETABLE,
        state=DagRunState.RUNNING,
        start_date=now,
        session=session,
    )
    session.commit()
    while run.state == DagRunState.RUNNING:
        session.expire_all()
        schedulable, _ = run.update_state(session=session)
        for ti in schedulable:
            ti.try_number += 1
            ti.state = TaskInstanceState.SCHEDULED
        session.commit()
        scheduled = [ti for ti in run.get_task_instances(session=session) if ti.state == TaskInstanceState.SCHEDULED]
        if not scheduled and run.state == DagRunState.RUNNING:
            break
        for ti in scheduled:
            try:
                _run_task(ti=ti, task=dag.task_dict[ti.task_id])
            except Exception:  # noqa: BLE001, S110 - as dag.test(): the task's state says it
                pass
    return run, {ti.task_id: str(ti.state) for ti in run.get_task_instances(session=session)}


def run_nightly(dagbag, backend: str, **conf):
    return run_dag(dagbag, "spindle_nightly_books", **{"backend": backend, "limit": 300, "max_age_years": None, **conf})


def output_uri(backend: str, dag_id: str, run_id: str, name: str) -> str:
    """Where a run's output is: the local warehouse folder, or its object in the fake bucket."""
    from spindle.pipelines import run_prefix

    root = str(WAREHOUSE) if backend == "local" else WAREHOUSES[backend][1]
    return f"{root}/{run_prefix(dag_id, run_id)}/{name}"


def bucket_filesystem():
    """pyarrow's own S3 client on the moto server (independent of Spindle's warehouse code)."""
    import pyarrow.fs as pafs

    endpoint = json.loads(os.environ["AIRFLOW_CONN_AWS_DEFAULT"])["extra"]["endpoint_url"]
    return pafs.S3FileSystem(
        access_key="testing",
        secret_key="testing",
        region="us-east-1",
        endpoint_override=endpoint.split("://", 1)[1],
        scheme="http",
    )


def read_table(uri: str):
    """A Parquet output (a Spark folder) as pandas, sorted by its first column."""
    import pyarrow.parquet as pq

    if "://" in uri:
        table = pq.read_table(uri.split("://", 1)[1], filesystem=bucket_filesystem())
    else:
        table = pq.read_table(uri)
    frame = table.to_pandas()
    return frame.sort_values(frame.columns[0]).reset_index(drop=True)


def read_bytes(uri: str) -> bytes | None:
    if "://" not in uri:
        path = Path(uri)
        return path.read_bytes() if path.exists() else None
    try:
        with bucket_filesystem().open_input_stream(uri.split("://", 1)[1]) as stream:
            return stream.read()
    except FileNotFoundError:
        return None


def read_embeddings(run_id: str, backend: str = "local"):
    return read_table(output_uri(backend, "spindle_nightly_books", run_id, "embeddings.parquet"))


# --------------------------------------------------------------------------- job operators alone
#: A job that writes the metrics object where the job task reads it, through the cluster's own
#: s3a (the Hadoop FileSystem API: the job has no credentials of its own), then prints a marker.
METRICS_JOB = b"""
import json, sys
from pyspark.sql import SparkSession
uri = sys.argv[sys.argv.index("--metrics-output") + 1]
spark = SparkSession.builder.getOrCreate()
jvm = spark.sparkContext._jvm
path = jvm.org.apache.hadoop.fs.Path(uri)
out = path.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration()).create(path, True)
out.write(bytearray(json.dumps({"job": "metrics_job", "rows": 3}).encode()))
out.close()
print("wrote metrics to", uri)
spark.stop()
"""
#: A job that fails with a traceback.
FAILING_JOB = b"def load():\n    raise ValueError('no such table: books_42')\n\nload()\n"


class TaskInstance:
    """What Spindle's operators read from a task context's task instance (ids, XCom push), for
    driving an operator's ``execute`` / ``execute_complete`` outside a DAG run."""

    def __init__(self, task_id: str, run_id: str = "manual__operator", dag_id: str = "spindle_nightly_books") -> None:
        self.dag_id, self.run_id, self.task_id, self.try_number, self.map_index = dag_id, run_id, task_id, 1, -1
        self.xcom: dict[str, object] = {}

    def xcom_push(self, key: str, value: object) -> None:
        self.xcom[key] = value


def task_context(task_id: str, run_id: str = "manual__operator") -> dict:
    ti = TaskInstance(task_id, run_id)
    return {"ti": ti, "task_instance": ti}


def upload(fake_aws, key: str, body: bytes) -> str:
    """Put ``body`` in the bucket; its ``s3a://`` URI."""
    fake_aws.moto.client("s3").put_object(Bucket=BUCKET, Key=key, Body=body)
    return f"s3a://{BUCKET}/{key}"
