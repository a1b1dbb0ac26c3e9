"""Model set-up of the model jobs: ship, describe, and load the model in every Python worker.

Python workers are reused across tasks (``spark.python.worker.reuse``), and the model cache
lives in the worker process, so a tiny stage of pandas-UDF tasks, one per task slot, moves the
imports (torch, transformers) and the model load out of the main stage: its tasks then start
encoding at once and run the same length. It also fails fast, before any data is read, when
the executors cannot find the model. (An RDD ``mapPartitions`` would not do: Spark gives
pandas UDFs other worker processes than RDD functions.)
"""

from typing import Iterator

import pandas as pd
from pyspark.sql import functions as F

from spark_apps.common import inference, models, session


def warm_up(spark, kind, model_spec, slots, threads=None):
    """Run ``slots`` warm-up tasks; return the set of model fingerprints the executors saw."""

    @F.pandas_udf("string")
    def load(ids: Iterator[pd.Series]) -> Iterator[pd.Series]:
        return inference.warm_up_batches(ids, kind, model_spec, threads)

    rows = spark.range(0, slots, 1, slots).select(load(F.col("id")).alias("fingerprint"))
    return sorted({row["fingerprint"] for row in rows.collect()})  # one tiny row per slot


def prepare_model(spark, args, kind, default_arrow_batch, watch, warm=True):
    """The model jobs' common start: Arrow batch size, model shipped and described, warm-up
    (``warm=False`` defers it to :func:`warm_model`, e.g. until it is known that any row needs
    the model).

    Returns a dict: ``kind``, ``spec`` (what executors resolve), ``name``, ``fingerprint``,
    ``slots``, ``partitions``, ``executor_fingerprints`` (None without warm-up).
    """
    arrow_batch = args.arrow_batch_size or default_arrow_batch
    spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", str(arrow_batch))
    spec = models.ship_model(spark, args.model)
    name, fingerprint = models.describe(spec, args.model_name)
    slots = session.task_slots(spark)
    model = {
        "kind": kind,
        "spec": spec,
        "name": name,
        "fingerprint": fingerprint,
        "slots": slots,
        "partitions": args.partitions or slots,
        "arrow_batch_size": arrow_batch,
        "executor_fingerprints": None,
    }
    return warm_model(spark, model, args, watch) if warm else model


def warm_model(spark, model, args, watch):
    """Load the model in every Python worker (unless ``--no-warm-up``); learn the fingerprint
    from the executors when only they can see the model."""
    if args.no_warm_up:
        return model
    with watch.stage("load_model"):
        seen = warm_up(spark, model["kind"], model["spec"], model["slots"], args.torch_threads)
    model["executor_fingerprints"] = seen
    if model["fingerprint"] is None and len(seen) == 1:  # only the executors can see the model
        model["fingerprint"] = seen[0]
    return model
