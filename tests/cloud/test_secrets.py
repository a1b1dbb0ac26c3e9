"""Secrets from Lockbox (gRPC fake) and Secrets Manager (moto): Airflow's secrets backends
and the Spark app's own resolvers (``spark_apps.common.secrets``), by secret id / name."""

from __future__ import annotations

import json

from spark_apps.common import secrets as app_secrets
from tests.support.cloud import CERT, FOLDER_ID, OAUTH_TOKEN

CONN = {"conn_type": "fs", "login": "spindle", "password": "lockbox-only-pw", "extra": {"root": "s3a://wh/root"}}


def test_lockbox_secret_backend_and_spark_app_resolver(fake_yandex, monkeypatch):
    from airflow.providers.yandex.secrets.lockbox import LockboxSecretBackend

    fake_yandex.add_secret(FOLDER_ID, "airflow/connections/spindle_lockbox_wh", {"value": json.dumps(CONN)})
    fake_yandex.add_secret(FOLDER_ID, "airflow/variables/spindle_backend", {"value": "yandex"})
    backend = LockboxSecretBackend(yc_oauth_token=OAUTH_TOKEN, folder_id=FOLDER_ID, endpoint=fake_yandex.endpoint)
    assert json.loads(backend.get_conn_value("spindle_lockbox_wh"))["password"] == CONN["password"]
    assert backend.get_variable("spindle_backend") == "yandex"
    assert backend.get_conn_value("missing") is None

    # On the cluster: one secret whose entries are connection ids, read by secret id over REST
    # with the VM's IAM token from the metadata service.
    secret_id = fake_yandex.add_secret(FOLDER_ID, "spindle-jobs", {"spindle_lockbox_wh": json.dumps(CONN)})
    monkeypatch.setenv("SSL_CERT_FILE", str(CERT.cert_path))
    source = f"lockbox://{secret_id}?endpoint={fake_yandex.lockbox_rest_url}&metadata={fake_yandex.metadata_addr}"
    conn = app_secrets.get_connection("spindle_lockbox_wh", source)
    assert conn.password == CONN["password"] and conn.extra["root"] == "s3a://wh/root"
    assert "lockbox-only-pw" not in repr(conn)
    calls = [d for n, d in fake_yandex.state.calls if n == "Lockbox.GetPayload"]
    assert {"secret_id": secret_id, "via": "rest"} in calls


def test_secrets_manager_backend_and_spark_app_resolver(fake_aws, monkeypatch):
    from airflow.providers.amazon.aws.secrets.secrets_manager import SecretsManagerBackend

    sm = fake_aws.moto.client("secretsmanager")
    sm.create_secret(Name="airflow/connections/spindle_sm_wh", SecretString=json.dumps(CONN))
    sm.create_secret(Name="spindle/jobs/spindle_sm_wh", SecretString=json.dumps(CONN))
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL", fake_aws.endpoint_url)
    backend = SecretsManagerBackend(
        connections_prefix="airflow/connections",
        variables_prefix=None,
        region_name="us-east-1",
        endpoint_url=fake_aws.endpoint_url,
    )
    assert json.loads(backend.get_conn_value("spindle_sm_wh"))["password"] == CONN["password"]

    conn = app_secrets.get_connection("spindle_sm_wh", "aws-sm://spindle/jobs?region=us-east-1")
    assert conn.password == CONN["password"] and conn.login == "spindle"
