"""embed_images: CLIP image embeddings of book covers, fetched and encoded in an iterator pandas UDF.

Input: a table with an id column and a cover id column (the books Parquet of prepare_books:
the first of ``cover_ids``) and/or an image column (URL or path). Images come from a folder
(files named by cover id, or the image column's relative paths) or, by cover id, from a URL
template (Open Library's covers service by default). A missing or broken image is counted
with its reason and never fails the job.

Output Parquet: id, cover_id, vector (array<float>, L2-normalized; null when the image could
not be had), model, model_fingerprint, image_sha256, error ("<reason>: <detail>" or null).
Rows with neither a cover id nor an image are skipped (and counted).

    python -m spark_apps.jobs.embed_images --input books.parquet --output covers.parquet \
        --model /models/clip-vit-base-patch32 --images-dir /data/covers
"""

import os
import sys

try:
    import spark_apps  # noqa: F401
except ImportError:  # spark-submit spark_apps/jobs/<job>.py puts this folder, not the repo root, on sys.path
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import argparse
from typing import Iterator
from urllib.parse import urlsplit
from urllib.request import url2pathname

import pandas as pd
from pyspark.sql import Observation
from pyspark.sql import functions as F
from pyspark.sql import types as T

from spark_apps.common import cli, clip, images, io, job, poison, warmup

JOB = "embed_images"
# Checked on the driver before Spark starts: they come with the cluster environment.
REQUIRES = ("torch", "transformers", "PIL")
KIND = "clip"
# Images are held (compressed) for a whole Arrow batch while they are fetched concurrently.
DEFAULT_ARROW_BATCH = 256
COVER_ID_COLUMNS = ("cover_id", "cover_ids", "covers")  # looked for, in order, when not given
EMBEDDING = T.StructType(
    [
        T.StructField("vector", T.ArrayType(T.FloatType(), containsNull=False)),
        T.StructField("image_sha256", T.StringType()),
        T.StructField("error", T.StringType()),
        T.StructField("model_fingerprint", T.StringType()),
        T.StructField("model_error", T.StringType()),  # the model raised on this image alone: dead-lettered
    ]
)
OUTPUT_COLUMNS = ("id", "cover_id", "vector", "model", "model_fingerprint", "image_sha256", "error")


def positive_float(text):
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value


def parse_args(argv=None):
    parser = cli.base_parser(JOB, __doc__.split("\n\n")[0])
    group = cli.add_model_options(parser, batch_size=32, text_column=False)
    group.add_argument(
        "--cover-id-column",
        help="column with the cover id (an array column: its first element); default: the first of "
        + ", ".join(COVER_ID_COLUMNS)
        + " the input has",
    )
    group.add_argument(
        "--image-column",
        help="column with each row's image: an http(s) URL, a file:// URI or a path (relative: inside "
        "--images-dir); wins over the cover id where set",
    )
    group.add_argument(
        "--images-dir",
        help="folder of images named by cover id (<id>.jpg, <id>-M.jpg, .jpeg/.png/.webp/.gif): a local "
        "path every executor sees (read inside the UDF), or a Hadoop URI (s3a://, hdfs://, file://: "
        "read with Spark's binaryFile source and joined by file name); default: the URL template",
    )
    group.add_argument(
        "--url-template",
        type=cli.optional_text,
        default=images.OPEN_LIBRARY_COVERS,
        help="URL of a cover id's image, {cover_id} filled in; used when --images-dir is not given; "
        "'none': no downloads",
    )
    group.add_argument("--timeout", type=positive_float, default=10.0, help="seconds per download attempt")
    group.add_argument(
        "--retries",
        type=int,
        default=2,
        help="extra attempts of a download after a timeout, a connection error or HTTP 408/429/5xx",
    )
    group.add_argument(
        "--retry-backoff", type=float, default=0.5, help="seconds before the first retry; doubles each time"
    )
    group.add_argument("--fetch-threads", type=cli.positive_int, default=8, help="concurrent image fetches per task")
    group.add_argument(
        "--max-image-bytes",
        type=cli.positive_int,
        default=images.MAX_IMAGE_BYTES,
        help="larger images are refused (reason too_large)",
    )
    args = parser.parse_args(argv)
    if args.retries < 0:
        parser.error("--retries must be >= 0")
    return args


# --------------------------------------------------------------------------- transformations
def cover_id_column(table, name=None):
    """The cover id column: ``name``, else the first of :data:`COVER_ID_COLUMNS`; None if none."""
    if name:
        if name not in table.columns:
            raise ValueError(f"--cover-id-column {name!r} is not a column of the input ({table.columns})")
        return name
    return next((c for c in COVER_ID_COLUMNS if c in table.columns), None)


def cover_id_expr(table, name):
    """One cover id per row: the column, or the first element of an array column (guarded:
    Spark 4 runs ANSI SQL, where indexing an empty array raises)."""
    if name is None:
        return F.lit(None).cast("bigint")
    column = F.col(name)
    if isinstance(table.schema[name].dataType, T.ArrayType):
        return F.when(F.size(column) > 0, column.getItem(0))
    return column


def read_image_rows(spark, path, fmt, args, observation):
    """``id``, ``cover_id``, ``image`` of the input; rows with neither a cover id nor an image
    are counted into ``observation`` (``rows_in``, ``rows_no_image``) and dropped."""
    table = io.read_table(spark, path, fmt)
    cover_column = cover_id_column(table, args.cover_id_column)
    if cover_column is None and not args.image_column:
        raise ValueError(
            "the input has no cover id column ({}): pass --cover-id-column or --image-column".format(
                ", ".join(COVER_ID_COLUMNS)
            )
        )
    if args.image_column and args.image_column not in table.columns:
        raise ValueError(f"--image-column {args.image_column!r} is not a column of the input")
    image = F.col(args.image_column).cast("string") if args.image_column else F.lit(None).cast("string")
    rows = table.select(
        F.col(args.id_column).alias("id"),
        cover_id_expr(table, cover_column).alias("cover_id"),
        F.when(F.trim(image) != "", image).alias("image"),
    )
    no_image = F.col("cover_id").isNull() & F.col("image").isNull()
    rows = rows.observe(
        observation,
        F.count(F.lit(1)).alias("rows_in"),
        F.sum(no_image.cast("long")).alias("rows_no_image"),
    )
    return rows.where(~no_image)


def is_hadoop_uri(path):
    return bool(path) and cli.is_uri(path) and not path.startswith(("http://", "https://"))


def local_dir(path):
    """An absolute local folder (executors have another working directory than the driver)."""
    if path.startswith("file://"):
        return url2pathname(urlsplit(path).path)
    return os.path.abspath(os.path.expanduser(path))


def folder_images(spark, uri):
    """``key`` (file name without extension and Open Library size suffix -S/-M/-L), ``file``
    (name), ``content`` of every image under ``uri``, one file per key (the smallest path)."""
    pattern = r"(?i)\.(" + "|".join(e.lstrip(".") for e in images.IMAGE_EXTENSIONS) + r")$"
    files = spark.read.format("binaryFile").option("recursiveFileLookup", "true").load(uri)
    name = F.regexp_extract(F.col("path"), r"([^/]+)$", 1)
    files = files.where(F.col("path").rlike(pattern)).select(
        "path",
        name.alias("file"),
        "content",
        F.regexp_replace(name, r"(?i)(-[sml])?\.[a-z0-9]+$", "").alias("stem"),
    )
    by_path = F.struct("path", "file", "content")
    return (
        files.groupBy("stem")
        .agg(F.min(by_path).alias("f"))
        .select(F.col("stem").alias("key"), F.col("f.file").alias("file"), F.col("f.content").alias("content"))
    )


def attach_folder(rows, files):
    """Rows joined to the folder's files: the image column's file name, else the cover id."""
    image_name = F.regexp_replace(F.regexp_extract(F.col("image"), r"([^/]+)$", 1), r"(?i)(-[sml])?\.[a-z0-9]+$", "")
    key = F.coalesce(F.when(F.col("image").isNotNull(), image_name), F.col("cover_id").cast("string"))
    keyed = rows.withColumn("_key", key)
    return keyed.join(files, keyed["_key"] == files["key"], "left").select("id", "cover_id", "image", F.col("content"))


def embedding_udf(model_spec, fetcher, batch_size, threads, fetch_seconds, encode_seconds):
    def on_batch(fetching, encoding, rows):
        fetch_seconds.add(fetching)
        encode_seconds.add(encoding)

    @F.pandas_udf(EMBEDDING)
    def embed(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        return clip.embed_image_batches(batches, model_spec, fetcher, batch_size, threads, on_batch)

    return embed


def embed(rows, embed_udf, model_name, prefetched=False):
    """The output columns, plus ``model_error`` (null, or why the model raised on the image: the
    row goes to the dead-letter output): one UDF call per row (the same call behind every field)."""
    columns = [F.col("cover_id"), F.col("image")] + ([F.col("content")] if prefetched else [])
    result = embed_udf(F.struct(*columns))
    return rows.select(
        "id",
        "cover_id",
        result.getField("vector").alias("vector"),
        F.lit(model_name).alias("model"),
        result.getField("model_fingerprint").alias("model_fingerprint"),
        result.getField("image_sha256").alias("image_sha256"),
        result.getField("error").alias("error"),
        result.getField("model_error").alias("model_error"),
    )


def outcome_counts(spark, target):
    """Embedded / failed counts and failures per reason, from the written output's ``error``
    column (a small second read: the UDF does not run again)."""
    reason = F.substring_index(F.col("error"), ":", 1)
    rows = spark.read.parquet(target).groupBy(reason.alias("reason")).count().collect()
    reasons = {r: 0 for r in images.REASONS}
    embedded = 0
    for row in rows:
        if row["reason"] is None:
            embedded += row["count"]
        else:
            reasons[row["reason"]] = reasons.get(row["reason"], 0) + row["count"]
    return embedded, sum(reasons.values()), reasons


# --------------------------------------------------------------------------- the job
def run(spark, args, warehouse, watch):
    source, target = warehouse.path(args.input), warehouse.path(args.output)
    remote_folder = is_hadoop_uri(args.images_dir) if args.images_dir else False
    images_dir = None
    if args.images_dir:
        images_dir = warehouse.path(args.images_dir) if remote_folder else local_dir(args.images_dir)
        if not remote_folder and not os.path.isdir(images_dir):
            raise FileNotFoundError(f"--images-dir {images_dir} is not a folder")
    fetcher = images.ImageFetcher(
        images_dir=None if remote_folder else images_dir,
        url_template=None if images_dir else args.url_template,
        timeout=args.timeout,
        retries=args.retries,
        backoff=args.retry_backoff,
        threads=args.fetch_threads,
        max_bytes=args.max_image_bytes,
        joined_dir=images_dir if remote_folder else None,
    )
    model = warmup.prepare_model(spark, args, KIND, DEFAULT_ARROW_BATCH, watch)
    fetch_seconds = spark.sparkContext.accumulator(0.0)
    encode_seconds = spark.sparkContext.accumulator(0.0)
    observed = Observation("embed_images_input")
    rows = read_image_rows(spark, source, args.input_format, args, observed)
    if remote_folder:
        rows = attach_folder(rows, folder_images(spark, images_dir))
    rows = rows.repartition(model["partitions"])  # round-robin: equal shares for every task slot
    udf = embedding_udf(model["spec"], fetcher, args.batch_size, args.torch_threads, fetch_seconds, encode_seconds)
    dead_letter = poison.location(args, warehouse, target)
    with watch.stage("embed"):  # read + fetch + encode + write; the dead-letter rows from disk
        outcome = poison.write_split(
            spark,
            embed(rows, udf, model["name"], remote_folder),
            OUTPUT_COLUMNS,
            target,
            dead_letter,
            JOB,
            error_column="model_error",
        )
    counts = observed.get
    poison.check_budget(outcome["rows_dead_lettered"], counts["rows_in"], args.max_error_rate, dead_letter)
    with watch.stage("count"):
        embedded, failed, reasons = outcome_counts(spark, target)
    seconds = watch.seconds["embed"]
    return {
        "input": source,
        "outputs": {"embeddings": target, "dead_letter": outcome["dead_letter"]},
        "images": {
            "images_dir": images_dir,
            "url_template": fetcher.url_template,
            "image_column": args.image_column,
        },
        "model": model["name"],
        "model_fingerprint": model["fingerprint"],
        "rows_in": counts["rows_in"],
        "rows_skipped_no_image": counts["rows_no_image"] or 0,
        "images_embedded": embedded,
        "images_failed": failed,
        "failure_reasons": {r: n for r, n in reasons.items() if n},
        "rows_dead_lettered": outcome["rows_dead_lettered"],
        "dead_letter_reasons": outcome["dead_letter_reasons"],
        "max_error_rate": args.max_error_rate,
        "partitions": model["partitions"],
        "arrow_batch_size": model["arrow_batch_size"],
        "executor_model_fingerprints": model["executor_fingerprints"],
        "fetch_task_seconds": round(fetch_seconds.value, 3),
        "encode_task_seconds": round(encode_seconds.value, 3),
        "images_per_second": round(embedded / seconds, 2) if seconds else None,
    }


def main(argv=None):
    return job.run_job(JOB, parse_args(argv), run, requires=REQUIRES)


if __name__ == "__main__":
    main()
