"""embed_text: sentence-transformers embeddings of a text column, in an iterator pandas UDF.

Output Parquet: id, vector (array<float>, L2-normalized), model, model_fingerprint,
text_sha256. Rows with a null text are skipped (and counted).

    python -m spark_apps.jobs.embed_text --input books.parquet --output embeddings.parquet \
        --model /models/all-MiniLM-L6-v2
"""
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

from spark_apps.common import cli, inference, io, job, warmup

JOB = "embed_text"
# encode() sorts by length within what it is handed: a larger Arrow batch pads less (10k texts
# + their vectors are ~20 MB). 5000 vs 2000 rows: 0.94x vs 0.89x bare encode (docs/benchmarks.md).
DEFAULT_ARROW_BATCH = 10000
EMBEDDING = T.StructType(
    [
        T.StructField("vector", T.ArrayType(T.FloatType(), containsNull=False)),
        T.StructField("model_fingerprint", T.StringType()),
    ]
)


def parse_args(argv=None):
    parser = cli.base_parser(JOB, __doc__.split("\n\n")[0])
    cli.add_model_options(parser, batch_size=64)
    return parser.parse_args(argv)


def embedding_udf(model_spec, batch_size, threads, encode_seconds):
    def on_batch(seconds, rows):
        encode_seconds.add(seconds)

    @F.pandas_udf(EMBEDDING)
    def embed(texts: Iterator[pd.Series]) -> Iterator[pd.DataFrame]:
        return inference.embed_batches(texts, model_spec, batch_size, threads, on_batch)

    return embed


def embed(rows, embed_udf, model_name):
    """The output columns; ``text_sha256`` with Spark's sha2 (UTF-8 bytes), no UDF."""
    result = embed_udf(F.col("text"))
    return rows.select(
        "id",
        result.getField("vector").alias("vector"),
        F.lit(model_name).alias("model"),
        result.getField("model_fingerprint").alias("model_fingerprint"),
        F.sha2(F.col("text"), 256).alias("text_sha256"),
    )


def run(spark, args, warehouse, watch):
    source, target = warehouse.path(args.input), warehouse.path(args.output)
    model = warmup.prepare_model(spark, args, "sentence-transformers", DEFAULT_ARROW_BATCH, watch)
    encode_seconds = spark.sparkContext.accumulator(0.0)
    observed = Observation("embed_text_input")
    rows = io.read_text_rows(spark, source, args.input_format, args.id_column, args.text_column, observed)
    rows = rows.repartition(model["partitions"])  # round-robin: equal shares for every task slot
    udf = embedding_udf(model["spec"], args.batch_size, args.torch_threads, encode_seconds)
    with watch.stage("embed"):  # read + encode + write: one Spark action
        io.write_parquet(embed(rows, udf, model["name"]), target)
    counts = observed.get
    embedded = counts["rows_in"] - (counts["rows_null_text"] or 0)
    seconds = watch.seconds["embed"]
    return {
        "input": source,
        "outputs": {"embeddings": target},
        "model": model["name"],
        "model_fingerprint": model["fingerprint"],
        "rows_in": counts["rows_in"],
        "rows_skipped_null_text": counts["rows_null_text"] or 0,
        "rows_embedded": embedded,
        "partitions": model["partitions"],
        "arrow_batch_size": model["arrow_batch_size"],
        "executor_model_fingerprints": model["executor_fingerprints"],
        "encode_task_seconds": round(encode_seconds.value, 3),
        "rows_per_second": round(embedded / seconds, 1) if seconds else None,
    }


def main(argv=None):
    return job.run_job(JOB, parse_args(argv), run)


if __name__ == "__main__":
    main()
