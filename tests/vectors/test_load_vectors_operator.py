"""The Airflow side: where MilvusHook finds Milvus, and LoadVectorsOperator's loads and skips.
(Loading from object storage: test_load_from_object_storage.py.)

The operator runs with a real milvus-lite file and the Parquet of the ``corpus`` fixture; the
nightly DAG's own ``load_vectors`` task is exercised end to end by tests/airflow/test_e2e.py.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from pathlib import Path
from types import SimpleNamespace

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

pytest.importorskip("milvus_lite", reason="pymilvus[milvus-lite] is not installed")

from spindle.vectors.hook import MilvusHook  # noqa: E402
from spindle.vectors.operators import LoadVectorsOperator  # noqa: E402
from spindle.vectors.store import MilvusVectorStore  # noqa: E402

TOKEN = "milvus-token-never-logged"
#: What execute() reads from a task context: the run id and the run's time.
CONTEXT = {
    "run_id": "manual__2026-11-24T00:00:00+00:00",
    "dag_run": SimpleNamespace(run_after=dt.datetime(2026, 11, 24, tzinfo=dt.timezone.utc)),
}


def test_hook_takes_uri_and_token_from_the_connection(tmp_path, monkeypatch, caplog):
    db = tmp_path / "conn.db"
    conn = {"conn_type": "generic", "login": "root", "password": TOKEN, "extra": {"uri": str(db)}}
    monkeypatch.setenv("AIRFLOW_CONN_SPINDLE_MILVUS", json.dumps(conn))
    hook = MilvusHook()
    assert hook.endpoint() == {
        "uri": str(db),
        "token": f"root:{TOKEN}",
        "db_name": "",
        "source": "connection spindle_milvus",
    }
    with caplog.at_level(logging.INFO), hook.get_conn() as store:
        assert store.is_lite and store.uri == str(db)
    assert str(db) in caplog.text and TOKEN not in caplog.text


def test_hook_without_connection_uses_env_then_the_default_file(tmp_path, monkeypatch):
    monkeypatch.delenv("AIRFLOW_CONN_SPINDLE_MILVUS", raising=False)
    monkeypatch.setenv("SPINDLE_MILVUS_URI", "http://milvus:19530")
    assert MilvusHook().endpoint()["uri"] == "http://milvus:19530"
    monkeypatch.delenv("SPINDLE_MILVUS_URI")
    monkeypatch.setenv("SPINDLE_HOME", str(tmp_path))
    assert MilvusHook().endpoint()["uri"] == str(tmp_path / "milvus" / "spindle.db")
    assert MilvusHook(milvus_conn_id=None).endpoint()["source"] == "default milvus-lite file"


def cover_parquet(corpus, path):
    """The embed_images output contract (docs/CONTRACTS.md); no CLIP weights exist offline, so
    the text vectors stand in for cover vectors. The last book's image failed: null vector."""
    books = corpus["books"]
    vectors = corpus["vectors"].tolist()
    vectors[-1] = None
    pq.write_table(
        pa.table(
            {
                "id": [b["id"] for b in books],
                "cover_id": pa.array([b["covers"][0] if b["covers"] else None for b in books], pa.int64()),
                "vector": pa.array(vectors, pa.list_(pa.float32())),
                "model": ["tiny-clip"] * len(books),
                "model_fingerprint": ["sha256:" + "c" * 64] * len(books),
                "error": [None] * (len(books) - 1) + ["not_found: 404"],
            }
        ),
        path,
    )
    return path


def test_operator_loads_text_and_covers_and_reports_counts(tmp_path, monkeypatch, corpus, model_dir):
    monkeypatch.delenv("AIRFLOW_CONN_SPINDLE_MILVUS", raising=False)
    monkeypatch.setenv("SPINDLE_MILVUS_URI", str(tmp_path / "op.db"))
    folder, n = corpus["folder"], len(corpus["books"])
    sources = [
        {"alias": "books_text", "embeddings": str(folder / "embeddings.parquet"), "model_dir": model_dir},
        {"alias": "books_covers", "embeddings": str(tmp_path / "none.parquet"), "model_kind": "clip", "optional": True},
    ]
    operator = LoadVectorsOperator(
        task_id="load_vectors", books=str(folder / "books.parquet"), sources=sources, backend="local"
    )
    result = operator.execute(CONTEXT)
    assert result["rows_upserted"] == n and list(result["outputs"]) == ["books_text"]
    assert result["loads"][1] == {"alias": "books_covers", "skipped": f"no embeddings at {tmp_path / 'none.parquet'}"}
    assert result["version"].startswith("v20261124000000_")
    assert result["outputs"]["books_text"].endswith(result["version"])

    sources[1]["embeddings"] = str(cover_parquet(corpus, tmp_path / "covers.parquet"))
    again = operator.execute(CONTEXT)
    assert again["version"] == result["version"] and again["outputs"]["books_text"] == result["outputs"]["books_text"]
    covers = again["loads"][1]
    assert (covers["rows_read"], covers["rows_upserted"], covers["rows_skipped_no_vector"]) == (n, n - 1, 1)
    with MilvusVectorStore(tmp_path / "op.db") as store:
        assert store.count("books_text") == n and store.count("books_covers") == n - 1
        first = corpus["books"][0]
        row = store.client.get("books_covers", ids=[first["id"]], output_fields=["cover_url", "title"])[0]
        assert row["cover_url"] == f"https://covers.openlibrary.org/b/id/{first['covers'][0]}-L.jpg"
        assert row["title"] == first["title"]
        assert store.collection_info(store.resolve_alias("books_covers")).prop("model_kind") == "clip"


def test_optional_source_without_any_vector_is_skipped(tmp_path, monkeypatch, corpus, model_dir):
    """The demo's covers: every image failed (each row has its error), so no vector at all."""
    monkeypatch.delenv("AIRFLOW_CONN_SPINDLE_MILVUS", raising=False)
    monkeypatch.setenv("SPINDLE_MILVUS_URI", str(tmp_path / "none.db"))
    books, folder = corpus["books"], corpus["folder"]
    covers = tmp_path / "covers.parquet"
    pq.write_table(
        pa.table(
            {
                "id": [b["id"] for b in books],
                "cover_id": pa.array([None] * len(books), pa.int64()),
                "vector": pa.array([None] * len(books), pa.list_(pa.float32())),
                "model": ["tiny-clip"] * len(books),
                "error": ["not_found: no file"] * len(books),
            }
        ),
        covers,
    )
    sources = [
        {"alias": "books_text", "embeddings": str(folder / "embeddings.parquet"), "model_dir": model_dir},
        {"alias": "books_covers", "embeddings": str(covers), "model_kind": "clip", "optional": True},
    ]
    result = LoadVectorsOperator(
        task_id="t", books=str(folder / "books.parquet"), sources=sources, backend="local"
    ).execute(CONTEXT)
    assert list(result["outputs"]) == ["books_text"]
    assert result["loads"][1] == {"alias": "books_covers", "skipped": f"no vector in {covers}"}
    from airflow.sdk.exceptions import AirflowFailException

    sources[1]["optional"] = False
    with pytest.raises(AirflowFailException, match="books_covers: the embeddings hold no vector"):
        LoadVectorsOperator(task_id="t", sources=sources, backend="local").execute(CONTEXT)


def test_operator_refuses_missing_text_on_every_backend(tmp_path, monkeypatch):
    """No backend is skipped any more: a cloud run whose warehouse is this machine's folder (the
    fakes) is read from there, an object-store root through spindle.warehouse
    (test_load_from_object_storage.py)."""
    monkeypatch.setenv("SPINDLE_MILVUS_URI", str(tmp_path / "skip.db"))
    sources = [{"alias": "books_text", "embeddings": str(tmp_path / "missing.parquet")}]
    from airflow.sdk.exceptions import AirflowFailException

    for backend, settings in (("emr", {"warehouse_conn_id": "spindle_warehouse"}), ("local", None)):
        with pytest.raises(AirflowFailException, match="books_text: no embeddings Parquet at"):
            LoadVectorsOperator(task_id="t", sources=sources, backend=backend, settings=settings).execute(CONTEXT)
    with pytest.raises(ValueError, match="unknown source keys"):
        LoadVectorsOperator(task_id="t", sources=[{"alias": "a", "embedings": "x"}])


@pytest.fixture
def milvus_server(tmp_path):
    """A Milvus gRPC endpoint in its own process (milvus-lite's server mode), not a .db file."""
    import socket
    import subprocess
    import sys
    import time

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    exe = Path(sys.executable).with_name("milvus-lite")
    proc = subprocess.Popen(
        [str(exe), "server", "--data-dir", str(tmp_path / "server"), "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with socket.socket() as client:
                if client.connect_ex(("127.0.0.1", port)) == 0:
                    break
            assert proc.poll() is None, "milvus-lite server exited"
            time.sleep(0.2)
        yield port
    finally:
        proc.kill()
        proc.wait()


def test_operator_loads_into_a_server_named_by_host_and_port(milvus_server, monkeypatch, corpus):
    conn = {"conn_type": "generic", "host": "127.0.0.1", "port": milvus_server, "password": TOKEN}
    monkeypatch.setenv("AIRFLOW_CONN_SPINDLE_MILVUS", json.dumps(conn))
    assert MilvusHook().endpoint()["uri"] == f"http://127.0.0.1:{milvus_server}"
    folder = corpus["folder"]
    sources = [{"alias": "books_text", "embeddings": str(folder / "embeddings.parquet")}]
    result = LoadVectorsOperator(task_id="load_vectors", books=str(folder / "books.parquet"), sources=sources).execute(
        CONTEXT
    )
    assert result["rows_upserted"] == len(corpus["books"])
    with MilvusHook().get_conn() as store:
        assert not store.is_lite and store.count("books_text") == len(corpus["books"])
