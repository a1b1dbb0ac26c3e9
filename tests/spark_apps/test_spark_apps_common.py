"""Unit tests of spark_apps.common without Spark: secrets, path resolution, models, metrics."""

import hashlib
import json
import os

import pytest

from spark_apps.common import cli, metrics, models, secrets


# --------------------------------------------------------------------------- secrets
@pytest.fixture
def connections_file(tmp_path, monkeypatch):
    data = {
        "as_dict": {
            "conn_type": "fs",
            "login": "user",
            "password": "s3cr3t!",
            "port": "9000",
            "extra": {"root": "s3a://bucket/prefix", "endpoint_url": "http://minio:9000"},
        },
        "extra_as_string": {"conn_type": "fs", "extra": json.dumps({"root": "/data/wh"})},
        "as_uri": "aws://AKIA%2FX:p%40ss%3Aw0rd@host.example:8443/db?__extra__=%7B%22root%22%3A+%22s3a%3A%2F%2Fb%2Fw%22%7D",
        "uri_query_extra": "fs://:@/?root=%2Ftmp%2Fwh&region=eu",
        "as_list": [{"conn_type": "fs", "extra": {"root": "/x"}}],
    }
    path = tmp_path / "connections.json"
    path.write_text(json.dumps(data))
    monkeypatch.setenv(secrets.ENV_SOURCE, f"file://{path}")
    return path


def test_connection_from_dict(connections_file):
    conn = secrets.get_connection("as_dict")
    assert (conn.conn_type, conn.login, conn.password, conn.port) == ("fs", "user", "s3cr3t!", 9000)
    assert conn.extra["root"] == "s3a://bucket/prefix"
    assert "s3cr3t!" not in repr(conn)


def test_connection_forms(connections_file):
    assert secrets.get_connection("extra_as_string").extra == {"root": "/data/wh"}
    uri = secrets.get_connection("as_uri")
    assert (uri.conn_type, uri.login, uri.password) == ("aws", "AKIA/X", "p@ss:w0rd")
    assert (uri.host, uri.port, uri.schema) == ("host.example", 8443, "db")
    assert uri.extra == {"root": "s3a://b/w"}
    assert secrets.get_connection("uri_query_extra").extra == {"root": "/tmp/wh", "region": "eu"}
    assert secrets.get_connection("as_list").extra == {"root": "/x"}


def test_missing_connection_and_sources(connections_file, monkeypatch):
    with pytest.raises(secrets.SecretsError, match="'nope' is not defined"):
        secrets.get_connection("nope")
    with pytest.raises(secrets.SecretsError, match="unknown secrets source scheme 'vault'"):
        secrets.get_connection("as_dict", source="vault://x")
    assert {"file", "lockbox", "aws-sm"} <= set(secrets.RESOLVERS)  # tested in tests/cloud
    monkeypatch.delenv(secrets.ENV_SOURCE)
    with pytest.raises(secrets.SecretsError, match=secrets.ENV_SOURCE):
        secrets.get_connection("as_dict")


def test_registered_source(monkeypatch):
    monkeypatch.setitem(secrets.RESOLVERS, "mem", lambda source, conn_id: secrets.Connection(conn_id, login=source))
    assert secrets.get_connection("c", source="mem://x").login == "mem://x"


def test_warehouse_paths(connections_file):
    class Args:
        warehouse_conn_id = "extra_as_string"

    warehouse = cli.Warehouse.from_args(Args)
    assert warehouse.path("runs/a/books.parquet") == "/data/wh/runs/a/books.parquet"
    assert warehouse.path("/abs/in.txt") == "/abs/in.txt"
    assert warehouse.path("s3a://other/x") == "s3a://other/x"
    assert cli.resolve_path("x/y", "s3a://bucket/root/") == "s3a://bucket/root/x/y"
    assert cli.resolve_path("x/y") == os.path.join(os.getcwd(), "x/y")


def test_option_parsers():
    assert cli.word_list(["eng,fre", "ger"]) == ["eng", "fre", "ger"]
    assert cli.word_list(["*"]) is None
    assert cli.optional_int("none") is None and cli.optional_int("40") == 40
    assert cli.spark_conf_pairs(["a.b=1=2"]) == {"a.b": "1=2"}


# --------------------------------------------------------------------------- models
def test_fingerprint_and_name_of_the_real_model(minilm_path):
    with open(os.path.join(minilm_path, "model.safetensors"), "rb") as handle:
        expected = "sha256:" + hashlib.sha256(handle.read()).hexdigest()
    assert models.fingerprint(minilm_path) == expected
    assert models.model_name(minilm_path) == "all-MiniLM-L6-v2"
    assert models.resolve_model_dir(minilm_path) == os.path.abspath(minilm_path)


def test_fingerprint_of_a_dir_without_weights_file(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "w.bin").write_bytes(b"abc")
    first = models.fingerprint(str(tmp_path))
    models._FINGERPRINTS.clear()
    (tmp_path / "sub" / "w.bin").write_bytes(b"abd")
    assert models.fingerprint(str(tmp_path)) != first


def test_unknown_model_is_never_downloaded(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(models.ModelNotFoundError, match="never downloaded"):
        models.resolve_model_dir("sentence-transformers/all-MiniLM-L6-v2")


def test_archive_wrapper_folder_is_unwrapped(tmp_path, monkeypatch):
    inner = tmp_path / "shipped.tar.gz" / "my-model"
    inner.mkdir(parents=True)
    (inner / "config.json").write_text("{}")
    monkeypatch.chdir(tmp_path)  # where --archives ...#alias lands on YARN executors
    assert models.resolve_model_dir("shipped.tar.gz") == str(inner)


# --------------------------------------------------------------------------- metrics
def test_metrics_line_round_trip():
    line = metrics.format_line({"b": 1, "a": {"x": [1, 2]}})
    assert "\n" not in line
    assert metrics.parse_line(line) == {"a": {"x": [1, 2]}, "b": 1}
    assert metrics.parse_line("INFO something") is None
