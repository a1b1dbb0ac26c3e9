"""prepare_books: Open Library editions dump -> filtered books with the text to embed.

Input lines have 5 tab-separated columns (type, key, revision, last_modified, JSON). Lines that
cannot be read (wrong column count, bad JSON, no key, fields of the wrong type) go to the
quarantine output with the raw line and a reason; the job never fails on them.

    python -m spark_apps.jobs.prepare_books --input dump.txt.gz --output books.parquet \
        --quarantine quarantine.parquet --max-age-years 40
"""

import datetime
import os
import sys

try:
    import spark_apps  # noqa: F401
except ImportError:  # spark-submit spark_apps/jobs/<job>.py puts this folder, not the repo root, on sys.path
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from pyspark import StorageLevel
from pyspark.sql import functions as F
from pyspark.sql import types as T

from spark_apps.common import cli, io, job

JOB = "prepare_books"
N_COLUMNS = 5
CORRUPT = "_corrupt_record"
# Reasons, in the order they are checked: a line gets the first that applies.
REASONS = ("column_count", "bad_json", "missing_key", "wrong_type")
_KEY = T.StructType([T.StructField("key", T.StringType())])

#: The edition fields we use, typed as Open Library's edition schema says. ``description`` is a
#: string or a {"type", "value"} object: as StringType, Spark keeps an object's raw JSON text.
EDITION_SCHEMA = T.StructType(
    [
        T.StructField("key", T.StringType()),
        T.StructField("title", T.StringType()),
        T.StructField("subtitle", T.StringType()),
        T.StructField("description", T.StringType()),
        T.StructField("subjects", T.ArrayType(T.StringType())),
        T.StructField("languages", T.ArrayType(_KEY)),
        T.StructField("number_of_pages", T.DoubleType()),  # the schema says "number"
        T.StructField("publish_date", T.StringType()),
        T.StructField("covers", T.ArrayType(T.LongType())),
        T.StructField("authors", T.ArrayType(_KEY)),
        T.StructField("works", T.ArrayType(_KEY)),
        T.StructField("by_statement", T.StringType()),
    ]
)
FIELDS = EDITION_SCHEMA.fieldNames()
# Every field as a string: a parse that only fails on broken JSON, to tell it from wrong types.
RAW_SCHEMA = T.StructType([T.StructField(f, T.StringType()) for f in FIELDS] + [T.StructField(CORRUPT, T.StringType())])
_PARSE_OPTIONS = {"mode": "PERMISSIVE", "columnNameOfCorruptRecord": CORRUPT}
_YEAR_RE = r"(?<![0-9])([0-9]{4})(?![0-9])"  # first 4-digit number: "May 12, 1999", "c1999"
BOOK_COLUMNS = (
    "id",
    "title",
    "subtitle",
    "description",
    "subjects",
    "languages",
    "number_of_pages",
    "publish_date",
    "publish_year",
    "cover_ids",
    "author_keys",
    "work_keys",
    "author",
    "text",
)
# by_statement clean-up: its first part (before " ; ": illustrators, translators follow), without
# a leading "by", brackets, "with an introduction by ..." and trailing punctuation.
_BY_PREFIX_RE = r"(?i)^\s*by\s+"
_BY_TAIL_RE = r"(?i)(^|\s*,?\s+)with\s+(a|an)\s+(new\s+)?(introduction|foreword|preface|afterword)\b.*$"
_BY_TRIM_RE = r"^[\s\[\]().,:;/-]+|[\s\[\]().,:;/-]+$"


def parse_args(argv=None):
    parser = cli.base_parser("prepare_books", __doc__.split("\n\n")[0])
    parser.add_argument("--quarantine", help="output for malformed lines; default: <output>_quarantine.parquet")
    parser.add_argument(
        "--languages",
        nargs="+",
        default=["eng"],
        help="MARC language codes to keep (space or comma separated); '*' keeps any",
    )
    parser.add_argument(
        "--min-pages",
        type=cli.optional_int,
        default=100,
        help="keep books with strictly more pages; 'none' keeps any page count",
    )
    parser.add_argument(
        "--subject",
        type=cli.optional_text,
        default="fiction",
        help="keep books with a subject containing this (case-insensitive); '*' keeps any",
    )
    parser.add_argument(
        "--max-age-years",
        type=cli.optional_int,
        default=10,
        help="keep books published in the last N years: publish_year >= reference year - N; 'none' keeps any year",
    )
    parser.add_argument(
        "--reference-year",
        type=cli.optional_int,
        default=None,
        help="year the age is counted from; default: the current year",
    )
    parser.add_argument("--limit", type=cli.optional_int, default=None, help="read at most N lines")
    parser.add_argument(
        "--authors",
        type=cli.optional_text,
        default=None,
        help="Open Library authors dump (same 5-column format; a file, folder or glob): names for the "
        "books whose edition has no by_statement, by their author keys; default: none",
    )
    args = parser.parse_args(argv)
    args.languages = cli.word_list(args.languages)
    if args.reference_year is None:
        args.reference_year = datetime.date.today().year
    if not args.quarantine:
        base = args.output.rstrip("/")
        base = base[: -len(".parquet")] if base.endswith(".parquet") else base
        args.quarantine = base + "_quarantine.parquet"
    return args


# --------------------------------------------------------------------------- transformations
def read_lines(spark, path, limit=None):
    """Dump lines (plain or .gz; a file, folder or glob) with the file each came from."""
    lines = spark.read.text(path).select(
        F.col("value").alias("line"), F.col("_metadata.file_path").alias("source_file")
    )
    return lines.limit(limit) if limit else lines


def split_columns(lines):
    parts = F.split(F.col("line"), "\t", -1)
    return lines.select(
        "line",
        "source_file",
        F.size(parts).alias("n_columns"),
        F.when(F.size(parts) == N_COLUMNS, parts.getItem(N_COLUMNS - 1)).alias("json"),
    )


def parse_json(rows):
    """``edition``: the typed fields; ``raw``: the same fields as JSON text (null only when a
    field is absent or null), used to name the fields whose type is wrong."""
    typed_schema = T.StructType(EDITION_SCHEMA.fields + [T.StructField(CORRUPT, T.StringType())])
    return rows.select(
        "line",
        "source_file",
        "n_columns",
        F.from_json("json", typed_schema, _PARSE_OPTIONS).alias("edition"),
        F.from_json("json", RAW_SCHEMA, _PARSE_OPTIONS).alias("raw"),
    )


def classify(parsed):
    """Add ``reason`` (null for a readable edition) and ``detail`` (the wrongly typed fields)."""
    raw, edition = F.col("raw"), F.col("edition")
    bad_json = raw.isNull() | raw.getField(CORRUPT).isNotNull()
    wrong = [F.when(raw.getField(f).isNotNull() & edition.getField(f).isNull(), F.lit(f)) for f in FIELDS]
    wrong_fields = F.concat_ws(",", *wrong)
    key = edition.getField("key")
    reason = (
        F.when(F.col("n_columns") != N_COLUMNS, F.lit("column_count"))
        .when(bad_json, F.lit("bad_json"))
        .when(key.isNull() | (F.trim(key) == ""), F.lit("missing_key"))
        .when(wrong_fields != "", F.lit("wrong_type"))
    )
    detail = F.when(F.col("n_columns") != N_COLUMNS, F.format_string("%d columns", F.col("n_columns"))).when(
        reason == "wrong_type", wrong_fields
    )
    return parsed.select("line", "source_file", "edition", reason.alias("reason"), detail.alias("detail"))


def _blank_to_null(column):
    return F.when(F.trim(column) != "", F.trim(column))


def text_block(column):
    """Open Library text: a plain string, or an object {"type": "/type/text", "value": ...}."""
    looks_like_object = column.startswith("{")
    value = F.get_json_object(column, "$.value")
    is_object = looks_like_object & (value.isNotNull() | F.get_json_object(column, "$.type").isNotNull())
    return _blank_to_null(F.when(is_object, value).otherwise(column))


def _keys(column):
    return F.filter(F.transform(column, lambda item: item.getField("key")), lambda k: k.isNotNull())


def extract_book(editions):
    """The book columns from the parsed ``edition`` struct (classification columns kept)."""
    e = F.col("edition")
    pages = e.getField("number_of_pages")
    year = F.regexp_extract(e.getField("publish_date"), _YEAR_RE, 1)
    no_strings = F.array().cast("array<string>")
    return editions.select(
        "line",
        "source_file",
        "reason",
        "detail",
        e.getField("key").alias("id"),
        _blank_to_null(e.getField("title")).alias("title"),
        _blank_to_null(e.getField("subtitle")).alias("subtitle"),
        text_block(e.getField("description")).alias("description"),
        F.coalesce(F.filter(e.getField("subjects"), lambda s: F.trim(s) != ""), no_strings).alias("subjects"),
        F.coalesce(
            F.transform(_keys(e.getField("languages")), lambda k: F.regexp_extract(k, "([^/]+)$", 1)),
            no_strings,
        ).alias("languages"),
        # Guarded casts: Spark 4 runs ANSI SQL, where an out-of-range cast raises.
        F.when(pages.between(0, 1e9), pages.cast("int")).alias("number_of_pages"),
        e.getField("publish_date").alias("publish_date"),
        F.when(year != "", year.cast("int")).alias("publish_year"),
        F.coalesce(F.filter(e.getField("covers"), lambda c: c > 0), F.array().cast("array<bigint>")).alias("cover_ids"),
        F.coalesce(_keys(e.getField("authors")), no_strings).alias("author_keys"),
        F.coalesce(_keys(e.getField("works")), no_strings).alias("work_keys"),
        clean_by_statement(e.getField("by_statement")).alias("author"),
    )


def clean_by_statement(column):
    """A display name from an edition's ``by_statement`` ("by Robb Armstrong." -> "Robb
    Armstrong"; "Andrew Matthews ; illustrated by ..." -> "Andrew Matthews"); null when empty."""
    first = F.split(column, r"\s*;\s*", 2).getItem(0)
    name = F.regexp_replace(F.regexp_replace(first, _BY_TAIL_RE, ""), _BY_PREFIX_RE, "")
    return _blank_to_null(F.regexp_replace(F.regexp_replace(name, "[\\[\\]]", ""), _BY_TRIM_RE, ""))


def author_names(spark, path):
    """``key``, ``name`` of every author in an Open Library authors dump (lines with 5 columns
    and a JSON ``name``; others are ignored: this is a lookup, not an input to account for)."""
    parts = F.split(F.col("value"), "\t", -1)
    json_text = parts.getItem(N_COLUMNS - 1)
    rows = (
        spark.read.text(path)
        .where(F.size(parts) == N_COLUMNS)
        .select(
            F.get_json_object(json_text, "$.key").alias("key"),
            _blank_to_null(F.get_json_object(json_text, "$.name")).alias("name"),
        )
    )
    return rows.where(F.col("key").isNotNull() & F.col("name").isNotNull()).dropDuplicates(["key"])


def with_dump_authors(books, authors):
    """Fill ``author`` where it is null from the authors dump: the names of the book's author
    keys, in the edition's order, joined by ", " (keys the dump lacks are left out)."""
    keys = books.where(F.col("author").isNull()).select("id", F.posexplode("author_keys").alias("pos", "key"))
    named = (
        keys.join(authors, "key")
        .groupBy("id")
        .agg(
            F.array_join(
                F.transform(F.array_sort(F.collect_list(F.struct("pos", "name"))), lambda s: s.getField("name")), ", "
            ).alias("_dump_author")
        )
    )
    joined = books.join(named, "id", "left")
    return joined.select(
        *[F.coalesce("author", "_dump_author").alias(c) if c == "author" else F.col(c) for c in books.columns]
    )


def with_text(books):
    """``text`` to embed: "title: subtitle", the description, the subjects; missing parts skipped."""
    subjects = F.when(F.size("subjects") > 0, F.concat(F.lit("Subjects: "), F.array_join("subjects", ", ")))
    return books.withColumn(
        "text",
        F.concat_ws("\n", F.concat_ws(": ", "title", "subtitle"), F.col("description"), subjects),
    )


def filter_flags(books, args):
    """One boolean per filter (null-safe: a missing value fails the filter); None = no filter."""
    flags = {}
    if args.languages:
        wanted = F.array(*[F.lit(code) for code in args.languages])
        flags["language"] = F.coalesce(F.arrays_overlap("languages", wanted), F.lit(False))
    if args.min_pages is not None:
        flags["pages"] = F.coalesce(F.col("number_of_pages") > args.min_pages, F.lit(False))
    if args.subject:
        needle = args.subject.lower()
        flags["subject"] = F.exists("subjects", lambda s: F.lower(s).contains(needle))
    if args.max_age_years is not None:
        oldest = args.reference_year - args.max_age_years
        flags["age"] = F.coalesce(F.col("publish_year") >= oldest, F.lit(False))
    return flags


def outcome(books, flags):
    """Per line: ``status`` (kept / filtered / quarantined), the filter flags, and only what
    the outputs need (the book for kept rows, the raw line for quarantined ones), so the
    persisted frame stays small even when most of a 40 GB dump is filtered out."""
    kept = F.lit(True)
    for flag in flags.values():
        kept = kept & flag
    valid = F.col("reason").isNull()
    status = F.when(~valid, F.lit("quarantined")).when(kept, F.lit("kept")).otherwise(F.lit("filtered"))
    book = F.struct(*[F.col(c) for c in BOOK_COLUMNS])
    return books.select(
        status.alias("status"),
        "reason",
        "detail",
        F.when(~valid, F.col("line")).alias("line"),
        F.when(~valid, F.col("source_file")).alias("source_file"),
        F.when(valid & kept, book).alias("book"),
        *[F.when(valid, ~flag).alias("fails_" + name) for name, flag in flags.items()],
    )


def summarize(outcomes, filter_names):
    """Counts per status and reason, and per failed filter: an aggregation, not a collect."""
    aggregations = [F.count(F.lit(1)).alias("rows")]
    aggregations += [F.sum(F.col("fails_" + n).cast("long")).alias(n) for n in filter_names]
    rows = outcomes.groupBy("status", "reason").agg(*aggregations).collect()
    counts = {"kept": 0, "filtered": 0, "quarantined": 0}
    reasons = {r: 0 for r in REASONS}
    failed = {n: 0 for n in filter_names}
    for row in rows:
        counts[row["status"]] += row["rows"]
        if row["reason"]:
            reasons[row["reason"]] += row["rows"]
        for name in filter_names:
            failed[name] += row[name] or 0
    return {
        "rows_read": sum(counts.values()),
        "rows_kept": counts["kept"],
        "rows_filtered_out": counts["filtered"],
        "rows_quarantined": counts["quarantined"],
        "quarantine_reasons": reasons,
        "failed_filter": failed,
    }


# --------------------------------------------------------------------------- the job
def run(spark, args, warehouse, watch):
    source = warehouse.path(args.input)
    outputs = {"books": warehouse.path(args.output), "quarantine": warehouse.path(args.quarantine)}
    with watch.stage("read_parse"):
        rows = classify(parse_json(split_columns(read_lines(spark, source, args.limit))))
        books = with_text(extract_book(rows))
        flags = filter_flags(books, args)
        # Persisted: the counts, the books and the quarantine all come from one read of the dump.
        outcomes = outcome(books, flags).persist(StorageLevel.MEMORY_AND_DISK)
        counts = summarize(outcomes, list(flags))
    with watch.stage("write_books"):
        kept = outcomes.where(F.col("status") == "kept").select("book.*")
        if args.authors:
            kept = with_dump_authors(kept, author_names(spark, warehouse.path(args.authors)))
        io.write_parquet(kept, outputs["books"])
    with watch.stage("count_authors"):  # one column of the small output: no second pass over the dump
        with_author = spark.read.parquet(outputs["books"]).where(F.col("author").isNotNull()).count()
    with watch.stage("write_quarantine"):
        quarantined = outcomes.where(F.col("status") == "quarantined")
        io.write_parquet(quarantined.select("line", "reason", "detail", "source_file"), outputs["quarantine"])
    outcomes.unpersist()
    counts.update(
        {
            "rows_with_author": with_author,
            "input": source,
            "outputs": outputs,
            "filters": {
                "languages": args.languages,
                "min_pages": args.min_pages,
                "subject": args.subject,
                "max_age_years": args.max_age_years,
                "reference_year": args.reference_year,
                "limit": args.limit,
            },
            "authors_dump": warehouse.path(args.authors) if args.authors else None,
        }
    )
    return counts


def main(argv=None):
    return job.run_job(JOB, parse_args(argv), run)


if __name__ == "__main__":
    main()
