"""LoadVectorsOperator on the cloud backends: the run's Parquet in object storage -> milvus-lite.

The store is moto in server mode (S3 over HTTP with an Airflow connection's keys and
``endpoint_url``), the vector store a real milvus-lite file. The embeddings and books are put
as Spark leaves an output folder on S3 (``part-*.parquet`` + ``_SUCCESS``), with a plain boto3
client; the vectors read back from Milvus are compared with the numpy arrays that were written.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import logging
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

pytest.importorskip("milvus_lite", reason="pymilvus[milvus-lite] is not installed")
pytest.importorskip("moto.server", reason="moto[server] is not installed (requirements-dev.txt pins it)")

from spindle.vectors.operators import LoadVectorsOperator  # noqa: E402
from spindle.vectors.store import MilvusVectorStore, search  # noqa: E402

BUCKET = "spindle-vectors"
SECRET = "vector-store-secret-never-in-xcom-42"
N, DIM = 12, 16
CONTEXT = {
    "run_id": "scheduled__2026-11-25T02:00:00+00:00",
    "dag_run": SimpleNamespace(run_after=dt.datetime(2026, 11, 25, 2, tzinfo=dt.timezone.utc)),
}
#: backend -> (settings as check_backend returns them, warehouse root)
BACKENDS = {
    "yandex": ({"warehouse_conn_id": "wh_yandex", "s3_conn_id": "object_storage"}, f"s3a://{BUCKET}/warehouse"),
    "emr": ({"warehouse_conn_id": "wh_emr", "aws_conn_id": "aws_store"}, f"s3://{BUCKET}/emr-warehouse"),
}
RUN = "runs/spindle_nightly_books/scheduled__2026-11-25T02_00_00_00_00"


@pytest.fixture(scope="module")
def moto():
    from tests.fakes.aws import moto_bucket

    with moto_bucket(BUCKET) as server:
        yield server


def put_spark_folder(moto, key: str, table: pa.Table, parts: int = 2) -> None:
    """``table`` as Spark writes a DataFrame: one Parquet file per partition, then ``_SUCCESS``."""
    s3 = moto.client("s3")
    size = -(-len(table) // parts)
    for n in range(parts):
        sink = io.BytesIO()
        pq.write_table(table.slice(n * size, size), sink)
        s3.put_object(Bucket=BUCKET, Key=f"{key}/part-{n:05d}-7f3e-c000.snappy.parquet", Body=sink.getvalue())
    s3.put_object(Bucket=BUCKET, Key=f"{key}/_SUCCESS", Body=b"")


@pytest.fixture
def cloud_run(moto, monkeypatch, tmp_path, request):
    """A nightly run's books and embeddings in the backend's bucket; its connections; Milvus."""
    settings, root = BACKENDS[request.param]
    store_conn = {
        "conn_type": "aws",
        "login": "AKIDSPINDLETEST",
        "password": SECRET,
        "extra": {"endpoint_url": moto.endpoint_url, "region_name": "us-east-1"},
    }
    for conn_id in ("object_storage", "aws_store"):
        monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(store_conn))
    monkeypatch.setenv(
        f"AIRFLOW_CONN_{settings['warehouse_conn_id'].upper()}",
        json.dumps({"conn_type": "fs", "extra": {"root": root}}),
    )
    monkeypatch.delenv("AIRFLOW_CONN_SPINDLE_MILVUS", raising=False)
    monkeypatch.setenv("SPINDLE_MILVUS_URI", str(tmp_path / "cloud.db"))

    rng = np.random.default_rng(7)
    vectors = rng.standard_normal((N, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = [f"/books/OL{100 + i}M" for i in range(N)]
    prefix = f"{root.split('/', 3)[3]}/{RUN}"
    put_spark_folder(
        moto,
        f"{prefix}/books.parquet",
        pa.table(
            {
                "id": ids,
                "title": [f"Title {i}" for i in range(N)],
                "publish_year": pa.array(range(1990, 1990 + N), pa.int32()),
                "cover_ids": pa.array([[5000 + i] for i in range(N)], pa.list_(pa.int64())),
                "author_keys": [[f"/authors/OL{i}A"] for i in range(N)],
            }
        ),
    )
    column = [v.tolist() for v in vectors[:-1]] + [None]  # the last text was null: no vector
    put_spark_folder(
        moto,
        f"{prefix}/embeddings.parquet",
        pa.table(
            {
                "id": ids,
                "vector": pa.array(column, pa.list_(pa.float32())),
                "model": ["all-MiniLM-L6-v2"] * N,
                "model_fingerprint": ["sha256:" + "ab" * 32] * N,
                "text_sha256": [f"{i:064x}" for i in range(N)],
            }
        ),
        parts=3,
    )
    return {
        "backend": request.param,
        "settings": settings,
        "root": root,
        "ids": ids,
        "vectors": vectors,
        "db": tmp_path / "cloud.db",
    }


def operator(run):
    """The nightly DAG's load_vectors, with check_backend's backend and settings rendered in."""
    return LoadVectorsOperator(
        task_id="load_vectors",
        books=f"{RUN}/books.parquet",
        backend=run["backend"],
        settings=run["settings"],
        sources=[
            {"alias": "books_text", "embeddings": f"{RUN}/embeddings.parquet", "model_kind": "sentence-transformers"},
            {
                "alias": "books_covers",
                "embeddings": f"{RUN}/cover_embeddings.parquet",
                "model_kind": "clip",
                "optional": True,
            },
        ],
        batch_size=5,
    )


@pytest.mark.parametrize("cloud_run", sorted(BACKENDS), indirect=True)
def test_cloud_run_vectors_land_in_milvus_as_written(cloud_run, caplog, capfd):
    with caplog.at_level(logging.DEBUG):
        result = operator(cloud_run).execute(CONTEXT)
    logged = caplog.text + "".join(capfd.readouterr())  # Airflow's task logger writes to stdout
    assert f"reading the run's Parquet from {cloud_run['root']}" in logged and SECRET not in logged
    root, ids, vectors = cloud_run["root"], cloud_run["ids"], cloud_run["vectors"]
    text = result["loads"][0]
    assert (text["rows_read"], text["rows_upserted"], text["rows_skipped_no_vector"], text["rows_without_book"]) == (
        N,
        N - 1,
        1,
        0,
    )
    assert result["loads"][1] == {
        "alias": "books_covers",
        "skipped": f"no embeddings at {root}/{RUN}/cover_embeddings.parquet",
    }
    assert SECRET not in json.dumps(result, default=str)  # the XCom

    with MilvusVectorStore(cloud_run["db"]) as store:
        collection = store.resolve_alias("books_text")
        assert collection == result["outputs"]["books_text"] and store.count(collection) == N - 1
        assert store.collection_info(collection).prop("source") == f"{root}/{RUN}/embeddings.parquet"
        rows = store.client.get(collection, ids=ids, output_fields=["vector", "title", "year", "cover_url"])
        got = {row["id"]: row for row in rows}
        assert sorted(got) == sorted(ids[:-1])
        for i, book_id in enumerate(ids[:-1]):
            assert np.allclose(np.asarray(got[book_id]["vector"], np.float32), vectors[i], atol=1e-7)
            assert (got[book_id]["title"], got[book_id]["year"]) == (f"Title {i}", 1990 + i)
            assert got[book_id]["cover_url"] == f"https://covers.openlibrary.org/b/id/{5000 + i}-L.jpg"
        hits = search(store, "books_text", vectors[3:4], k=3)[0]
        assert hits[0].id == ids[3]


@pytest.mark.parametrize("cloud_run", ["yandex"], indirect=True)
def test_a_rerun_of_the_cloud_run_upserts_into_the_same_version(cloud_run):
    first = operator(cloud_run).execute(CONTEXT)
    again = operator(cloud_run).execute(CONTEXT)
    assert again["outputs"] == first["outputs"] and again["version"] == first["version"]
    assert (
        again["loads"][0]["created"] is False
        and again["loads"][0]["previous_collection"] == first["outputs"]["books_text"]
    )
    with MilvusVectorStore(cloud_run["db"]) as store:
        assert store.count(first["outputs"]["books_text"]) == N - 1
