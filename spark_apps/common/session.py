"""The job's SparkSession, and shipping ``spark_apps`` to executors when nobody else did."""

import atexit
import os
import shutil
import sys
import tempfile
import zipfile

import spark_apps

DEFAULT_MASTER = "local[*]"
#: Context settings the jobs rely on, applied when this process starts the context and nobody
#: chose otherwise (spark-submit, spark-defaults.conf, ``conf``).
CONTEXT_DEFAULTS = {
    # The model jobs persist their results DISK_ONLY (poison.write_split): Spark SQL caches them
    # as column batches of ~10k rows (~16 MB of vectors each), written with the Java serializer,
    # which keeps every object it wrote reachable until its stream resets (every 100 objects by
    # default). So a task's whole partition stayed on the executor heap while it ran: the live
    # heap grew with the rows per task (bench/million_rows.py). Reset after each batch.
    "spark.serializer.objectStreamReset": "1",
}
_SHIPPED_APPS = set()  # application ids this process has shipped the package to


def _submitted_conf():
    """The settings spark-submit (and spark-defaults.conf) chose, as a SparkConf.

    spark-submit hands its settings to the Python driver as JVM system properties, which only
    a SparkConf created *after* the gateway JVM is up can see, hence ``_ensure_initialized``.
    """
    from pyspark import SparkConf, SparkContext

    SparkContext._ensure_initialized()
    return SparkConf()


def _master_already_set():
    """True when spark-submit (or spark-defaults.conf) chose a master."""
    return _submitted_conf().contains("spark.master") or bool(os.environ.get("MASTER"))


def _default_worker_python(master, conf):
    """In local mode, let the Python workers run this very interpreter unless told otherwise.

    PySpark starts its workers with ``$PYSPARK_PYTHON``, else ``python3`` from PATH: run as
    ``.venv/bin/python -m spark_apps.jobs.X`` without ``scripts/env.sh``, that is the system
    Python, which lacks pandas, pyarrow and the model libraries. A configured
    ``PYSPARK_PYTHON`` or ``spark.pyspark.python`` (``conf``, spark-submit, spark-defaults.conf)
    wins; on a cluster the cluster decides.
    """
    if os.environ.get("PYSPARK_PYTHON") or "spark.pyspark.python" in (conf or {}) or not sys.executable:
        return
    jvm_conf = _submitted_conf()
    if jvm_conf.contains("spark.pyspark.python"):
        return
    effective = (
        master
        or (conf or {}).get("spark.master")
        or jvm_conf.get("spark.master", None)
        or os.environ.get("MASTER")
        or DEFAULT_MASTER
    )
    if effective.startswith("local"):
        # Read by SparkContext when it starts (sc.pythonExec), which the workers are spawned with.
        os.environ["PYSPARK_PYTHON"] = sys.executable


def _unset_context_defaults(conf):
    """:data:`CONTEXT_DEFAULTS` that neither ``conf`` nor spark-submit / spark-defaults.conf name."""
    chosen = _submitted_conf()
    return {k: v for k, v in CONTEXT_DEFAULTS.items() if k not in (conf or {}) and not chosen.contains(k)}


def get_spark(app_name, master=None, conf=None):
    """Return ``(spark, owned)``: an existing active session is reused (tests, notebooks), else
    a new one on ``master``, spark-submit's master, or ``local[*]``. ``owned`` tells the caller
    whether to stop it. Runtime SQL settings in ``conf`` apply to a reused session too."""
    from pyspark.sql import SparkSession

    active = SparkSession.getActiveSession()
    builder = SparkSession.builder.appName(app_name)
    if active is None:
        _default_worker_python(master, conf)
        if master:
            builder = builder.master(master)
        elif not _master_already_set():
            builder = builder.master(DEFAULT_MASTER)
        for key, value in _unset_context_defaults(conf).items():
            builder = builder.config(key, value)
    for key, value in sorted((conf or {}).items()):
        builder = builder.config(key, str(value))
    spark = builder.getOrCreate()
    ship_package(spark)
    return spark, active is None


def _shipped_by_submitter(spark):
    """spark_apps was imported from an archive (a --py-files wheel/zip), or the submitter passed
    --py-files: then shipping is the submitter's job, and a second copy could shadow theirs."""
    package_dir = os.path.dirname(os.path.abspath(spark_apps.__file__))
    if not os.path.isdir(package_dir):  # imported from inside a zip
        return True
    return bool(spark.sparkContext.getConf().get("spark.submit.pyFiles", ""))


def ship_package(spark):
    """Zip this checkout's ``spark_apps`` and ``addPyFile`` it, unless it was shipped already.

    Why: pandas UDFs are pickled by reference to ``spark_apps`` modules (that is what keeps the
    model cache alive across tasks), so every executor must import ``spark_apps``. Run as
    ``python -m spark_apps.jobs.X`` against a cluster, nothing else puts it on the executors'
    ``sys.path``; the Airflow side passes a wheel via ``--py-files`` and then we do nothing.
    """
    sc = spark.sparkContext
    if sc.applicationId in _SHIPPED_APPS or _shipped_by_submitter(spark):
        return None
    package_dir = os.path.dirname(os.path.abspath(spark_apps.__file__))
    folder = tempfile.mkdtemp(prefix="spindle-pyfiles-")
    # Spark serves the file from this path for the whole application: remove it at exit only.
    atexit.register(shutil.rmtree, folder, True)
    target = os.path.join(folder, "spark_apps.zip")
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as archive:
        for root, dirs, files in os.walk(package_dir):
            dirs[:] = sorted(d for d in dirs if d != "__pycache__")
            for name in sorted(files):
                if name.endswith(".py"):
                    path = os.path.join(root, name)
                    archive.write(path, os.path.relpath(path, os.path.dirname(package_dir)))
    sc.addPyFile(target)
    _SHIPPED_APPS.add(sc.applicationId)
    return target


def task_slots(spark):
    """Tasks that run at once: cores (defaultParallelism) over cores per task. One partition per
    slot keeps every core busy with equal shares and loads each model copy once."""
    cpus = int(spark.conf.get("spark.task.cpus", "1"))
    return max(1, spark.sparkContext.defaultParallelism // max(1, cpus))
