"""Fixtures of the cloud-backend tests: the same isolated Airflow as ``tests/airflow`` (its
``airflow_testenv`` configures Airflow on import), the local fakes of Yandex Cloud and AWS, and
a runner for the DAGs with a chosen backend.

gRPC reads ``GRPC_DEFAULT_SSL_ROOTS_FILE_PATH`` once, when the process makes its first TLS
channel, so the fake's self-signed certificate is made and named here, at import time.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
for path in (REPO / "tests" / "airflow", REPO, REPO / "plugins"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

import airflow_testenv  # noqa: E402,F401  (configures Airflow before anything imports it)
import pytest  # noqa: E402
from airflow_testenv import SESSION_DIR, SPINDLE_HOME, WAREHOUSE, spark_daemon_pids  # noqa: E402

from tests.fakes.tls import make_self_signed  # noqa: E402

CLOUD_DIR = SESSION_DIR / "cloud"
CERT = make_self_signed(CLOUD_DIR / "tls")
os.environ["GRPC_DEFAULT_SSL_ROOTS_FILE_PATH"] = str(CERT.cert_path)

BUCKET = "spindle-test-bucket"
FOLDER_ID = "b1gspindletests"
OAUTH_TOKEN = "fake-oauth-token"
#: The warehouse of each cloud, in the fake bucket: what the jobs write and load_vectors reads.
WAREHOUSES = {
    "yandex": ("spindle_warehouse_yandex", f"s3a://{BUCKET}/warehouse/yandex"),
    "emr": ("spindle_warehouse_aws", f"s3://{BUCKET}/warehouse/aws"),
    "emr_serverless": ("spindle_warehouse_aws", f"s3://{BUCKET}/warehouse/aws"),
}
#: secrets_source per backend, filled in by the fake fixtures (Lockbox on the Yandex fake,
#: Secrets Manager on moto): the jobs resolve the warehouse connection there, as on a cloud.
SECRETS_SOURCES: dict[str, str] = {}
#: The cluster environment archive cache, kept across test sessions (1-2 min to build).
ENV_CACHE = REPO / ".spindle" / "artifacts" / "env"


def _warehouse_connection(root: str) -> str:
    return json.dumps({"conn_type": "aws", "extra": {"root": root}})


for _conn_id, _root in set(WAREHOUSES.values()):  # the Airflow side's view of the same connections
    os.environ[f"AIRFLOW_CONN_{_conn_id.upper()}"] = _warehouse_connection(_root)


@pytest.fixture(scope="session")
def airflow_db():
    from airflow.utils import db

    db.initdb()


@pytest.fixture(scope="session")
def cloud_dagbag(airflow_db):
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(REPO / "dags"))
    assert not bag.import_errors, bag.import_errors
    return bag


@pytest.fixture(scope="session")
def cluster_environment():
    """The packed cluster environment (``environment: build``), built once into a cache kept
    across sessions; the stage task finds it through ``$SPINDLE_HOME/artifacts/env``."""
    from spindle.backends import environment

    archive = environment.build_archive(ENV_CACHE)
    link = SPINDLE_HOME / "artifacts" / "env"
    link.parent.mkdir(parents=True, exist_ok=True)
    if not link.exists():
        link.symlink_to(ENV_CACHE, target_is_directory=True)
    return archive


@pytest.fixture(scope="session")
def fake_aws():
    pytest.importorskip("moto.server", reason="moto[server] is not installed (requirements-dev.txt pins it)")
    from tests.fakes.aws import FakeAws

    aws = FakeAws(CLOUD_DIR / "aws", worker_cores=2, worker_memory="2g", poll=0.5, log_upload_delay=3).start()
    aws.moto.client("s3").create_bucket(Bucket=BUCKET)
    conn = {"conn_type": "aws", "login": "testing", "password": "testing",
            "extra": {"endpoint_url": aws.endpoint_url, "region_name": "us-east-1"}}  # fmt: skip
    os.environ["AIRFLOW_CONN_AWS_DEFAULT"] = json.dumps(conn)
    os.environ["AIRFLOW_CONN_YANDEX_OBJECT_STORAGE"] = json.dumps(conn)
    conn_id, root = WAREHOUSES["emr"]
    aws.moto.client("secretsmanager").create_secret(Name=f"spindle/{conn_id}", SecretString=_warehouse_connection(root))
    SECRETS_SOURCES["emr"] = SECRETS_SOURCES["emr_serverless"] = "aws-sm://spindle"
    yield aws
    aws.stop()
    assert not aws.runner.clusters.running


@pytest.fixture(scope="session")
def fake_yandex(fake_aws):
    from tests.fakes.yandex_cloud import YandexCloudFake

    yc = YandexCloudFake(CLOUD_DIR / "yandex", s3=fake_aws.moto.s3_settings(), oauth_tokens={OAUTH_TOKEN},
                         certificate=CERT).start()  # fmt: skip
    os.environ["AIRFLOW_CONN_YANDEXCLOUD_DEFAULT"] = json.dumps(
        {"conn_type": "yandexcloud", "extra": {"oauth": OAUTH_TOKEN, "endpoint": yc.endpoint, "folder_id": FOLDER_ID}}
    )
    conn_id, root = WAREHOUSES["yandex"]
    secret_id = yc.add_secret(FOLDER_ID, "spindle-connections", {conn_id: _warehouse_connection(root)})
    SECRETS_SOURCES["yandex"] = (f"lockbox://{secret_id}?endpoint={yc.lockbox_rest_url}"
                                 f"&metadata={yc.metadata_addr}")  # fmt: skip
    yield yc
    yc.stop()
    assert not yc.local_clusters.running


def set_backend_settings(backend: str, **overrides) -> dict:
    """Settings for a backend, pointed at the fakes (env ``AIRFLOW_VAR_SPINDLE_BACKEND_<X>``): the
    bucket is the data plane, the environment is built here and shipped, secrets come from the
    fake cloud's own secret store."""
    base = {"bucket": BUCKET, "environment": "build", "warehouse_conn_id": WAREHOUSES[backend][0],
            "secrets_source": SECRETS_SOURCES.get(backend, "aws-sm://unset"), "log_wait_seconds": 30}  # fmt: skip
    settings = {
        "yandex": {**base, "folder_id": FOLDER_ID, "subnet_id": "e9bspindle", "service_account_id": "ajespindle",
                   "ssh_public_keys": ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFake spindle@test"]},
        "emr": {**base, "step_poke_interval": 3},
        "emr_serverless": {**base, "execution_role_arn": "arn:aws:iam::123456789012:role/spindle", "waiter_delay": 3},
    }[backend]  # fmt: skip
    settings.update(overrides)
    os.environ[f"AIRFLOW_VAR_SPINDLE_BACKEND_{backend.upper()}"] = json.dumps(settings)
    return settings


@pytest.fixture
def no_new_spark_processes():
    before = set(spark_daemon_pids())
    yield
    left = [line for line in spark_daemon_pids() if line not in before]
    assert not left, f"Spark processes left running: {left}"


def run_dag(dagbag, dag_id: str, **conf):
    """Run a DAG in-process; (dag run, {task_id: state})."""
    run = dagbag.dags[dag_id].test(run_conf=conf)
    return run, {ti.task_id: str(ti.state) for ti in run.get_task_instances()}


def run_nightly(dagbag, backend: str, **conf):
    return run_dag(dagbag, "spindle_nightly_books", **{"backend": backend, "limit": 300, "max_age_years": None,
                                                       **conf})  # fmt: skip


def output_uri(backend: str, dag_id: str, run_id: str, name: str) -> str:
    """Where a run's output is: the local warehouse folder, or its object in the fake bucket."""
    from spindle.pipelines import run_prefix

    root = str(WAREHOUSE) if backend == "local" else WAREHOUSES[backend][1]
    return f"{root}/{run_prefix(dag_id, run_id)}/{name}"


def bucket_filesystem():
    """pyarrow's own S3 client on the moto server (independent of Spindle's warehouse code)."""
    import pyarrow.fs as pafs

    endpoint = json.loads(os.environ["AIRFLOW_CONN_AWS_DEFAULT"])["extra"]["endpoint_url"]
    return pafs.S3FileSystem(access_key="testing", secret_key="testing", region="us-east-1",
                             endpoint_override=endpoint.split("://", 1)[1], scheme="http")  # fmt: skip


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
