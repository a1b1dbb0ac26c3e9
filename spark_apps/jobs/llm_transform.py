"""llm_transform: a seq2seq model (flan-t5 family) applied to a text column with a prompt.

``AutoTokenizer`` + ``AutoModelForSeq2SeqLM.generate`` (greedy, deterministic) in an iterator
pandas UDF: loaded once per Python worker, batched per Arrow batch. Output Parquet: id, text,
the output column (default ``label``), model, model_fingerprint.

    python -m spark_apps.jobs.llm_transform --input sentences.jsonl --output labels.parquet \
        --model /models/flan-t5-small --prompt-template "sentiment of the text: {text}"

``--engine ctranslate2`` runs the same greedy decoding with CTranslate2 (int8 by default) on a
model converted once with ``python -m spark_apps.common.ct2 convert MODEL_DIR OUT_DIR``.
"""

import os
import sys

try:
    import spark_apps  # noqa: F401
except ImportError:  # spark-submit spark_apps/jobs/<job>.py puts this folder, not the repo root, on sys.path
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import re
from typing import Iterator

import pandas as pd
from pyspark.sql import Observation
from pyspark.sql import functions as F
from pyspark.sql import types as T

from spark_apps.common import cli, inference, io, job, poison, warmup
from spark_apps.common.ct2 import COMPUTE_TYPES

JOB = "llm_transform"
# Checked on the driver before Spark starts: they come with the cluster environment.
REQUIRES = ("torch", "transformers")
ENGINE_REQUIRES = {"transformers": REQUIRES, "ctranslate2": ("ctranslate2", "transformers")}
PLACEHOLDER = "{text}"
DEFAULT_PROMPT = "sentiment of the text: {text}"
DEFAULT_ARROW_BATCH = 256  # generation is slow per row: smaller batches balance tasks better
RESERVED = ("id", "text", "model", "model_fingerprint")
GENERATED = T.StructType(
    [
        T.StructField("text", T.StringType()),
        T.StructField("model_fingerprint", T.StringType()),
        T.StructField("error", T.StringType()),  # generation raised on this row alone: dead-lettered
        T.StructField("truncated", T.BooleanType()),  # the prompt was cut to --max-input-tokens
    ]
)


def parse_args(argv=None):
    parser = cli.base_parser(JOB, __doc__.split("\n\n")[0])
    cli.add_model_options(parser, batch_size=16)
    group = parser.add_argument_group("generation options")
    group.add_argument(
        "--prompt-template", default=DEFAULT_PROMPT, help="prompt per row; every {text} is replaced by the row's text"
    )
    group.add_argument("--max-new-tokens", type=cli.positive_int, default=8, help="generated tokens per row, at most")
    group.add_argument(
        "--min-new-tokens", type=int, default=0, help="no end token before this many tokens (benchmarks: equal work)"
    )
    group.add_argument(
        "--engine",
        choices=sorted(ENGINE_REQUIRES),
        default="transformers",
        help="transformers generate, or CTranslate2 on a converted model (python -m spark_apps.common.ct2 convert)",
    )
    group.add_argument(
        "--compute-type", choices=COMPUTE_TYPES, default="int8", help="CTranslate2 compute type (--engine ctranslate2)"
    )
    group.add_argument(
        "--max-input-tokens", type=cli.positive_int, default=512, help="prompts are truncated to this many tokens"
    )
    group.add_argument("--output-column", default="label", help="column that receives the generated text")
    args = parser.parse_args(argv)
    if not 0 <= args.min_new_tokens <= args.max_new_tokens:
        parser.error("--min-new-tokens must be between 0 and --max-new-tokens")
    if PLACEHOLDER not in args.prompt_template:
        parser.error("--prompt-template must contain {text}")
    if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", args.output_column) or args.output_column in RESERVED:
        parser.error("--output-column must be an identifier other than " + ", ".join(RESERVED))
    return args


def prompt_column(template, text):
    """The template with every ``{text}`` replaced, built from Spark built-ins (no UDF). Other
    braces in the template are kept as they are, unlike ``str.format``."""
    parts = template.split(PLACEHOLDER)
    pieces = [F.lit(parts[0])]
    for part in parts[1:]:
        pieces += [text, F.lit(part)]
    return F.concat(*pieces)


def generation_udf(model_spec, args, generate_seconds):
    batch_size, max_new, max_input = args.batch_size, args.max_new_tokens, args.max_input_tokens
    threads, min_new, kind = args.torch_threads, args.min_new_tokens, engine_kind(args)

    def on_batch(seconds, rows):
        generate_seconds.add(seconds)

    @F.pandas_udf(GENERATED)
    def generate(prompts: Iterator[pd.Series]) -> Iterator[pd.DataFrame]:
        return inference.generate_batches(
            prompts, model_spec, batch_size, max_new, max_input, threads, on_batch, min_new, kind
        )

    return generate


def engine_kind(args):
    return inference.seq2seq_kind(args.engine, args.compute_type)


def output_columns(output_column):
    return ("id", "text", output_column, "model", "model_fingerprint")


def transform(rows, generate_udf, template, output_column, model_name):
    """The output columns, plus ``error`` (null, or why generation raised on the row: it goes to
    the dead-letter output) and ``truncated``."""
    result = generate_udf(prompt_column(template, F.col("text")))
    return rows.select(
        "id",
        "text",
        result.getField("text").alias(output_column),
        F.lit(model_name).alias("model"),
        result.getField("model_fingerprint").alias("model_fingerprint"),
        result.getField("error").alias("error"),
        result.getField("truncated").alias("truncated"),
    )


def run(spark, args, warehouse, watch):
    source, target = warehouse.path(args.input), warehouse.path(args.output)
    model = warmup.prepare_model(spark, args, engine_kind(args), DEFAULT_ARROW_BATCH, watch)
    generate_seconds = spark.sparkContext.accumulator(0.0)
    observed = Observation("llm_transform_input")
    rows = io.read_text_rows(spark, source, args.input_format, args.id_column, args.text_column, observed)
    rows = rows.repartition(model["partitions"])  # round-robin: equal shares for every task slot
    udf = generation_udf(model["spec"], args, generate_seconds)
    dead_letter = poison.location(args, warehouse, target)
    with watch.stage("transform"):  # read + generate + write; the dead-letter rows from disk
        outcome = poison.write_split(
            spark,
            transform(rows, udf, args.prompt_template, args.output_column, model["name"]),
            output_columns(args.output_column),
            target,
            dead_letter,
            JOB,
            extra=[("rows_truncated", F.col("truncated"))],
        )
    counts = observed.get
    dead = outcome["rows_dead_lettered"]
    poison.check_budget(dead, counts["rows_in"], args.max_error_rate, dead_letter)
    done = counts["rows_in"] - (counts["rows_null_text"] or 0) - dead
    seconds = watch.seconds["transform"]
    return {
        "input": source,
        "outputs": {"transformed": target, "dead_letter": outcome["dead_letter"]},
        "model": model["name"],
        "model_fingerprint": model["fingerprint"],
        "engine": args.engine,
        "compute_type": args.compute_type if args.engine == "ctranslate2" else None,
        "rows_in": counts["rows_in"],
        "rows_skipped_null_text": counts["rows_null_text"] or 0,
        "rows_transformed": done,
        "rows_dead_lettered": dead,
        "dead_letter_reasons": outcome["dead_letter_reasons"],
        "rows_truncated": outcome["rows_truncated"],
        "max_error_rate": args.max_error_rate,
        "partitions": model["partitions"],
        "arrow_batch_size": model["arrow_batch_size"],
        "executor_model_fingerprints": model["executor_fingerprints"],
        "generate_task_seconds": round(generate_seconds.value, 3),
        "rows_per_second": round(done / seconds, 2) if seconds else None,
    }


def main(argv=None):
    args = parse_args(argv)
    return job.run_job(JOB, args, run, requires=ENGINE_REQUIRES[args.engine])


if __name__ == "__main__":
    main()
