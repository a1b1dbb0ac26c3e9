"""Which backend a run uses, and that backend's settings, checked before any cluster exists.

Backend choice, first that is set wins:

1. the run's ``backend`` param (manual runs: the UI form),
2. Airflow Variable ``spindle_backend``,
3. environment variable ``SPINDLE_BACKEND``,
4. ``local``.

Settings of a cloud backend: Airflow Variable ``spindle_backend_<backend>`` holding a JSON
object (so also env ``AIRFLOW_VAR_SPINDLE_BACKEND_<BACKEND>``, or any secrets backend that
serves variables: Lockbox, Secrets Manager). :data:`COMMON` and each backend's ``settings`` (:mod:`.registry`) list every setting: required
ones have no default; unknown keys and wrong types are refused, naming the setting.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

from airflow.sdk.exceptions import AirflowFailException

from spindle.backends import environment, registry
from spindle.backends.registry import REQUIRED

BACKENDS = ("local", *registry.names())
VARIABLE_BACKEND = "spindle_backend"
ENV_BACKEND = "SPINDLE_BACKEND"
_REQUIRED = REQUIRED


def settings_variable(backend: str) -> str:
    return f"spindle_backend_{backend}"


#: Settings every cloud backend has: setting -> (type(s), default or REQUIRED, description).
COMMON: dict[str, tuple[Any, Any, str]] = {
    "bucket": (str, _REQUIRED, "object storage bucket for the job code, environment, models, inputs and logs"),
    "prefix": (str, "spindle", "key prefix inside the bucket"),
    "environment": (
        str,
        _REQUIRED,
        "where the model jobs' Python packages come from: 'build' (packed here "
        "from requirements-cluster.txt; the cluster's OS and Python must match this machine's), "
        "the s3:// URI of an archive built for the cluster image (docs/CLOUD_BACKENDS.md), or "
        "'provided' (the image, a bootstrap action or pip_packages has them)",
    ),
    "ttl_hours": (
        (int, float),
        6,
        (
            "hours after which the reaper counts what a run created as expired "
            "(scheduled reaper runs delete it; manual ones report it unless dry_run=false)"
        ),
    ),
    "upload_inputs": (
        bool,
        True,
        "upload local input files to the bucket (content-addressed); false only "
        "when the cluster can read the input paths as given",
    ),
    "warehouse_conn_id": (
        str,
        "spindle_warehouse",
        "connection whose extra.root (an s3:// or s3a:// URI in the bucket) is the root of the jobs' outputs",
    ),
    "secrets_source": (
        (str, type(None)),
        None,
        "where jobs on the cluster resolve connections: lockbox://<secret-id>, aws-sm://<prefix>",
    ),
    "spark_properties": (dict, {}, "extra Spark properties for every job"),
    "num_executors": ((int, type(None)), None, "spark.executor.instances"),
    "log_wait_seconds": (
        (int, float),
        300,
        "EMR and EMR Serverless: how long a job task waits for the "
        "service's late upload of the driver log before giving up on copying it (the "
        "result never depends on it)",
    ),
}


def settings_schema(backend: str) -> dict[str, tuple[Any, Any, str]]:
    """Every setting of a cloud backend: the common ones, then its own."""
    return {**COMMON, **registry.get(backend).settings}


class BackendConfigError(AirflowFailException):
    """The backend choice or its settings are missing or malformed."""


def _type_name(types: Any) -> str:
    types = types if isinstance(types, tuple) else (types,)
    names = {
        "NoneType": "null",
        "str": "string",
        "int": "integer",
        "float": "number",
        "bool": "boolean",
        "dict": "object",
        "list": "array",
    }
    return " or ".join(names.get(t.__name__, t.__name__) for t in types)


def _is_type(value: Any, types: Any) -> bool:
    types = types if isinstance(types, tuple) else (types,)
    if isinstance(value, bool) and bool not in types:
        return False
    return isinstance(value, types)


def validate_settings(backend: str, raw: Any, source: str) -> dict[str, Any]:
    """Settings with defaults filled in; raises :class:`BackendConfigError` naming every
    missing, unknown or mistyped setting."""
    schema = settings_schema(backend)
    if raw is None:
        raw = {}
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except ValueError as err:
            raise BackendConfigError(f"backend {backend!r}: {source} is not valid JSON ({err})") from None
    if not isinstance(raw, Mapping):
        raise BackendConfigError(f"backend {backend!r}: {source} must be a JSON object, not {type(raw).__name__}")
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
    if not errors:
        problem = environment.check_setting(settings["environment"])
        if problem:
            errors.append(f"setting 'environment' {problem}")
        if settings["warehouse_conn_id"] and not settings["secrets_source"]:
            errors.append(
                "setting 'secrets_source' is missing: jobs on the cluster resolve the warehouse "
                f"connection {settings['warehouse_conn_id']!r} from it (lockbox://... or aws-sm://...)"
            )
        errors += registry.get(backend).validate(settings)
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
                raise BackendConfigError(f"{source}: unknown backend {value!r} (one of {', '.join(BACKENDS)})")
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
                + ", ".join(k for k, (_, d, _) in settings_schema(backend).items() if d is _REQUIRED)
            )
        settings = validate_settings(backend, raw, source)
    return {"backend": backend, "chosen_by": chosen_by, "settings": settings}
