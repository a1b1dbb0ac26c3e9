"""What a team would write without Spindle: the approaches of the brief's stories, re-implemented
honestly so ``bench/run.py`` can measure them side by side with the embed_text job.

Every approach reads the same Parquet (``id``, ``text``), spreads it over the same partitions
as the job (one per task slot: the comparison is about the UDF, not the partitioning), applies
the model and writes Parquet (``id`` + ``vector`` or ``label``), in one Spark action, on the
same master and with the same torch thread count the job gets (Spark sets ``OMP_NUM_THREADS``
to ``spark.task.cpus`` in Python workers; nothing here changes it).

- ``row``: a plain Python UDF calling ``model.encode(text)`` once per row; the model is loaded
  once per Python worker (a module-level cache), i.e. story 3's *fixed* version of row by row.
- ``row-load-per-call``: the same UDF loading the model inside the function, on every row: the
  naive version story 3 warns about. Measured on a small subset only.
- ``broadcast``: story 1's pandas UDF (Series -> Series) with the ``SentenceTransformer`` object
  shipped through ``sparkContext.broadcast`` and ``encode(batch_size=...)`` per Arrow batch
  (Spark's default ``maxRecordsPerBatch``, 10,000).
- ``predict-batch``: ``pyspark.ml.functions.predict_batch_udf`` with a ``make_predict_fn`` that
  loads the model (cached per Python worker by Spark) and ``batch_size`` rows per call.
- ``llm-row``: a plain Python UDF calling ``generate`` on one prompt per row (model and
  tokenizer loaded once per Python worker), greedy, as llm_transform does.

Before the timed action each approach runs the same tiny warm-up action the job runs (one row
per task slot), so the timed action finds the model loaded where the approach caches it, as the
job's embed stage does. Run as a script it runs the approaches named in ``--approach`` one after
the other in one Spark application and prints one ``BENCH_RESULT {json}`` line for each:

    python bench/baselines.py --approach broadcast,predict-batch --input s.parquet --output o.parquet \
        --model DIR --master local[2]
"""

import argparse
import json
import os
import sys
import time

APPROACHES = ("row", "row-load-per-call", "broadcast", "predict-batch", "llm-row")
RESULT_PREFIX = "BENCH_RESULT "

_CACHE = {}  # model dir -> loaded model: one per Python worker (this module is shipped by reference)


# ----------------------------------------------------------------------------- model calls
def load_sentence_transformer(model_dir):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(model_dir, device="cpu", local_files_only=True)


def cached_sentence_transformer(model_dir):
    if model_dir not in _CACHE:
        _CACHE[model_dir] = load_sentence_transformer(model_dir)
    return _CACHE[model_dir]


def encode_one(model, text):
    """One row, one ``encode`` call: what a row-at-a-time UDF does."""
    return model.encode(text, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False).tolist()


def encode_many(model, texts, batch_size):
    return model.encode(
        list(texts), batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False
    )


def cached_seq2seq(model_dir):
    if model_dir not in _CACHE:
        from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
        model = AutoModelForSeq2SeqLM.from_pretrained(model_dir, local_files_only=True).eval()
        _CACHE[model_dir] = (tokenizer, model)
    return _CACHE[model_dir]


def generate_one(tokenizer, model, prompt, max_new_tokens, max_input_tokens=512, min_new_tokens=0):
    """One prompt, one ``generate`` call, greedy (the same decoding llm_transform uses);
    ``min_new_tokens`` > 0 forbids the end token before that many (equal work in benchmarks)."""
    import torch

    encoded = tokenizer([prompt], return_tensors="pt", truncation=True, max_length=max_input_tokens)
    with torch.inference_mode():
        generated = model.generate(
            input_ids=encoded["input_ids"],
            attention_mask=encoded["attention_mask"],
            max_new_tokens=max_new_tokens,
            do_sample=False,
            num_beams=1,
            **({"min_new_tokens": min_new_tokens} if min_new_tokens else {}),
        )
    return tokenizer.decode(generated[0], skip_special_tokens=True).strip()


# ----------------------------------------------------------------------------- the UDFs
def row_udf(model_dir, load_per_call=False):
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    def embed(text):
        model = load_sentence_transformer(model_dir) if load_per_call else cached_sentence_transformer(model_dir)
        return encode_one(model, text)

    return F.udf(embed, T.ArrayType(T.FloatType()))


def broadcast_udf(spark, model_dir, batch_size):
    import pandas as pd
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    shared = spark.sparkContext.broadcast(load_sentence_transformer(model_dir))

    @F.pandas_udf(T.ArrayType(T.FloatType()))
    def embed(texts: pd.Series) -> pd.Series:
        return pd.Series(list(encode_many(shared.value, texts, batch_size)))

    return embed


def predict_batch(model_dir, batch_size):
    from pyspark.ml.functions import predict_batch_udf
    from pyspark.sql import types as T

    def make_predict_fn():
        model = load_sentence_transformer(model_dir)

        def predict(texts):
            return encode_many(model, texts, batch_size)

        return predict

    return predict_batch_udf(make_predict_fn, return_type=T.ArrayType(T.FloatType()), batch_size=batch_size)


def llm_row_udf(model_dir, max_new_tokens, min_new_tokens=0):
    from pyspark.sql import functions as F

    def label(prompt):
        tokenizer, model = cached_seq2seq(model_dir)
        return generate_one(tokenizer, model, prompt, max_new_tokens, min_new_tokens=min_new_tokens)

    return F.udf(label, "string")


def make_udf(spark, args):
    if args.approach in ("row", "row-load-per-call"):
        return row_udf(args.model, load_per_call=args.approach == "row-load-per-call")
    if args.approach == "broadcast":
        return broadcast_udf(spark, args.model, args.batch_size)
    if args.approach == "predict-batch":
        return predict_batch(args.model, args.batch_size)
    return llm_row_udf(args.model, args.max_new_tokens, args.min_new_tokens)


def apply(rows, udf, args):
    from pyspark.sql import functions as F

    if args.approach == "llm-row":
        template = args.prompt_template.split("{text}")
        prompt = F.concat(F.lit(template[0]), F.col("text"), F.lit("{text}".join(template[1:])))
        return rows.select("id", udf(prompt).alias("label"))
    return rows.select("id", udf(F.col("text")).alias("vector"))


# ----------------------------------------------------------------------------- one run
def run(args):
    """Each approach of ``args.approach`` (comma-separated) in turn, in one Spark application."""
    from pyspark.sql import SparkSession

    builder = SparkSession.builder.appName(f"spindle.bench.{args.approach}").master(args.master)
    for pair in args.conf:
        key, _, value = pair.partition("=")
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.addPyFile(os.path.abspath(__file__))  # UDFs pickled by reference: caches live per worker
    try:
        return [run_one(spark, args, approach) for approach in args.approach.split(",")]
    finally:
        spark.stop()


def run_one(spark, args, approach):
    args = argparse.Namespace(**dict(vars(args), approach=approach))
    limit = {"row": args.row_limit, "row-load-per-call": args.naive_limit}.get(approach) or args.limit
    slots = max(1, spark.sparkContext.defaultParallelism // int(spark.conf.get("spark.task.cpus", "1")))
    seconds = {}
    udf = make_udf(spark, args)
    rows = spark.read.parquet(args.input).select("id", "text")
    if limit:
        rows = rows.limit(limit)
    rows = rows.repartition(slots)
    if not args.no_warm_up and approach != "row-load-per-call":
        start = time.perf_counter()
        warm = spark.read.parquet(args.input).select("id", "text").limit(slots).repartition(slots)
        apply(warm, udf, args).write.mode("overwrite").format("noop").save()
        seconds["warm_up"] = time.perf_counter() - start
    output = f"{args.output}.{approach}"
    start = time.perf_counter()
    apply(rows, udf, args).write.mode("overwrite").parquet(output)
    seconds["action"] = time.perf_counter() - start
    count = spark.read.parquet(output).count()
    return {
        "approach": approach,
        "rows": count,
        "partitions": slots,
        "seconds": seconds,
        "rows_per_second": count / seconds["action"],
    }


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--approach", required=True, help="one of %s, or several, comma-separated" % ", ".join(APPROACHES)
    )
    parser.add_argument("--input", required=True, help="Parquet with id, text")
    parser.add_argument("--output", required=True)
    parser.add_argument("--model", required=True, help="model directory")
    parser.add_argument("--master", default="local[2]")
    parser.add_argument("--conf", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--batch-size", type=int, default=64, help="rows per model call (broadcast, predict-batch)")
    parser.add_argument("--limit", type=int, default=0, help="use only the first N rows (0: all)")
    parser.add_argument("--row-limit", type=int, default=0, help="--limit of the row approach")
    parser.add_argument("--naive-limit", type=int, default=0, help="--limit of the row-load-per-call approach")
    parser.add_argument("--max-new-tokens", type=int, default=8)
    parser.add_argument("--min-new-tokens", type=int, default=0, help="llm-row: no end token before this many")
    parser.add_argument("--prompt-template", default="sentiment of the text: {text}")
    parser.add_argument("--no-warm-up", action="store_true")
    args = parser.parse_args(argv)
    unknown = set(args.approach.split(",")) - set(APPROACHES)
    if unknown:
        parser.error("unknown approach(es): " + ", ".join(sorted(unknown)))
    return args


def main(argv=None):
    results = run(parse_args(argv))
    for result in results:
        print(RESULT_PREFIX + json.dumps(result, sort_keys=True))
    return results


if __name__ == "__main__":
    # Import this file as the module ``baselines`` (not ``__main__``), so cloudpickle ships the UDFs
    # by reference and the model caches above live in the Python workers across tasks.
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import baselines

    baselines.main()
