"""Shared by every test folder: the isolated Airflow of the tests, its metadata DB and the
repository's DagBag.

``tests.support.airflow_env`` sets Airflow's environment (home, DB, secrets, warehouse) when it is
imported, and Airflow reads it once, on its first import: so it is imported here, by the first
conftest pytest loads, before any other conftest or test module can import Airflow.

Each folder's ``conftest.py`` has only the fixtures specific to it; plain helpers that tests
import live in the ``tests.support`` package. ``pytest.ini`` puts the checkout, ``plugins/`` and
``bench/`` on ``sys.path`` (``pythonpath``).
"""

from __future__ import annotations

import os

import pytest

from tests.support import airflow_env  # first: configures Airflow before anything imports it

# Models come from local dirs only (airflow_env sets HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE);
# tokenizers must not start threads that a forked Spark worker inherits.
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def airflow_db():
    """A fresh metadata DB for the session (Airflow's ``db migrate`` equivalent)."""
    from airflow.utils import db

    db.initdb()
    return airflow_env.AIRFLOW_HOME / "airflow.db"


@pytest.fixture(scope="session")
def dagbag():
    """The repository's DAGs, parsed once for the session (no DB needed to parse them)."""
    return airflow_env.parse_dags()
