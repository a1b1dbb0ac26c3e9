"""Fixtures of the cloud-backend tests: the local fakes of Yandex Cloud and AWS (one per session),
the packed cluster environment, and a DagBag of their own. Constants and helpers that
the tests import (bucket, folder, credentials, ``run_nightly``, ...) are in ``tests.support.cloud``.
"""

from __future__ import annotations

import json
import os

import pytest

from tests.support.airflow_env import SPINDLE_HOME, parse_dags, spark_daemon_pids
from tests.support.cloud import (
    BUCKET,
    CERT,
    CLOUD_DIR,
    ENV_CACHE,
    FOLDER_ID,
    OAUTH_TOKEN,
    SECRETS_SOURCES,
    WAREHOUSES,
    warehouse_connection,
)

#: One node cache for both fakes (same object store): the environment is unpacked once.
NODE_CACHE = CLOUD_DIR / "node-cache"

for _conn_id, _root in set(WAREHOUSES.values()):  # the Airflow side's view of the same connections
    os.environ[f"AIRFLOW_CONN_{_conn_id.upper()}"] = warehouse_connection(_root)


@pytest.fixture(scope="session")
def cloud_dagbag(airflow_db):
    """The cloud tests' own DagBag, every DAG imported: their ``dag.test()`` runs leave other
    params in the DAG objects than the Airflow-side tests expect (``parse_dags``)."""
    bag = parse_dags()
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

    aws = FakeAws(
        CLOUD_DIR / "aws", worker_cores=2, worker_memory="2g", poll=0.5, log_upload_delay=3, node_cache=NODE_CACHE
    ).start()
    aws.moto.client("s3").create_bucket(Bucket=BUCKET)
    conn = {
        "conn_type": "aws",
        "login": "testing",
        "password": "testing",
        "extra": {"endpoint_url": aws.endpoint_url, "region_name": "us-east-1"},
    }
    os.environ["AIRFLOW_CONN_AWS_DEFAULT"] = json.dumps(conn)
    os.environ["AIRFLOW_CONN_YANDEX_OBJECT_STORAGE"] = json.dumps(conn)
    conn_id, root = WAREHOUSES["emr"]
    aws.moto.client("secretsmanager").create_secret(Name=f"spindle/{conn_id}", SecretString=warehouse_connection(root))
    SECRETS_SOURCES["emr"] = SECRETS_SOURCES["emr_serverless"] = "aws-sm://spindle"
    yield aws
    aws.stop()
    assert not aws.runner.clusters.running


@pytest.fixture(scope="session")
def fake_yandex(fake_aws):
    from tests.fakes.yandex_cloud import YandexCloudFake

    yc = YandexCloudFake(
        CLOUD_DIR / "yandex",
        s3=fake_aws.moto.s3_settings(),
        oauth_tokens={OAUTH_TOKEN},
        certificate=CERT,
        node_cache=NODE_CACHE,
    ).start()
    os.environ["AIRFLOW_CONN_YANDEXCLOUD_DEFAULT"] = json.dumps(
        {"conn_type": "yandexcloud", "extra": {"oauth": OAUTH_TOKEN, "endpoint": yc.endpoint, "folder_id": FOLDER_ID}}
    )
    conn_id, root = WAREHOUSES["yandex"]
    secret_id = yc.add_secret(FOLDER_ID, "spindle-connections", {conn_id: warehouse_connection(root)})
    SECRETS_SOURCES["yandex"] = SECRETS_SOURCES["yandex_spark"] = (
        f"lockbox://{secret_id}?endpoint={yc.lockbox_rest_url}&metadata={yc.metadata_addr}"
    )
    yield yc
    yc.stop()
    assert not yc.local_clusters.running


@pytest.fixture
def no_new_spark_processes():
    before = set(spark_daemon_pids())
    yield
    left = [line for line in spark_daemon_pids() if line not in before]
    assert not left, f"Spark processes left running: {left}"
