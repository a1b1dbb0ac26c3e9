"""An empty nightly run (no book survived prepare_books' filters, e.g. ``{"limit": 5}``) ends
clearly: ``load_vectors`` is skipped with the reason, and search keeps its current version.
(That embed_text leaves the ``latest.json`` pointer alone on an empty version is
tests/spark_apps/test_incremental.py::test_an_empty_version_leaves_the_pointer_alone.)"""

from __future__ import annotations

import datetime as dt
import json
from types import SimpleNamespace

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

pytest.importorskip("milvus_lite", reason="pymilvus[milvus-lite] is not installed")

from airflow.sdk.exceptions import AirflowSkipException
from spindle.vectors.operators import LoadVectorsOperator
from spindle.vectors.search import format_hits
from spindle.vectors.store import CollectionInfo, Hit, MilvusVectorStore


def context(day: int) -> dict:
    run_id = f"manual__2026-11-{day:02d}T00:00:00+00:00"
    return {"run_id": run_id, "dag_run": SimpleNamespace(run_after=dt.datetime(2026, 11, day, tzinfo=dt.UTC))}


def empty_run(folder):
    """books.parquet and embeddings.parquet of a run that kept 0 books (schemas as the jobs write)."""
    folder.mkdir()
    pq.write_table(
        pa.table(
            {"id": pa.array([], pa.string()), "title": pa.array([], pa.string()), "author": pa.array([], pa.string())}
        ),
        folder / "books.parquet",
    )
    pq.write_table(
        pa.table(
            {
                "id": pa.array([], pa.string()),
                "vector": pa.array([], pa.list_(pa.float32())),
                "model": pa.array([], pa.string()),
            }
        ),
        folder / "embeddings.parquet",
    )
    return folder


def test_a_run_with_no_books_skips_the_load_and_moves_no_alias(tmp_path, monkeypatch, corpus, model_dir):
    monkeypatch.delenv("AIRFLOW_CONN_SPINDLE_MILVUS", raising=False)
    monkeypatch.setenv("SPINDLE_MILVUS_URI", str(tmp_path / "milvus.db"))

    def operator(folder, metrics=None):
        sources = [
            {"alias": "books_text", "embeddings": str(folder / "embeddings.parquet"), "model_dir": model_dir},
            {
                "alias": "books_covers",
                "embeddings": str(folder / "covers.parquet"),
                "model_kind": "clip",
                "optional": True,
            },
        ]
        return LoadVectorsOperator(
            task_id="load_vectors",
            books=str(folder / "books.parquet"),
            sources=sources,
            books_metrics=metrics,
            backend="local",
        )

    first = operator(corpus["folder"]).execute(context(24))
    current = first["outputs"]["books_text"]

    metrics = {
        "rows_read": 5,
        "rows_kept": 0,
        "rows_filtered_out": 5,
        "rows_quarantined": 0,
        "failed_filter": {"language": 3, "pages": 4, "subject": 5, "age": 0},
    }
    folder = empty_run(tmp_path / "empty")
    with pytest.raises(AirflowSkipException) as skipped:
        operator(folder, json.dumps(metrics)).execute(context(25))  # templated: the XCom as JSON
    assert str(skipped.value) == (
        "0 books survived the filters (read 5, filtered out 5, quarantined 0; failed filter: language 3, "
        f"pages 4, subject 5): nothing to load, no alias moved (books_text -> {current}; books_covers -> "
        "nothing yet). Widen the filters (params languages, min_pages, subject, max_age_years) or raise limit."
    )
    with pytest.raises(AirflowSkipException, match=r"^0 books survived the filters \(books table .* is empty\)"):
        operator(folder, "null").execute(context(25))  # no metrics (e.g. a cloud lane's run)

    with MilvusVectorStore(tmp_path / "milvus.db") as store:
        assert store.resolve_alias("books_text") == current  # search still answers from the last real run
        assert [info.name for info in store.versions("books_text")] == [current]  # no empty version made


def test_search_output_shows_names_and_leaves_out_an_empty_author_column():
    info = CollectionInfo("books_text__m__v1", {"spindle.model": "m", "spindle.version": "v1"})
    named = [
        Hit(1, "/books/OL1M", 0.5, "A title", "Carole Remboldt", 1994, None),
        Hit(2, "/books/OL2M", 0.4, "Another", None, None, None),
    ]
    text = format_hits("q", "books_text", info, named).splitlines()
    assert text[2].split() == ["rank", "score", "title", "author", "year"]
    assert "Carole Remboldt" in text[3] and "/authors/" not in "\n".join(text)
    assert text[4].split() == ["2", "0.400", "Another", "-"]  # no name: blank, not a key
    unnamed = format_hits("q", "books_text", info, [named[1]]).splitlines()
    assert unnamed[2].split() == ["rank", "score", "title", "year"]
