"""embed_text: sentence-transformers embeddings of a text column, in an iterator pandas UDF.

Output Parquet: id, vector (array<float>, L2-normalized), model, model_fingerprint,
text_sha256. Rows with a null text are skipped (and counted). With ``--previous``, rows whose
text_sha256 and model fingerprint match the previous version are carried over (a join, not
re-embedded) and the drift from that version is measured. Every run writes a manifest.

    python -m spark_apps.jobs.embed_text --input books.parquet --output embeddings.parquet \
        --model /models/all-MiniLM-L6-v2 [--previous runs/x/latest.json --latest runs/x/latest.json]
"""

import json
import os
import sys

try:
    import spark_apps  # noqa: F401
except ImportError:  # spark-submit spark_apps/jobs/<job>.py puts this folder, not the repo root, on sys.path
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from typing import Iterator

import pandas as pd
from pyspark.sql import Observation
from pyspark.sql import functions as F
from pyspark.sql import types as T

from spark_apps.common import cli, drift, inference, io, job, manifest, poison, storage, warmup

JOB = "embed_text"
# Checked on the driver before Spark starts: they come with the cluster environment.
REQUIRES = ("torch", "transformers", "sentence_transformers")
# encode() sorts by length within what it is handed: a larger Arrow batch pads less. 2000 / 5000 /
# 10000 rows: 0.89x / 0.94x / 0.93x bare encode; 5000 keeps the worker's memory per batch half of
# 10000's (docs/benchmarks.md).
DEFAULT_ARROW_BATCH = 5000
WARM_UP_MIN_ROWS = 1000  # incremental runs: below this many rows to embed, no warm-up stage
VECTOR = T.ArrayType(T.FloatType(), containsNull=False)
EMBEDDING = T.StructType(
    [
        T.StructField("vector", VECTOR),
        T.StructField("model_fingerprint", T.StringType()),
        T.StructField("error", T.StringType()),  # the model raised on this row alone: dead-lettered
        T.StructField("truncated", T.BooleanType()),  # longer than the model's max_seq_length
    ]
)
OUTPUT_COLUMNS = ("id", "vector", "model", "model_fingerprint", "text_sha256")


def parse_args(argv=None):
    parser = cli.base_parser(JOB, __doc__.split("\n\n")[0])
    cli.add_model_options(parser, batch_size=64)
    group = parser.add_argument_group("versioning options")
    group.add_argument(
        "--previous",
        help="the previous version: its embeddings Parquet, or a JSON pointer/manifest naming it (a "
        "missing pointer: no previous version). Rows whose text_sha256 and model fingerprint match "
        "are carried over instead of re-embedded; drift is measured against it",
    )
    group.add_argument(
        "--manifest",
        default=None,
        help="where to write the run's manifest JSON; default: manifest.json next to --output; none: skip",
    )
    group.add_argument("--latest", help="pointer JSON to (over)write with this version once it is complete")
    group.add_argument(
        "--drift-sample",
        type=cli.positive_int,
        default=drift.DEFAULT_SAMPLE,
        help="rows sampled from each version for the drift figures",
    )
    group.add_argument(
        "--upstream-metrics",
        type=json_object,
        default=None,
        help="metrics JSON of the job that made the input (prepare_books), copied into the manifest",
    )
    return parser.parse_args(argv)


def json_object(text):
    text = (text or "").strip()
    value = json.loads(text) if text else None
    return value if isinstance(value, dict) else None


def embedding_udf(model_spec, batch_size, threads, encode_seconds):
    def on_batch(seconds, rows):
        encode_seconds.add(seconds)

    @F.pandas_udf(EMBEDDING)
    def embed(texts: Iterator[pd.Series]) -> Iterator[pd.DataFrame]:
        return inference.embed_batches(texts, model_spec, batch_size, threads, on_batch)

    return embed


def with_text_hash(rows):
    """``text_sha256`` with Spark's sha2 (UTF-8 bytes), no UDF."""
    return rows.select("id", "text", F.sha2(F.col("text"), 256).alias("text_sha256"))


def previous_vectors(previous, model_fingerprint):
    """``text_sha256``, ``previous_vector``: one vector per text the same model embedded before."""
    same_model = previous.where(F.col("model_fingerprint") == F.lit(model_fingerprint))
    return same_model.groupBy("text_sha256").agg(F.first("vector").alias("previous_vector"))


def match_previous(rows, previous):
    """Adds ``previous_vector`` (null: the row must be embedded)."""
    if previous is None:
        return rows.withColumn("previous_vector", F.lit(None).cast(VECTOR))
    return rows.join(previous, on="text_sha256", how="left")


def embed(rows, embed_udf, model_name, model_fingerprint=None):
    """The output columns, plus ``error`` (null, or why the model raised on the row: it goes to
    the dead-letter output) and ``truncated``. Carried rows reach the UDF as a null text and keep
    their vector; without a UDF (every row carried over) no Python worker starts at all."""
    carried = F.col("previous_vector").isNotNull()
    if embed_udf is None:
        vector, fingerprint = F.col("previous_vector"), F.lit(model_fingerprint).cast("string")
        error, truncated = F.lit(None).cast("string"), F.lit(None).cast("boolean")
    else:
        result = embed_udf(F.when(~carried, F.col("text")))
        vector = F.coalesce(F.col("previous_vector"), result.getField("vector"))
        fingerprint = F.when(carried, F.lit(model_fingerprint).cast("string")).otherwise(
            result.getField("model_fingerprint")
        )
        error, truncated = result.getField("error"), result.getField("truncated")
    return rows.select(
        "id",
        vector.alias("vector"),
        F.lit(model_name).alias("model"),
        fingerprint.alias("model_fingerprint"),
        "text_sha256",
        error.alias("error"),
        truncated.alias("truncated"),
    )


def warm_once(spark, model, args, watch):
    if model["executor_fingerprints"] is None:
        warmup.warm_model(spark, model, args, watch)


def load_previous(spark, warehouse, args, target, model, watch):
    """The previous version: paths, its table and its same-model ``vectors``; or None. A reason
    in ``note`` when nothing can be carried over."""
    found = manifest.resolve_previous(spark, warehouse.path(args.previous), target) if args.previous else None
    if found is None:
        return None
    if not storage.exists(spark, found["embeddings"]):
        found["note"] = "previous embeddings not found: nothing carried over"
        return found
    if model["fingerprint"] is None:
        warm_once(spark, model, args, watch)  # only the executors can tell the fingerprint
    found["table"] = io.read_table(spark, found["embeddings"], "parquet")
    if model["fingerprint"] is None:
        found["note"] = "model fingerprint unknown (no warm-up): nothing carried over"
    else:
        found["vectors"] = previous_vectors(found["table"], model["fingerprint"])
    return found


def plan_rows(rows):
    """Rows that will be carried over, counted before embedding: one cheap pass (join, no model)."""
    counted = rows.agg(
        F.sum(F.col("previous_vector").isNotNull().cast("long")).alias("carried_over"),
    ).first()
    return counted["carried_over"] or 0


def measure_drift(spark, args, previous, target, plot_path, model):
    """Drift figures of this version against the previous one, and the PNG next to the manifest."""
    if previous is None or "table" not in previous:
        return None, None
    reference = previous["table"].where(F.col("model_fingerprint") == F.lit(model["fingerprint"]))
    ref = drift.sample_vectors(reference, args.drift_sample, seed=1)
    cur = drift.sample_vectors(io.read_table(spark, target, "parquet"), args.drift_sample, seed=2)
    if min(len(ref), len(cur)) < 4:
        return {
            "note": "too few rows with the same model for drift figures",
            "reference_rows": len(ref),
            "current_rows": len(cur),
        }, None
    figures = drift.compare(ref, cur)
    png = (
        drift.plot_png(ref, cur, figures, title="{}: previous vs current".format(model["name"])) if plot_path else None
    )
    if png is None:
        return figures, None
    storage.write_bytes(spark, plot_path, png)
    return figures, plot_path


def plan(spark, args, warehouse, source, target, watch):
    """The model, the previous version, the rows to write with their ``previous_vector``, and
    how many are carried over and to embed (None: not counted, no previous version). With a
    previous version the carried rows are counted first (one cheap pass, no model), and the
    warm-up runs only for a delta big enough to spread over every task slot."""
    model = warmup.prepare_model(spark, args, "sentence-transformers", DEFAULT_ARROW_BATCH, watch, warm=False)
    previous = load_previous(spark, warehouse, args, target, model, watch)
    vectors = (previous or {}).get("vectors")
    observed = Observation("embed_text_input")
    rows = io.read_text_rows(spark, source, args.input_format, args.id_column, args.text_column, observed)
    rows = match_previous(with_text_hash(rows), vectors)
    carried, to_embed = 0, None
    if vectors is not None:
        with watch.stage("plan"):
            carried = plan_rows(rows)
        to_embed = observed.get["rows_in"] - (observed.get["rows_null_text"] or 0) - carried
    if to_embed is None or to_embed >= WARM_UP_MIN_ROWS:
        warm_once(spark, model, args, watch)  # a small delta loads the model lazily where it lands
    return model, previous, rows, observed, carried, to_embed


def run(spark, args, warehouse, watch):
    source, target = warehouse.path(args.input), warehouse.path(args.output)
    model, previous, rows, observed, carried, to_embed = plan(spark, args, warehouse, source, target, watch)
    encode_seconds = spark.sparkContext.accumulator(0.0)
    udf = None
    if to_embed != 0:
        rows = rows.repartition(model["partitions"])  # round-robin: equal shares for every task slot
        udf = embedding_udf(model["spec"], args.batch_size, args.torch_threads, encode_seconds)
    dead_letter = poison.location(args, warehouse, target)
    with watch.stage("embed"):  # read + join + encode + write; the dead-letter rows from disk
        outcome = poison.write_split(
            spark,
            embed(rows, udf, model["name"], model["fingerprint"]),
            OUTPUT_COLUMNS,
            target,
            dead_letter,
            JOB,
            persist=udf is not None,
            extra=[("rows_truncated", F.col("truncated"))],
        )
    counts = observed.get
    dead = outcome["rows_dead_lettered"]
    poison.check_budget(dead, counts["rows_in"], args.max_error_rate, dead_letter)  # before manifest, pointer
    embedded = counts["rows_in"] - (counts["rows_null_text"] or 0) - carried - dead
    seconds = watch.seconds["embed"]
    manifest_path = manifest_location(args, warehouse, target)
    latest = warehouse.path(args.latest) if args.latest and manifest_path else None
    latest_note = None
    if latest and embedded + carried == 0:
        # An empty version (e.g. no book survived prepare_books' filters) never becomes the
        # latest: the next run still carries over from, and compares with, the last real one.
        latest, latest_note = None, f"0 rows written: pointer {warehouse.path(args.latest)} left alone"
    with watch.stage("drift"):
        plot_path = manifest.parent(manifest_path) + "/drift.png" if manifest_path else None
        figures, plot_path = measure_drift(spark, args, previous, target, plot_path, model)
    result = {
        "input": source,
        "outputs": {
            "embeddings": target,
            "manifest": manifest_path,
            "drift_plot": plot_path,
            "latest": latest,
            "dead_letter": outcome["dead_letter"],
        },
        "latest_note": latest_note,
        "model": model["name"],
        "model_fingerprint": model["fingerprint"],
        "rows_in": counts["rows_in"],
        "rows_skipped_null_text": counts["rows_null_text"] or 0,
        "rows_embedded": embedded,
        "rows_carried_over": carried,
        "rows_dead_lettered": dead,
        "dead_letter_reasons": outcome["dead_letter_reasons"],
        "rows_truncated": outcome["rows_truncated"],
        "max_error_rate": args.max_error_rate,
        "previous": {k: v for k, v in (previous or {}).items() if k in ("embeddings", "manifest", "note")} or None,
        "drift": figures,
        "partitions": model["partitions"],
        "arrow_batch_size": model["arrow_batch_size"],
        "executor_model_fingerprints": model["executor_fingerprints"],
        "encode_task_seconds": round(encode_seconds.value, 3),
        "rows_per_second": round(embedded / seconds, 1) if seconds and embedded else None,
    }
    if manifest_path:
        write_manifest(spark, args, result, watch)
    return result


def manifest_location(args, warehouse, target):
    if args.manifest is None:
        return manifest.default_location(target)
    return None if cli.optional_text(args.manifest) is None else warehouse.path(args.manifest)


def write_manifest(spark, args, result, watch):
    """The run's manifest; then the ``--latest`` pointer, so it only ever names complete versions."""
    seconds = dict(watch.seconds, total=watch.total())
    doc = {
        "manifest_version": manifest.VERSION,
        "job": JOB,
        "created_at": manifest.now(),
        "model": {
            "name": result["model"],
            "fingerprint": result["model_fingerprint"],
            "spec": args.model,
            "executor_fingerprints": result["executor_model_fingerprints"],
        },
        "parameters": {
            "batch_size": args.batch_size,
            "arrow_batch_size": result["arrow_batch_size"],
            "partitions": result["partitions"],
            "torch_threads": args.torch_threads,
            "id_column": args.id_column,
            "text_column": args.text_column,
            "drift_sample": args.drift_sample,
            "previous": args.previous,
            "max_error_rate": args.max_error_rate,
        },
        "input": manifest.input_fingerprint(
            spark, result["input"], args.input_format or io.detect_format(result["input"])
        ),
        "rows": dict(
            manifest.upstream_rows(args.upstream_metrics),
            **{
                "in": result["rows_in"],
                "skipped_null_text": result["rows_skipped_null_text"],
                "embedded": result["rows_embedded"],
                "carried_over": result["rows_carried_over"],
                "written": result["rows_embedded"] + result["rows_carried_over"],
                "dead_lettered": result["rows_dead_lettered"],
                "truncated": result["rows_truncated"],
            },
        ),
        "dead_letter_reasons": result["dead_letter_reasons"],
        "seconds": seconds,
        "outputs": result["outputs"],
        "previous": result["previous"],
        "drift": result["drift"],
        "upstream": args.upstream_metrics,
        "evaluation": None,
    }
    storage.write_json(spark, result["outputs"]["manifest"], doc)
    if result["outputs"]["latest"]:
        manifest.write_pointer(spark, result["outputs"]["latest"], doc)
    return doc


def main(argv=None):
    return job.run_job(JOB, parse_args(argv), run, requires=REQUIRES)


if __name__ == "__main__":
    main()
