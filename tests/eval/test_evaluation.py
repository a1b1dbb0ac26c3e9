"""spindle.evaluation: benchmark parsing, metrics against scikit-learn, and the whole command
(embed_text job -> exact and Milvus search) reproducing the reference figures within 0.002."""

import json
import math

import numpy as np
import pytest
from sklearn.metrics import ndcg_score

from spindle import evaluation

STS_SPEARMAN = 0.8672  # bare all-MiniLM-L6-v2 (data/eval/PROVENANCE.md)
CRANFIELD_NDCG = 0.5128


def test_cranfield_is_read_as_documented():
    cran = evaluation.read_cranfield()
    assert len(cran["docs"]) == 1400 and len(cran["queries"]) == 225
    assert sorted(cran["qrels"], key=int) == [str(n) for n in range(1, 226)]  # queries by position
    assert cran["docs"]["1"].startswith("experimental investigation of the aerodynamics of a wing in a slipstream .")
    assert cran["queries"]["3"].startswith("what problems of heat conduction in composite slabs")  # .I 004
    with open(evaluation.CRANFIELD / "cranqrel") as handle:
        judged = sum(1 for line in handle if line.strip())
    assert sum(len(v) for v in cran["qrels"].values()) == judged


def test_ndcg_and_recall_match_independent_computations():
    rng = np.random.default_rng(3)
    docs = [str(i) for i in range(200)]
    relevant = {"3", "17", "42", "99", "150", "151", "152", "160", "170", "180", "190", "199"}
    scores = rng.random(200)
    scores[[3, 42, 160]] += 1.0  # a few relevant documents near the top
    ranked = [docs[j] for j in np.argsort(-scores)]
    truth = np.array([[1.0 if d in relevant else 0.0 for d in docs]])
    assert evaluation.ndcg_at_k(ranked, relevant, 10) == pytest.approx(
        ndcg_score(truth, scores[None, :], k=10), abs=1e-12
    )
    top = set(ranked[:10])
    assert evaluation.recall_at_k(ranked, relevant, 10) == len(top & relevant) / len(relevant)
    assert evaluation.ndcg_at_k(["a", "b"], {"b"}, 10) == pytest.approx(1 / math.log2(3))


def cranfield_subset(folder, queries=20, first_docs=100):
    """The first ``queries`` queries, their judged documents and the first ``first_docs``
    documents, copied verbatim (SMART records and judgement lines)."""
    source = evaluation.CRANFIELD
    qrels = [line for line in (source / "cranqrel").read_text().splitlines() if int(line.split()[0]) <= queries]
    keep = {line.split()[1] for line in qrels} | {str(i) for i in range(1, first_docs + 1)}
    docs = (source / "cran.all.1400").read_text().split("\n.I ")
    docs = [d for d in docs if d.lstrip(".I ").split("\n", 1)[0].strip() in keep]
    folder.mkdir()
    (folder / "cran.all.1400").write_text(docs[0] + "".join("\n.I " + d for d in docs[1:]))
    (folder / "cran.qry").write_text("\n.I ".join((source / "cran.qry").read_text().split("\n.I ")[:queries]))
    (folder / "cranqrel").write_text("\n".join(qrels) + "\n")
    return len(keep), {q: {l.split()[1] for l in qrels if l.split()[0] == q} for q in {l.split()[0] for l in qrels}}


def test_evaluation_command_on_a_subset_matches_independent_figures(tmp_path, capsys):
    """The command's plumbing (job -> vectors -> exact and Milvus HNSW search -> figures ->
    table, JSON, manifest) on a subset; the full benchmark is the README's command."""
    import pandas as pd

    n_docs, qrels = cranfield_subset(tmp_path / "cran")
    sts = tmp_path / "sts.csv"
    sts.write_text("".join(evaluation.STS_DEV.read_text(encoding="utf-8").splitlines(keepends=True)[:150]))
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps({"job": "embed_text", "evaluation": None}))
    results = evaluation.main(
        [
            "--master",
            "local[2]",
            "--sts",
            str(sts),
            "--cranfield",
            str(tmp_path / "cran"),
            "--work",
            str(tmp_path / "work"),
            "--output",
            str(tmp_path / "eval.json"),
            "--manifest",
            str(manifest),
        ]
    )

    table = pd.read_parquet(tmp_path / "work" / "eval_vectors.parquet")
    vectors = {i: np.asarray(v, dtype=np.float64) for i, v in zip(table["id"], table["vector"])}
    pairs = [line.split("\t") for line in sts.read_text(encoding="utf-8").splitlines()]
    text_ids = {}
    with open(tmp_path / "work" / "eval_sentences.jsonl", encoding="utf-8") as handle:
        for line in handle:
            row = json.loads(line)
            text_ids.setdefault(row["text"], row["id"])
    cosines = [vectors[text_ids[p[5]]].dot(vectors[text_ids[p[6]]]) for p in pairs]
    rho = pd.Series(cosines).rank().corr(pd.Series([float(p[4]) for p in pairs]).rank())
    assert results["sts"]["spearman"] == pytest.approx(rho, abs=1e-9)

    doc_ids = sorted(i for i in vectors if i.startswith("doc:"))
    assert len(doc_ids) == n_docs
    docs = np.stack([vectors[i] for i in doc_ids])
    ndcgs, recalls = [], []
    for q, relevant in qrels.items():
        scores = docs.dot(vectors[f"query:{q}"])
        truth = np.array([[1.0 if i[4:] in relevant else 0.0 for i in doc_ids]])
        ndcgs.append(ndcg_score(truth, scores[None, :], k=10))
        recalls.append(len({doc_ids[j][4:] for j in np.argsort(-scores)[:10]} & relevant) / len(relevant))
    exact, milvus = results["cranfield"]["exact"], results["cranfield"]["milvus"]
    assert exact["queries"] == len(qrels) == 20
    assert exact["ndcg@10"] == pytest.approx(np.mean(ndcgs), abs=1e-6)
    assert exact["recall@10"] == pytest.approx(np.mean(recalls), abs=1e-9)
    assert milvus["index_type"] == "HNSW" and milvus["ann_recall@10"] >= 0.95
    assert milvus["ndcg@10"] == pytest.approx(exact["ndcg@10"], abs=0.02)

    assert json.loads((tmp_path / "eval.json").read_text()) == json.loads(json.dumps(results))
    assert json.loads(manifest.read_text())["evaluation"]["cranfield"]["exact"] == exact
    printed = capsys.readouterr().out
    assert "Spearman (cosine)" in printed and "ANN recall@10" in printed and "0.5128" in printed


def test_manifest_is_found_as_given_or_under_the_warehouse_root(tmp_path, monkeypatch):
    """``--manifest`` takes the documented run path (relative to the warehouse root), or a path
    that exists as given; neither: a clear error before the long evaluation starts."""
    root = tmp_path / "warehouse"
    run_path = "runs/spindle_nightly_books/manual__1/manifest.json"
    (root / run_path).parent.mkdir(parents=True)
    (root / run_path).write_text("{}")
    secrets_file = tmp_path / "connections.json"
    secrets_file.write_text(json.dumps({"spindle_warehouse": {"conn_type": "fs", "extra": {"root": str(root)}}}))
    monkeypatch.setenv("SPINDLE_SECRETS_SOURCE", "file://" + str(secrets_file))
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)

    assert evaluation.local_warehouse_root() == str(root)
    assert evaluation.resolve_manifest(run_path) == root / run_path  # the documented form
    assert evaluation.resolve_manifest(str(root / run_path)) == root / run_path  # absolute
    (elsewhere / "mine.json").write_text("{}")
    assert evaluation.resolve_manifest("mine.json").resolve() == (elsewhere / "mine.json").resolve()  # cwd-relative

    with pytest.raises(FileNotFoundError, match="runs/spindle_nightly_books/nope/manifest.json") as err:
        evaluation.resolve_manifest("runs/spindle_nightly_books/nope/manifest.json")
    assert str(root / "runs/spindle_nightly_books/nope/manifest.json") in str(err.value)
    with pytest.raises(SystemExit, match="no such file"):  # the CLI refuses before embedding anything
        evaluation.main(["--manifest", "runs/spindle_nightly_books/nope/manifest.json", "--no-cranfield"])

    monkeypatch.delenv("SPINDLE_SECRETS_SOURCE")
    monkeypatch.setenv("SPINDLE_HOME", str(tmp_path / "home"))
    monkeypatch.setattr("spindle.config.secrets_source", lambda: None)
    assert evaluation.local_warehouse_root() == str(tmp_path / "home" / "warehouse")  # no connection: the default
