"""Options every job shares, and how ``--input``/``--output`` paths are resolved.

See docs/CONTRACTS.md: a relative path is resolved against the warehouse root (``extra.root``
of ``--warehouse-conn-id``) when one is given, otherwise against the current directory.
"""

import argparse
import os
import re
from urllib.parse import urlsplit

from spark_apps.common import io, secrets

_URI_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_NONE_WORDS = ("", "none", "null", "any", "*")


def base_parser(prog, description):
    parser = argparse.ArgumentParser(
        prog=prog, description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    common = parser.add_argument_group("common options")
    common.add_argument("--master", help="Spark master URL; default: spark-submit's, else local[*]")
    common.add_argument("--input", required=True, help="input path or URI")
    common.add_argument("--output", required=True, help="output path or URI (overwritten)")
    common.add_argument(
        "--warehouse-conn-id",
        help="Airflow connection id resolved from $SPINDLE_SECRETS_SOURCE; its extra.root is the "
        "root of relative paths, its login/password the store's credentials",
    )
    common.add_argument(
        "--metrics-output",
        help="also write the job's metrics as JSON to this path or URI (cloud tasks read them "
        "from object storage: a cluster-mode driver's stdout reaches no one in time)",
    )
    common.add_argument(
        "--progress-output",
        help="while the job runs, write its stages (tasks done/total, rows) as JSON to this path or "
        "URI every --progress-interval seconds: a cloud task logs progress from there",
    )
    common.add_argument(
        "--progress-interval", type=float, default=10.0, help="seconds between two --progress-output writes"
    )
    common.add_argument("--app-name", help="Spark application name; default: spindle.<job>")
    common.add_argument(
        "--conf",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra Spark property (repeatable); spark-submit --conf works as well",
    )
    return parser


def add_model_options(parser, batch_size, text_column=True):
    """Options of the model jobs (embed_text, llm_transform, embed_images); returns the group.
    ``text_column``: whether the job reads a text column (``--text-column``)."""
    group = parser.add_argument_group("model options")
    group.add_argument(
        "--input-format",
        choices=sorted(set(io.FORMATS.values())),
        help="input format; default: from the --input extension (.parquet, .csv, .jsonl)",
    )
    group.add_argument("--id-column", default="id", help="input column copied to the output as id")
    if text_column:
        group.add_argument("--text-column", default="text", help="input column with the text")
    group.add_argument(
        "--model",
        required=True,
        help="model directory saved with save_pretrained, a .zip/.tar.gz of one (shipped with the "
        "job), or the name of an archive shipped with spark-submit --archives; never a hub id",
    )
    group.add_argument(
        "--model-name", help="model name written to the output; default: the model card's title or the dir name"
    )
    group.add_argument(
        "--batch-size",
        type=positive_int,
        default=batch_size,
        help="rows per model call inside each Arrow batch",
    )
    group.add_argument(
        "--arrow-batch-size",
        type=positive_int,
        default=None,
        help="rows per Arrow batch handed to the UDF (spark.sql.execution.arrow.maxRecordsPerBatch); "
        "default: the job's tuned value",
    )
    group.add_argument(
        "--partitions",
        type=positive_int,
        default=None,
        help="partitions the rows are spread over; default: one per task slot "
        "(spark.default.parallelism / spark.task.cpus), so every core stays busy",
    )
    group.add_argument(
        "--no-warm-up",
        action="store_true",
        help="skip the stage that loads the model in every Python worker before the main stage",
    )
    group.add_argument(
        "--torch-threads", type=positive_int, default=None, help="torch threads per task; default: spark.task.cpus"
    )
    group.add_argument(
        "--dead-letter",
        default=None,
        help="Parquet for the rows the model raised on (id, error, job, model, model_fingerprint); "
        "default: <output without .parquet>.dead_letter.parquet",
    )
    group.add_argument(
        "--max-error-rate",
        type=fraction,
        default=0.01,
        help="fail the job when more than this fraction of the rows in were dead-lettered (0: any row)",
    )
    return group


def positive_int(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def fraction(text):
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {value}")
    return value


def optional_int(text):
    """An int, or None for ``none``/``any``/empty: lets a caller switch a filter off."""
    if text is None or text.strip().lower() in _NONE_WORDS:
        return None
    return int(text)


def optional_text(text):
    return None if text is None or text.strip().lower() in _NONE_WORDS else text


def word_list(values):
    """``["eng,fre", "ger"]`` -> ``["eng", "fre", "ger"]``; None for ``*``/``any``."""
    words = [w.strip() for v in (values or []) for w in v.split(",") if w.strip()]
    if not words or any(w.lower() in _NONE_WORDS for w in words):
        return None
    return words


def spark_conf_pairs(pairs):
    conf = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise argparse.ArgumentTypeError(f"--conf expects KEY=VALUE, got {pair!r}")
        conf[key.strip()] = value
    return conf


def is_uri(path):
    return bool(_URI_RE.match(path))


def resolve_path(path, root=None):
    """URIs and absolute paths stay; relative ones go under ``root``, else become absolute
    (a standalone cluster's executors have another working directory than the driver)."""
    if is_uri(path) or os.path.isabs(path):
        return path
    if root:
        if is_uri(root):
            return root.rstrip("/") + "/" + path
        return os.path.join(os.path.abspath(root), path)
    return os.path.abspath(path)


class Warehouse:
    """The warehouse a job reads and writes: a root and (optionally) its connection."""

    def __init__(self, root=None, connection=None):
        self.root = root
        self.connection = connection

    @classmethod
    def from_args(cls, args):
        if not getattr(args, "warehouse_conn_id", None):
            return cls()
        conn = secrets.get_connection(args.warehouse_conn_id)
        root = conn.extra.get("root")
        if not root:
            raise secrets.SecretsError(f"connection {conn.conn_id!r} has no extra.root")
        return cls(root, conn)

    def path(self, path):
        return resolve_path(path, self.root)

    def configure(self, spark):
        """Give the driver's Hadoop configuration the store's credentials (S3A keys for an
        ``s3a://`` root, scoped to its bucket). Set here, never on a command line or in a
        Spark property, so they show up neither in process lists nor in the Spark UI."""
        conn = self.connection
        if not conn or not self.root or not conn.login:
            return
        parts = urlsplit(self.root)
        if parts.scheme != "s3a":
            return
        hadoop = spark.sparkContext._jsc.hadoopConfiguration()
        prefix = f"fs.s3a.bucket.{parts.netloc}."
        hadoop.set(prefix + "access.key", conn.login)
        hadoop.set(prefix + "secret.key", conn.password or "")
        endpoint = conn.extra.get("endpoint_url") or conn.extra.get("endpoint") or conn.host
        if endpoint:
            hadoop.set(prefix + "endpoint", endpoint)
