"""embed_text versions: manifest, ``latest`` pointer, incremental carry-over and drift, through
the job on the real model. Expected values come from the Parquet outputs, hashlib and a bare
``SentenceTransformer.encode``, never from the code under test."""

import hashlib
import json

import numpy as np
import pandas as pd
import pytest

from spark_apps.jobs import embed_text
from tests.support.spark_apps import read_sts


def sha256(text):
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def write_rows(path, texts):
    path.write_text("".join(json.dumps({"id": f"d{i}", "text": t}) + "\n" for i, t in enumerate(texts)))
    return path


def vectors_by_id(path):
    table = pd.read_parquet(path)
    return {row.id: np.asarray(row.vector, dtype=np.float64) for row in table.itertuples()}, table


@pytest.fixture(scope="module")
def texts():
    return sorted({s for _, a, b in read_sts()[:30] for s in (a, b)})[:40]


def embed(run_job, tmp_path, minilm_path, source, version):
    pointer = tmp_path / "latest.json"
    return run_job(
        embed_text,
        [
            "--input",
            source,
            "--output",
            tmp_path / version / "embeddings.parquet",
            "--model",
            minilm_path,
            "--previous",
            pointer,
            "--latest",
            pointer,
            "--drift-sample",
            1000,
            "--upstream-metrics",
            json.dumps({"rows_read": 100, "rows_kept": 40, "rows_quarantined": 2}),
        ],
    )


def test_unchanged_input_embeds_nothing_and_a_changed_text_only_its_row(run_job, tmp_path, minilm_path, texts):
    from sentence_transformers import SentenceTransformer

    source = write_rows(tmp_path / "texts.jsonl", texts)
    first = embed(run_job, tmp_path, minilm_path, source, "v1")
    assert (first["rows_embedded"], first["rows_carried_over"], first["previous"], first["drift"]) == (
        40,
        0,
        None,
        None,
    )
    pointer = json.loads((tmp_path / "latest.json").read_text())
    assert pointer["embeddings"] == str(tmp_path / "v1" / "embeddings.parquet")
    assert pointer["manifest"] == str(tmp_path / "v1" / "manifest.json")
    manifest1 = json.loads((tmp_path / "v1" / "manifest.json").read_text())
    assert manifest1["rows"] == {
        "read": 100,
        "kept": 40,
        "quarantined": 2,
        "in": 40,
        "skipped_null_text": 0,
        "embedded": 40,
        "carried_over": 0,
        "written": 40,
        "dead_lettered": 0,
        "truncated": 0,
    }
    assert manifest1["model"]["name"] == "all-MiniLM-L6-v2"
    assert manifest1["model"]["fingerprint"] == first["model_fingerprint"]
    assert manifest1["input"]["files"] == 1 and manifest1["input"]["bytes"] == source.stat().st_size
    assert manifest1["parameters"]["batch_size"] == 64 and manifest1["seconds"]["embed"] > 0

    second = embed(run_job, tmp_path, minilm_path, source, "v2")
    assert (second["rows_embedded"], second["rows_carried_over"]) == (0, 40)
    assert "load_model" not in second["seconds"]  # nothing to embed: the model is never loaded
    v1, _ = vectors_by_id(tmp_path / "v1" / "embeddings.parquet")
    v2, table2 = vectors_by_id(tmp_path / "v2" / "embeddings.parquet")
    assert sorted(v2) == sorted(v1) and all(np.array_equal(v1[k], v2[k]) for k in v1)
    assert set(table2["model_fingerprint"]) == {first["model_fingerprint"]}
    manifest2 = json.loads((tmp_path / "v2" / "manifest.json").read_text())
    assert manifest2["previous"]["embeddings"] == pointer["embeddings"]
    assert manifest2["input"]["fingerprint"] == manifest1["input"]["fingerprint"]
    figures = manifest2["drift"]
    assert figures["reference_rows"] == figures["current_rows"] == 40  # sample >= rows: all rows
    assert figures["mean_cosine_distance"] == pytest.approx(0.0, abs=1e-6)
    assert figures["mean_l2_distance"] == pytest.approx(0.0, abs=1e-6)
    assert figures["drift_detected"] is False
    assert (tmp_path / "v2" / "drift.png").read_bytes()[:4] == b"\x89PNG"

    changed = list(texts)
    changed[5] = "A completely rewritten description of the fifth book."
    write_rows(source, changed)
    third = embed(run_job, tmp_path, minilm_path, source, "v3")
    assert (third["rows_embedded"], third["rows_carried_over"]) == (1, 39)
    v3, table3 = vectors_by_id(tmp_path / "v3" / "embeddings.parquet")
    assert all(np.array_equal(v3[k], v2[k]) for k in v2 if k != "d5")
    bare = SentenceTransformer(minilm_path, device="cpu").encode([changed[5]], normalize_embeddings=True)[0]
    assert float(np.dot(v3["d5"], bare)) >= 0.9999
    assert dict(zip(table3["id"], table3["text_sha256"]))["d5"] == sha256(changed[5])
    manifest3 = json.loads((tmp_path / "v3" / "manifest.json").read_text())
    assert manifest3["input"]["fingerprint"] != manifest2["input"]["fingerprint"]
    a, b = np.mean(list(v2.values()), axis=0), np.mean(list(v3.values()), axis=0)  # independent figures
    expected = 1 - a.dot(b) / np.linalg.norm(a) / np.linalg.norm(b)
    assert manifest3["drift"]["mean_cosine_distance"] == pytest.approx(expected, abs=1e-6)
    assert manifest3["drift"]["mean_l2_distance"] == pytest.approx(np.linalg.norm(a - b), abs=1e-6)

    rerun = embed(run_job, tmp_path, minilm_path, source, "v3")  # the pointer now names v3 itself
    assert rerun["previous"]["embeddings"] == str(tmp_path / "v2" / "embeddings.parquet")
    assert (rerun["rows_embedded"], rerun["rows_carried_over"]) == (1, 39)


def test_a_different_topic_shows_drift(run_job, tmp_path, minilm_path):
    pairs = read_sts()
    captions = sorted({a for _, a, _ in pairs[:400] if a.startswith("A ")})[:60]
    news = sorted({a for _, a, _ in pairs[-400:] if not a.startswith("A ")})[:60]
    assert len(captions) == len(news) == 60
    pointer = tmp_path / "latest.json"
    for version, texts in (("v1", captions), ("v2", news)):
        metrics = run_job(
            embed_text,
            [
                "--input",
                write_rows(tmp_path / f"{version}.jsonl", texts),
                "--output",
                tmp_path / version / "e.parquet",
                "--model",
                minilm_path,
                "--previous",
                pointer,
                "--latest",
                pointer,
            ],
        )
    assert metrics["rows_embedded"] == 60
    assert metrics["drift"]["drift_detected"] is True
    assert metrics["drift"]["classifier_auc"] > 0.8


def test_an_empty_version_leaves_the_pointer_alone(run_job, tmp_path, minilm_path, texts):
    """No book survived prepare_books' filters: embed_text writes an empty version with its
    manifest, but ``latest.json`` keeps naming the last version that has vectors."""
    embed(run_job, tmp_path, minilm_path, write_rows(tmp_path / "texts.jsonl", texts[:5]), "v1")
    before = (tmp_path / "latest.json").read_text()
    empty = tmp_path / "books.parquet"  # what prepare_books writes when it keeps 0 books
    pd.DataFrame({"id": pd.Series([], dtype=str), "text": pd.Series([], dtype=str)}).to_parquet(empty)
    result = embed(run_job, tmp_path, minilm_path, empty, "v2")
    assert (result["rows_in"], result["rows_embedded"], result["rows_carried_over"]) == (0, 0, 0)
    assert result["outputs"]["latest"] is None
    assert result["latest_note"] == f"0 rows written: pointer {tmp_path / 'latest.json'} left alone"
    assert (tmp_path / "latest.json").read_text() == before
    manifest = json.loads((tmp_path / "v2" / "manifest.json").read_text())
    assert manifest["rows"]["written"] == 0 and manifest["outputs"]["latest"] is None
