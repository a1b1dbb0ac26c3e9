"""The context settings a job's own session brings (``session.CONTEXT_DEFAULTS``), and that a
setting someone chose (spark-submit, spark-defaults.conf, the job's ``--conf``) wins."""

import subprocess
import sys

from spark_apps.common import session
from tests.support.spark_apps import REPO

RESET = "spark.serializer.objectStreamReset"


def test_context_defaults_give_way_to_what_was_chosen(spark):
    assert session._unset_context_defaults({}) == {RESET: "1"}
    assert session._unset_context_defaults({RESET: "100"}) == {}
    # spark-submit hands its --conf settings to the driver as JVM system properties
    system = spark.sparkContext._jvm.java.lang.System
    system.setProperty(RESET, "100")
    try:
        assert session._unset_context_defaults({}) == {}
    finally:
        system.clearProperty(RESET)


def test_a_job_context_resets_the_java_serializer_after_each_object():
    """Measured by bench/million_rows.py: without it, the executor heap held a task's whole
    DISK_ONLY-persisted partition (Java serialization keeps what it wrote reachable)."""
    probe = (
        "from spark_apps.common.session import get_spark\n"
        "spark, owned = get_spark('probe', 'local[1]', {'spark.ui.enabled': 'false'})\n"
        f"print('RESET=' + spark.sparkContext.getConf().get('{RESET}'))\n"
        "spark.stop()\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "RESET=1" in done.stdout.splitlines()
