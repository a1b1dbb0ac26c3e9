"""Bad backend configuration fails the first task, naming the setting, before any cluster."""

from __future__ import annotations

import json
import os

import pytest
from spindle.backends import config

from tests.support.cloud import run_nightly


def test_missing_settings_are_named():
    with pytest.raises(config.BackendConfigError) as err:
        config.validate_settings("yandex", {"bucket": "b", "folder_id": "f"}, "Variable x")
    message = str(err.value)
    assert "'subnet_id' is missing" in message and "'service_account_id' is missing" in message


def test_malformed_settings_are_named():
    with pytest.raises(config.BackendConfigError, match="'datanode_count' must be integer"):
        config.validate_settings(
            "yandex",
            {
                "bucket": "b",
                "folder_id": "f",
                "subnet_id": "s",
                "service_account_id": "a",
                "oslogin_enabled": True,
                "datanode_count": "two",
            },
            "Variable x",
        )
    with pytest.raises(config.BackendConfigError, match="not valid JSON"):
        config.validate_settings("emr", "{not json", "Variable x")
    with pytest.raises(config.BackendConfigError, match="'colour' is unknown"):
        config.validate_settings("emr", {"bucket": "b", "colour": "red"}, "Variable x")


def test_defaults_fill_in():
    raw = {"bucket": "b", "environment": "provided", "secrets_source": "aws-sm://s"}
    settings = config.validate_settings("emr", raw, "Variable x")
    assert settings["release_label"].startswith("emr-") and settings["ttl_hours"] == 6


def test_the_cluster_environment_must_be_chosen():
    with pytest.raises(config.BackendConfigError, match="'environment' is missing"):
        config.validate_settings("emr", {"bucket": "b"}, "Variable x")
    with pytest.raises(config.BackendConfigError, match="setting 'environment' must be 'build', 'provided'"):
        config.validate_settings("emr", {"bucket": "b", "environment": "/home/me/env.tar.gz"}, "Variable x")


def test_every_backend_of_the_registry_has_a_lane_and_a_reaper():
    from spindle.backends import registry

    assert set(config.BACKENDS) == {"local", *registry.names()}
    for name in registry.names():
        backend = registry.get(name)
        assert backend.name == name and callable(backend.build_lane) and callable(backend.reap)
        assert "environment" in config.settings_schema(name) and "bucket" in config.settings_schema(name)


@pytest.mark.parametrize(
    ("backend", "variable", "expected"),
    [
        ("yandex", None, "spindle_backend_yandex"),  # no settings at all
        ("emr_serverless", {"bucket": "b"}, "'execution_role_arn' is missing"),
        ("emr", {"bucket": 7}, "'bucket' must be string"),
    ],
)
def test_bad_backend_config_fails_the_first_task(cloud_dagbag, capfd, backend, variable, expected):
    name = f"AIRFLOW_VAR_SPINDLE_BACKEND_{backend.upper()}"
    saved = os.environ.pop(name, None)
    if variable is not None:
        os.environ[name] = json.dumps(variable)
    try:
        run, states = run_nightly(cloud_dagbag, backend)
    finally:
        os.environ.pop(name, None)
        if saved is not None:
            os.environ[name] = saved
    assert str(run.state) == "failed"
    assert states["check_backend"] == "failed"
    created = {t: s for t, s in states.items() if t.endswith("create_cluster") and s not in ("None", "upstream_failed")}
    assert created == {}, f"a create task ran: {created}"
    assert expected in capfd.readouterr().out


def test_unknown_backend_is_refused():
    with pytest.raises(config.BackendConfigError, match="unknown backend 'gcp'"):
        config.choose_backend("gcp")
