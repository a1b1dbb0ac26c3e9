"""Read a table by its extension (Parquet, CSV, JSONL); write Parquet with mode overwrite."""

import os

FORMATS = {
    ".parquet": "parquet",
    ".pq": "parquet",
    ".csv": "csv",
    ".tsv": "csv",
    ".jsonl": "json",
    ".ndjson": "json",
    ".json": "json",
}


def detect_format(path):
    """Format from the extension of the path (a file or a folder like ``books.parquet``)."""
    base = path.rstrip("/").rsplit("/", 1)[-1]
    for suffix in (".gz", ".bz2", ".zst"):  # compressed text: look at the inner extension
        if base.endswith(suffix):
            base = base[: -len(suffix)]
    ext = os.path.splitext(base)[1].lower()
    if ext not in FORMATS:
        raise ValueError(
            "cannot tell the format of {!r} from its extension; use one of {} or pass --input-format".format(
                path, ", ".join(sorted(FORMATS))
            )
        )
    return FORMATS[ext]


def read_table(spark, path, fmt=None):
    fmt = fmt or detect_format(path)
    reader = spark.read
    if fmt == "csv":
        # A header row names the columns; values stay strings (ids must not turn into doubles).
        # multiLine: texts may hold quoted newlines (the price: one task per file).
        sep = "\t" if path.rstrip("/").endswith((".tsv", ".tsv.gz")) else ","
        reader = reader.option("header", "true").option("sep", sep).option("multiLine", "true")
        reader = reader.option("escape", '"')
    return reader.format(fmt).load(path)


def write_parquet(df, path):
    """Overwrite: a re-run of the same run replaces its output instead of adding rows."""
    df.write.mode("overwrite").parquet(path)


def read_text_rows(spark, path, fmt, id_column, text_column, observation):
    """``id``, ``text`` of a table. Rows with a null text are counted into ``observation``
    (``rows_in``, ``rows_null_text``: gathered during the job's one action, no extra pass) and
    dropped: there is nothing to embed or transform."""
    from pyspark.sql import functions as F

    table = read_table(spark, path, fmt)
    rows = table.select(F.col(id_column).alias("id"), F.col(text_column).cast("string").alias("text"))
    rows = rows.observe(
        observation,
        F.count(F.lit(1)).alias("rows_in"),
        F.sum(F.col("text").isNull().cast("long")).alias("rows_null_text"),
    )
    return rows.where(F.col("text").isNotNull())
