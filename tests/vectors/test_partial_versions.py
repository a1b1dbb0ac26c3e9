"""A vector load killed half way and never re-run: its version is marked partial, is never a
rollback or switch target, and is dropped once old enough (``drop-partial``, run by the reaper).

The load is the real ``load_embeddings`` in a subprocess, SIGKILLed after half its batches
(``tests.support.interrupted_load``); the store is a real milvus-lite file.
"""

from __future__ import annotations

import datetime as dt

import pytest

pytest.importorskip("milvus_lite", reason="pymilvus[milvus-lite] is not installed")

from spindle.vectors import versions as versions_cli  # noqa: E402
from spindle.vectors.store import MilvusVectorStore, VectorStoreError  # noqa: E402
from tests.support.interrupted_load import kill_when_paused, start_loader  # noqa: E402

BATCH = 2  # rows per upsert batch: the kill comes after the second batch


def _load(db, corpus, version: str, pause_after: int = 0):
    folder = corpus["folder"]
    return start_loader(
        db, folder / "embeddings.parquet", folder / "books.parquet", version, BATCH, pause_after=pause_after
    )


def _complete(db, corpus, version: str) -> None:
    loader = _load(db, corpus, version)
    output, _ = loader.communicate(timeout=300)
    assert loader.returncode == 0, output


def test_a_partial_version_is_never_served_and_is_dropped_when_old(tmp_path, corpus, capsys):
    db = tmp_path / "milvus" / "spindle.db"
    _complete(db, corpus, "v20260101000000_aaaaaa")
    kill_when_paused(_load(db, corpus, "v20260102000000_bbbbbb", pause_after=2))
    _complete(db, corpus, "v20260103000000_cccccc")

    with MilvusVectorStore(db) as store:
        v1, v2, v3 = (info.name for info in store.versions("books_text"))
        assert (v1[-6:], v2[-6:], v3[-6:]) == ("aaaaaa", "bbbbbb", "cccccc")
        assert store.count(v2) == 2 * BATCH < len(corpus["books"])  # the kill left half the rows
        assert [store.collection_info(n).complete for n in (v1, v2, v3)] == [True, False, True]
        assert store.resolve_alias("books_text") == v3
        with pytest.raises(VectorStoreError, match="partial"):
            store.switch_alias("books_text", v2)
        assert store.rollback("books_text") == v1  # over the partial version, to the last whole one
        store.switch_alias("books_text", v3)
        listing = versions_cli.format_versions(store, "books_text")
        assert [line for line in listing.splitlines() if "PARTIAL" in line] == [
            line for line in listing.splitlines() if v2 in line
        ]
        assert store.drop_partial(dt.timedelta(hours=1)) == []  # young: its load may still be retried
        assert [i.name for i in store.drop_partial(dt.timedelta(0), dry_run=True)] == [v2]
        assert store.client.has_collection(v2)

    assert versions_cli.main(["--uri", str(db), "drop-partial", "--older-than-hours", "0"]) == 0
    assert f"dropped {v2}" in capsys.readouterr().out
    with MilvusVectorStore(db) as store:
        assert sorted(store.client.list_collections()) == sorted([v1, v3])
        assert store.resolve_alias("books_text") == v3 and store.count(v3) == len(corpus["books"])
