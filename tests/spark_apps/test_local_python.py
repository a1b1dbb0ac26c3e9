"""A job CLI run as documented, ``.venv/bin/python -m spark_apps.jobs.<job>``, without
``scripts/env.sh``: no ``PYSPARK_PYTHON``, the venv not on PATH. PySpark starts its Python
workers with ``python3`` from PATH by default (here the system Python, without pandas or torch);
in local mode spark_apps' session builder gives them the driver's own interpreter instead."""

import json
import os
import subprocess
import sys

import pytest

from spark_apps.common import session
from tests.support.spark_apps import METRICS_PREFIX, REPO


def bare_env():
    """This process's environment as a shell without ``. scripts/env.sh`` has it."""
    venv_bins = {os.path.realpath(d) for d in (os.path.dirname(sys.executable), os.path.join(sys.prefix, "bin"))}
    path = [p for p in os.environ.get("PATH", "").split(os.pathsep) if p and os.path.realpath(p) not in venv_bins]
    dropped = {"PYSPARK_PYTHON", "PYSPARK_DRIVER_PYTHON", "PYTHONPATH", "VIRTUAL_ENV", "SPINDLE_SECRETS_SOURCE"}
    env = {k: v for k, v in os.environ.items() if k not in dropped}
    env["PATH"] = os.pathsep.join(path)
    return env


def test_embed_text_cli_without_env_sh(tmp_path, minilm_path):
    env = bare_env()
    rows = [{"id": "a", "text": "A detective story in foggy London."}, {"id": "b", "text": "Space opera."}]
    source = tmp_path / "texts.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "spark_apps.jobs.embed_text",
            "--master",
            "local[1]",
            "--input",
            str(source),
            "--output",
            str(tmp_path / "emb.parquet"),
            "--model",
            minilm_path,
            "--batch-size",
            "2",
            "--conf",
            "spark.ui.enabled=false",
        ],
        cwd=REPO,
        env=env,
        check=False,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [line for line in result.stdout.splitlines() if line.startswith(METRICS_PREFIX)]
    assert len(lines) == 1, result.stdout
    assert json.loads(lines[0][len(METRICS_PREFIX) :])["rows_embedded"] == 2


@pytest.mark.parametrize(
    "master, conf, env_python, expected",
    [
        ("local[1]", {}, None, sys.executable),  # the default: this interpreter
        ("spark://127.0.0.1:7077", {}, None, None),  # a cluster decides itself
        ("local[1]", {"spark.pyspark.python": "/opt/py/bin/python"}, None, None),  # configured: kept
        ("local[1]", {}, "/opt/py/bin/python", "/opt/py/bin/python"),  # PYSPARK_PYTHON: kept
    ],
)
def test_default_worker_python(monkeypatch, master, conf, env_python, expected):
    if env_python is None:
        monkeypatch.delenv("PYSPARK_PYTHON", raising=False)
    else:
        monkeypatch.setenv("PYSPARK_PYTHON", env_python)
    session._default_worker_python(master, conf)
    assert os.environ.get("PYSPARK_PYTHON") == expected
