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
from airflow_testenv import CONNECTIONS_FILE, SESSION_DIR, WAREHOUSE, spark_daemon_pids  # noqa: E402

from tests.fakes.tls import make_self_signed  # noqa: E402

CLOUD_DIR = SESSION_DIR / "cloud"
CERT = make_self_signed(CLOUD_DIR / "tls")
os.environ["GRPC_DEFAULT_SSL_ROOTS_FILE_PATH"] = str(CERT.cert_path)

BUCKET = "spindle-test-bucket"
FOLDER_ID = "b1gspindletests"
OAUTH_TOKEN = "fake-oauth-token"
SECRETS_SOURCE = "file://" + str(CONNECTIONS_FILE)


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
def fake_aws():
    pytest.importorskip("moto.server", reason="moto[server] is not installed (requirements-dev.txt pins it)")
    from tests.fakes.aws import FakeAws

    aws = FakeAws(CLOUD_DIR / "aws", worker_cores=2, worker_memory="2g", poll=0.5).start()
    aws.moto.client("s3").create_bucket(Bucket=BUCKET)
    conn = {"conn_type": "aws", "login": "testing", "password": "testing",
            "extra": {"endpoint_url": aws.endpoint_url, "region_name": "us-east-1"}}  # fmt: skip
    os.environ["AIRFLOW_CONN_AWS_DEFAULT"] = json.dumps(conn)
    os.environ["AIRFLOW_CONN_YANDEX_OBJECT_STORAGE"] = json.dumps(conn)
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
    yield yc
    yc.stop()
    assert not yc.local_clusters.running


def set_backend_settings(backend: str, **overrides) -> dict:
    """Settings for a backend, pointed at the fakes (env ``AIRFLOW_VAR_SPINDLE_BACKEND_<X>``)."""
    base = {"bucket": BUCKET, "upload_inputs": False, "secrets_source": SECRETS_SOURCE}
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


def run_nightly(dagbag, backend: str, **conf):
    """Run the nightly DAG in-process; (dag run, {task_id: state})."""
    dag = dagbag.dags["spindle_nightly_books"]
    run_conf = {"backend": backend, "limit": 300, "max_age_years": None, **conf}
    run = dag.test(run_conf=run_conf)
    states = {ti.task_id: str(ti.state) for ti in run.get_task_instances()}
    return run, states


def read_embeddings(run_id: str):
    import pandas as pd

    from spindle.pipelines import run_prefix

    path = WAREHOUSE / run_prefix("spindle_nightly_books", run_id) / "embeddings.parquet"
    frame = pd.read_parquet(path)
    return frame.sort_values(frame.columns[0]).reset_index(drop=True)
