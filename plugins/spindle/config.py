"""Where Spindle's Airflow code finds the repository, its run folder and the secrets source."""

from __future__ import annotations

import json
import os
from pathlib import Path

#: Connection that names the warehouse (``extra.root``) and holds its credentials.
DEFAULT_WAREHOUSE_CONN_ID = "spindle_warehouse"

_LOCAL_FILESYSTEM_BACKEND = "airflow.secrets.local_filesystem.LocalFilesystemBackend"


def repo_root() -> Path:
    """The Spindle checkout: holds ``setup.py`` and ``spark_apps/`` (``$SPINDLE_REPO`` wins)."""
    env = os.environ.get("SPINDLE_REPO")
    if env:
        return Path(env).resolve()
    return Path(__file__).resolve().parents[2]


def spindle_home() -> Path:
    """Run folder for cluster logs and the packaged ``spark_apps`` (``$SPINDLE_HOME``)."""
    env = os.environ.get("SPINDLE_HOME")
    return Path(env).resolve() if env else repo_root() / ".spindle"


def secrets_source() -> str | None:
    """A reference to the secrets store the jobs resolve connection ids from, or None.

    Spark jobs resolve ``--warehouse-conn-id`` themselves (``spark_apps.common.secrets``) from
    the source named in env ``SPINDLE_SECRETS_SOURCE``. For Airflow's local-filesystem secrets
    backend that is ``file://<connections_file_path>``: a path, never a secret value.
    ``$SPINDLE_SECRETS_SOURCE`` set in Airflow's own environment wins.
    """
    explicit = os.environ.get("SPINDLE_SECRETS_SOURCE")
    if explicit:
        return explicit
    from airflow.configuration import conf

    for section, key in (("workers", "secrets_backend"), ("secrets", "backend")):
        backend = conf.get(section, key, fallback="") or ""
        if backend != _LOCAL_FILESYSTEM_BACKEND:
            continue
        kwargs_key = "secrets_backend_kwargs" if section == "workers" else "backend_kwargs"
        raw = conf.get(section, kwargs_key, fallback="") or "{}"
        path = json.loads(raw).get("connections_file_path")
        if path:
            return "file://" + str(Path(path).resolve())
    return None
