"""The frame every job runs in: session, warehouse, timing, the metrics line, clean stop."""

import contextlib

from spark_apps.common import cli, environment, metrics, progress, session, storage


def run_job(job, args, body, conf=None, requires=()):
    """Run ``body(spark, args, warehouse, watch) -> dict``, print its metrics line and, with
    ``--metrics-output``, write them there too (object storage: what a cloud task reads). With
    ``--progress-output``, the job's stages are written there every ``--progress-interval``
    seconds while it runs (:mod:`spark_apps.common.progress`).

    ``conf``: Spark properties the job needs (``--conf`` values win). ``requires``: modules the
    job imports, checked before Spark starts. The session is stopped only when this call
    created it, so tests and notebooks can reuse theirs.
    """
    environment.require(job, requires)
    watch = metrics.Stopwatch()
    warehouse = cli.Warehouse.from_args(args)
    spark_conf = dict(conf or {})
    spark_conf.update(cli.spark_conf_pairs(args.conf))
    spark, owned = session.get_spark(args.app_name or "spindle." + job, args.master, spark_conf)
    try:
        warehouse.configure(spark)
        result = {"job": job, "spark_app_id": spark.sparkContext.applicationId}
        progress_output = getattr(args, "progress_output", None)
        writer = contextlib.nullcontext()
        if progress_output:
            writer = progress.ProgressWriter(
                spark, warehouse.path(progress_output), getattr(args, "progress_interval", progress.DEFAULT_INTERVAL)
            )
        with writer:
            result.update(body(spark, args, warehouse, watch))
        result.setdefault("seconds", {}).update(watch.seconds)
        result["seconds"]["total"] = watch.total()
        metrics.emit(result)
        if getattr(args, "metrics_output", None):
            storage.write_json(spark, warehouse.path(args.metrics_output), result)
        return result
    finally:
        if owned:
            spark.stop()
