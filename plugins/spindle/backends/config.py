"""Which backend a run uses, and that backend's settings, checked before any cluster exists.

Backend choice, first that is set wins:

1. the run's ``backend`` param (manual runs: the UI form),
2. Airflow Variable ``spindle_backend``,
3. environment variable ``SPINDLE_BACKEND``,
4. ``local``.

Settings of a cloud backend: Airflow Variable ``spindle_backend_<backend>`` holding a JSON
object (so also env ``AIRFLOW_VAR_SPINDLE_BACKEND_<BACKEND>``, or any secrets backend that
serves variables: Lockbox, Secrets Manager). :data:`SETTINGS` lists every setting: required
ones have no default; unknown keys and wrong types are refused, naming the setting.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

from airflow.sdk.exceptions import AirflowFailException

BACKENDS = ("local", "yandex", "emr", "emr_serverless")
#: Data Proc cluster strategies (setting ``strategy``), see docs/CLOUD_BACKENDS.md.
STRATEGIES = ("create_delete", "start_stop", "shared")
VARIABLE_BACKEND = "spindle_backend"
ENV_BACKEND = "SPINDLE_BACKEND"
_REQUIRED = object()


def settings_variable(backend: str) -> str:
    return f"spindle_backend_{backend}"


#: backend -> setting -> (type(s), default or _REQUIRED, description)
_COMMON: dict[str, tuple[Any, Any, str]] = {
    "bucket": (str, _REQUIRED, "object storage bucket for the job code, model archive and logs"),
    "prefix": (str, "spindle", "key prefix inside the bucket"),
    "ttl_hours": ((int, float), 6, "the reaper deletes what a run created after this many hours"),
    "upload_inputs": (bool, True, "upload local input files to the bucket; false when the cluster "
                      "shares this machine's filesystem (the local fakes)"),
    "warehouse_conn_id": (str, "spindle_warehouse", "connection the jobs resolve their warehouse root from"),
    "secrets_source": ((str, type(None)), None, "where jobs on the cluster resolve connections: "
                       "lockbox://<secret-id>, aws-sm://<prefix>, file:///path (shared filesystem)"),
    "spark_properties": (dict, {}, "extra Spark properties for every job"),
    "num_executors": ((int, type(None)), None, "spark.executor.instances"),
}  # fmt: skip

SETTINGS: dict[str, dict[str, tuple[Any, Any, str]]] = {
    "local": {},
    "yandex": {
        **_COMMON,
        "connection_id": (str, "yandexcloud_default", "Yandex Cloud connection (credentials, endpoint)"),
        "s3_conn_id": (
            str,
            "yandex_object_storage",
            "AWS-type connection for Object Storage "
            "(endpoint_url https://storage.yandexcloud.net in its extra)",
        ),
        "folder_id": (str, _REQUIRED, "folder the cluster is created in"),
        "zone": (str, "ru-central1-a", "availability zone"),
        "subnet_id": (str, _REQUIRED, "subnet of every cluster host"),
        "service_account_id": (str, _REQUIRED, "service account of the cluster (bucket and Lockbox access)"),
        "ssh_public_keys": (list, [], "SSH keys put on the hosts (or oslogin_enabled: true)"),
        "oslogin_enabled": (bool, False, "OS Login instead of SSH keys"),
        "image_version": (str, "2.1", "Data Proc image version"),
        "masternode_resource_preset": (str, "s3-c2-m8", "host class of the master"),
        "datanode_resource_preset": (str, "s3-c4-m16", "host class of the data nodes"),
        "datanode_count": (int, 1, "data nodes"),
        "computenode_resource_preset": ((str, type(None)), None, "host class of the compute nodes"),
        "computenode_count": (int, 0, "compute nodes"),
        "disk_size_gb": (int, 64, "disk size of every host, GiB"),
        "ui_proxy": (bool, True, "enable UI Proxy (the Spark UI link uses it)"),
        "security_group_ids": (list, [], "security groups"),
        "log_group_id": ((str, type(None)), None, "Cloud Logging group"),
        "cluster_properties": (dict, {}, "cluster properties, e.g. spark:spark.sql.shuffle.partitions"),
        "pip_packages": (dict, {}, "pip packages installed on every host, name -> version spec"),
        "strategy": (
            str,
            "create_delete",
            "create_delete (a cluster per run), start_stop (start the persistent cluster "
            "cluster_id, stop it afterwards) or shared (use the cluster DAG "
            "spindle_shared_cluster_open published, release it afterwards)",
        ),
        "cluster_id": ((str, type(None)), None, "the persistent cluster (strategy start_stop only)"),
        "master_ui_port": (int, 8088, "master UI port for the Spark UI link when UI Proxy is off"),
    },
    "emr": {
        **_COMMON,
        "aws_conn_id": (str, "aws_default", "AWS connection (region, credentials, endpoint_url)"),
        "region_name": ((str, type(None)), None, "AWS region (default: the connection's)"),
        "release_label": (str, "emr-7.5.0", "EMR release"),
        "instance_type": (str, "m5.xlarge", "instance type of the master and core nodes"),
        "core_instance_count": (int, 1, "core nodes"),
        "ec2_subnet_id": ((str, type(None)), None, "subnet of the cluster"),
        "job_flow_role": (str, "EMR_EC2_DefaultRole", "instance profile of the nodes"),
        "service_role": (str, "EMR_DefaultRole", "EMR service role"),
        "log_uri": ((str, type(None)), None, "S3 log location (default s3://<bucket>/<prefix>/logs/emr/)"),
        "step_poke_interval": ((int, float), 30, "seconds between step state checks"),
    },
    "emr_serverless": {
        **_COMMON,
        "aws_conn_id": (str, "aws_default", "AWS connection (region, credentials, endpoint_url)"),
        "region_name": ((str, type(None)), None, "AWS region (default: the connection's)"),
        "release_label": (str, "emr-7.5.0", "EMR release"),
        "execution_role_arn": (str, _REQUIRED, "IAM role the job runs as"),
        "log_uri": (
            (str, type(None)),
            None,
            "S3 log location (default s3://<bucket>/<prefix>/logs/emr-serverless/)",
        ),
        "waiter_delay": (int, 30, "seconds between job state checks"),
    },
}


class BackendConfigError(AirflowFailException):
    """The backend choice or its settings are missing or malformed."""


def _type_name(types: Any) -> str:
    types = types if isinstance(types, tuple) else (types,)
    names = {"NoneType": "null", "str": "string", "int": "integer", "float": "number", "bool": "boolean",
             "dict": "object", "list": "array"}  # fmt: skip
    return " or ".join(names.get(t.__name__, t.__name__) for t in types)


def _is_type(value: Any, types: Any) -> bool:
    types = types if isinstance(types, tuple) else (types,)
    if isinstance(value, bool) and bool not in types:
        return False
    return isinstance(value, types)


def validate_settings(backend: str, raw: Any, source: str) -> dict[str, Any]:
    """Settings with defaults filled in; raises :class:`BackendConfigError` naming every
    missing, unknown or mistyped setting."""
    schema = SETTINGS[backend]
    if raw is None:
        raw = {}
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except ValueError as err:
            raise BackendConfigError(f"backend {backend!r}: {source} is not valid JSON ({err})") from None
    if not isinstance(raw, Mapping):
        raise BackendConfigError(
            f"backend {backend!r}: {source} must be a JSON object, not {type(raw).__name__}"
        )
    errors, settings = [], {}
    for key in sorted(set(raw) - set(schema)):
        errors.append(f"setting {key!r} is unknown")
    for key, (types, default, description) in schema.items():
        if key not in raw or raw[key] is None and default is _REQUIRED:
            if default is _REQUIRED:
                errors.append(f"setting {key!r} is missing ({description})")
            else:
                settings[key] = json.loads(json.dumps(default))
            continue
        value = raw[key]
        if not _is_type(value, types):
            errors.append(f"setting {key!r} must be {_type_name(types)}, not {json.dumps(value)}")
            continue
        if isinstance(value, str) and not value.strip() and default is _REQUIRED:
            errors.append(f"setting {key!r} is empty ({description})")
            continue
        settings[key] = value
    if backend == "yandex" and not errors:
        if not settings["ssh_public_keys"] and not settings["oslogin_enabled"]:
            errors.append("setting 'ssh_public_keys' is missing (or set 'oslogin_enabled': true)")
        if settings["strategy"] not in STRATEGIES:
            errors.append(
                f"setting 'strategy' must be one of {', '.join(STRATEGIES)}, not {settings['strategy']!r}"
            )
        elif settings["strategy"] == "start_stop" and not settings["cluster_id"]:
            errors.append("setting 'cluster_id' is missing (required by strategy start_stop)")
        elif settings["strategy"] == "shared" and settings["cluster_id"]:
            errors.append(
                "setting 'cluster_id' must not be set with strategy shared: the cluster is the one "
                "DAG spindle_shared_cluster_open published (asset spindle_shared_cluster)"
            )
    if errors:
        raise BackendConfigError(f"backend {backend!r}: invalid {source}: " + "; ".join(errors))
    return settings


def choose_backend(param: str | None) -> tuple[str, str]:
    """(backend, where the choice came from)."""
    from airflow.sdk import Variable

    candidates = [
        (param, "param 'backend'"),
        (Variable.get(VARIABLE_BACKEND, default=None), f"Airflow Variable {VARIABLE_BACKEND!r}"),
        (os.environ.get(ENV_BACKEND), f"env {ENV_BACKEND}"),
    ]
    for value, source in candidates:
        if value not in (None, ""):
            name = str(value).strip().lower()
            if name not in BACKENDS:
                raise BackendConfigError(
                    f"{source}: unknown backend {value!r} (one of {', '.join(BACKENDS)})"
                )
            return name, source
    return "local", "default"


def resolve(param: str | None) -> dict[str, Any]:
    """``{"backend", "chosen_by", "settings"}`` for this run."""
    from airflow.sdk import Variable

    backend, chosen_by = choose_backend(param)
    settings: dict[str, Any] = {}
    if backend != "local":
        variable = settings_variable(backend)
        source = f"Airflow Variable {variable!r} (env AIRFLOW_VAR_{variable.upper()})"
        raw = Variable.get(variable, default=None)
        if raw is None:
            raise BackendConfigError(
                f"backend {backend!r} (chosen by {chosen_by}) needs its settings: {source} is not set; "
                f"required settings: "
                + ", ".join(k for k, (_, d, _) in SETTINGS[backend].items() if d is _REQUIRED)
            )
        settings = validate_settings(backend, raw, source)
    return {"backend": backend, "chosen_by": chosen_by, "settings": settings}
