"""spindle.warehouse against a real S3 endpoint: moto in server mode, reached over HTTP with the
credentials of Airflow connections, as Yandex Object Storage (``s3a://``, ``s3_conn_id`` with
``endpoint_url``) and EMR (``s3://``, ``aws_conn_id``) are.

Expected values come from the objects themselves, listed and read with a plain boto3 client,
never from the code under test. Spark's output folder (``part-*.parquet`` + ``_SUCCESS``) is
put there the way Spark leaves it.
"""

from __future__ import annotations

import io
import json
import logging
from types import SimpleNamespace

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.support.airflow_env import REPO, WAREHOUSE

pytest.importorskip("moto.server", reason="moto[server] is not installed (requirements-dev.txt pins it)")

from spindle import pipelines  # noqa: E402
from spindle.vectors.loading import open_parquet  # noqa: E402
from spindle.warehouse import WarehouseError, warehouse_for  # noqa: E402

BUCKET = "spindle-warehouse"
SECRET = "store-secret-never-logged-0123456789"
#: backend -> (settings, warehouse root): Yandex names its store s3a://, EMR s3://.
BACKENDS = {
    "yandex": ({"warehouse_conn_id": "wh_yandex", "s3_conn_id": "object_storage"}, f"s3a://{BUCKET}/yc"),
    "emr": ({"warehouse_conn_id": "wh_emr", "aws_conn_id": "aws_store"}, f"s3://{BUCKET}/emr"),
}


@pytest.fixture(scope="module")
def moto():
    from tests.fakes.aws import moto_bucket

    with moto_bucket(BUCKET) as server:
        yield server


def set_conn(monkeypatch, conn_id: str, **conn) -> None:
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(conn))


@pytest.fixture
def connections(moto, monkeypatch):
    """Storage connections as the backends' settings name them, and one warehouse per backend."""
    store = {
        "conn_type": "aws",
        "login": "AKIDSPINDLETEST",
        "password": SECRET,
        "extra": {"endpoint_url": moto.endpoint_url, "region_name": "us-east-1"},
    }
    set_conn(monkeypatch, "object_storage", **store)
    set_conn(monkeypatch, "aws_store", **store)
    for settings, root in BACKENDS.values():
        set_conn(monkeypatch, settings["warehouse_conn_id"], conn_type="fs", extra={"root": root})
    return moto


def keys(moto, prefix: str) -> dict[str, dict]:
    listed = moto.client("s3").list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents", [])
    return {item["Key"]: item for item in listed}


def parquet_bytes(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink)
    return sink.getvalue()


BOOKS = pa.table(
    {
        "id": [f"/books/OL{i}M" for i in range(7)],
        "title": [f"Book {i}" for i in range(7)],
        "publish_year": pa.array(range(2000, 2007), pa.int32()),
    }
)


@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_bytes_round_trip_under_the_root(connections, backend, caplog):
    settings, root = BACKENDS[backend]
    prefix = root.split("/", 3)[3]
    with caplog.at_level(logging.DEBUG):
        warehouse = warehouse_for(backend, settings)
        assert warehouse.root == root and not warehouse.is_local and SECRET not in repr(warehouse)
        rel = "runs/dag/run_1/sentences.jsonl"
        assert not warehouse.exists(rel)
        assert warehouse.write_bytes(rel, b'{"id": "a"}\n') == f"{root}/{rel}"
        assert warehouse.write_bytes(rel, b'{"id": "b"}\n') == f"{root}/{rel}"  # a re-run replaces it
        assert warehouse.exists(rel) and warehouse.exists("runs/dag")  # a file and a "folder"
        assert warehouse.read_bytes(rel) == b'{"id": "b"}\n'
    obj = connections.client("s3").get_object(Bucket=BUCKET, Key=f"{prefix}/{rel}")
    assert obj["Body"].read() == b'{"id": "b"}\n'
    assert "-" not in obj["ETag"], "one PutObject, not a multipart upload"
    assert list(keys(connections, prefix)) == [f"{prefix}/{rel}"]  # no folder markers, no temp files
    assert SECRET not in caplog.text


def test_s3a_and_s3_roots_name_the_same_objects(connections, monkeypatch):
    """Hadoop's s3a:// (Data Proc) and EMRFS's s3:// are two names of one bucket and key."""
    set_conn(monkeypatch, "wh_same", conn_type="fs", extra={"root": f"s3://{BUCKET}/yc"})
    s3a = warehouse_for("yandex", BACKENDS["yandex"][0])
    s3 = warehouse_for("emr", {"warehouse_conn_id": "wh_same", "aws_conn_id": "aws_store"})
    s3a.write_bytes("shared/x.txt", b"one object")
    assert s3.read_bytes("shared/x.txt") == b"one object"
    assert s3.read_bytes(f"s3a://{BUCKET}/yc/shared/x.txt") == s3a.read_bytes(f"s3n://{BUCKET}/yc/shared/x.txt")
    assert s3a.uri("shared/x.txt") == f"s3a://{BUCKET}/yc/shared/x.txt"
    assert s3.uri("shared/x.txt") == f"s3://{BUCKET}/yc/shared/x.txt"


@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_spark_output_folder_reads_back_as_one_dataset(connections, backend):
    """A folder as Spark leaves it on S3 (part files, ``_SUCCESS``), put with boto3, is read as
    one table; the same folder written through the warehouse is what boto3 lists."""
    settings, root = BACKENDS[backend]
    prefix = root.split("/", 3)[3]
    s3 = connections.client("s3")
    folder = f"{prefix}/runs/spark/books.parquet"
    for n, part in enumerate((BOOKS.slice(0, 4), BOOKS.slice(4))):
        s3.put_object(Bucket=BUCKET, Key=f"{folder}/part-0000{n}-0a1b-c000.snappy.parquet", Body=parquet_bytes(part))
    s3.put_object(Bucket=BUCKET, Key=f"{folder}/_SUCCESS", Body=b"")
    warehouse = warehouse_for(backend, settings)
    filesystem, path = warehouse.locate("runs/spark/books.parquet")
    read = open_parquet(path, filesystem).to_table()
    assert read.sort_by("id").equals(BOOKS.sort_by("id"))

    for n, part in enumerate((BOOKS.slice(0, 3), BOOKS.slice(3))):
        warehouse.write_bytes(f"runs/mine/books.parquet/part-0000{n}-c000.snappy.parquet", parquet_bytes(part))
    warehouse.write_bytes("runs/mine/books.parquet/_SUCCESS", b"")
    written = keys(connections, f"{prefix}/runs/mine/books.parquet/")
    assert sorted(k.rsplit("/", 1)[1] for k in written) == [
        "_SUCCESS",
        "part-00000-c000.snappy.parquet",
        "part-00001-c000.snappy.parquet",
    ]
    parts = [
        pq.read_table(io.BytesIO(s3.get_object(Bucket=BUCKET, Key=k)["Body"].read()))
        for k in sorted(written)
        if "part-" in k
    ]
    assert pa.concat_tables(parts).equals(BOOKS)


def test_local_root_writes_whole_files(tmp_path):
    warehouse = warehouse_for()  # the local backend: spindle_warehouse, a folder
    assert warehouse.is_local and warehouse.root == str(WAREHOUSE)
    rel = "runs/local_test/out/table.jsonl"
    assert warehouse.write_bytes(rel, b"x\n") == f"{WAREHOUSE}/{rel}"
    assert warehouse.write_bytes(rel, b"y\n") == f"{WAREHOUSE}/{rel}"
    assert (WAREHOUSE / rel).read_bytes() == b"y\n" and warehouse.read_bytes(rel) == b"y\n"
    assert [p.name for p in (WAREHOUSE / rel).parent.iterdir()] == ["table.jsonl"]  # no temp file left
    _, path = warehouse.locate(str(tmp_path / "abs.parquet"))
    assert path == str(tmp_path / "abs.parquet") and warehouse.uri(path) == path
    with pytest.raises(WarehouseError, match="is local"):
        warehouse.locate("s3a://bucket/key")


def test_missing_or_unusable_connections_fail_naming_them(connections, monkeypatch):
    with pytest.raises(WarehouseError, match="connection 'wh_nowhere' is not defined"):
        warehouse_for("emr", {"warehouse_conn_id": "wh_nowhere", "aws_conn_id": "aws_store"})
    with pytest.raises(WarehouseError, match="backend 'yandex': setting 's3_conn_id': connection 'no_store' is not"):
        warehouse_for("yandex", {"warehouse_conn_id": "wh_yandex", "s3_conn_id": "no_store"})
    set_conn(monkeypatch, "wh_gcs", conn_type="fs", extra={"root": "gs://bucket/x"})
    with pytest.raises(WarehouseError, match="connection 'wh_gcs': extra.root gs://bucket/x has scheme 'gs'"):
        warehouse_for("emr", {"warehouse_conn_id": "wh_gcs"})
    set_conn(monkeypatch, "wh_noroot", conn_type="fs")
    with pytest.raises(WarehouseError, match="connection 'wh_noroot' has no extra.root"):
        warehouse_for(None, {"warehouse_conn_id": "wh_noroot"})


def test_storage_falls_back_to_the_warehouse_connection(connections, monkeypatch):
    """Local backend (no storage setting) with an object-store root: the warehouse connection's
    own login/password and endpoint_url, as the jobs use them (docs/CONTRACTS.md)."""
    set_conn(
        monkeypatch,
        "wh_own",
        conn_type="aws",
        login="AKIDSPINDLETEST",
        password=SECRET,
        extra={"root": f"s3a://{BUCKET}/own", "endpoint_url": connections.endpoint_url},
    )
    warehouse = warehouse_for(None, None, conn_id="wh_own")
    warehouse.write_bytes("a.txt", b"own keys")
    assert list(keys(connections, "own/")) == ["own/a.txt"]


# --------------------------------------------------------------------------- the tasks
def fake_context(monkeypatch, **params):
    context = {"params": params, "dag": SimpleNamespace(dag_id="spindle_llm_transform"), "run_id": "manual__t1"}
    monkeypatch.setattr(pipelines, "get_current_context", lambda: context)


@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_prepare_sentences_writes_the_table_to_the_backends_warehouse(connections, monkeypatch, backend, capsys):
    settings, root = BACKENDS[backend]
    fake_context(monkeypatch, limit=6)
    source = REPO / "data/samples/stsbenchmark/sts-dev.csv"
    out = pipelines.prepare_sentences.function(str(source), "runs/llm/r1/sentences.jsonl", settings=settings)
    assert out == "runs/llm/r1/sentences.jsonl"
    body = connections.client("s3").get_object(Bucket=BUCKET, Key=f"{root.split('/', 3)[3]}/{out}")["Body"].read()
    rows = [json.loads(line) for line in body.decode().splitlines()]
    first = source.read_text(encoding="utf-8").splitlines()[0].split("\t")
    assert len(rows) == 6 and rows[0] == {"id": "sts-dev-00001a", "text": first[5].strip()}
    assert rows[1]["text"] == first[6].strip()
    assert f"Wrote 6 sentences to {root}/{out}" in capsys.readouterr().out


def test_check_params_checks_the_chosen_backends_warehouse(connections, monkeypatch):
    fake_context(
        monkeypatch,
        input_path="data/samples/stsbenchmark/sts-dev.csv",
        worker_cores=2,
        executor_cores=1,
        worker_memory_mb=2048,
        executor_memory_mb=1024,
        task_cpus=1,
    )
    check = pipelines.check_params.function
    plan = check({"sentences": "sentences.jsonl"}, settings=BACKENDS["emr"][0])
    assert plan["sentences"] == "runs/spindle_llm_transform/manual__t1/sentences.jsonl"
    with pytest.raises(pipelines.ParamCheckError, match="connection 'wh_missing' is not defined"):
        check({"sentences": "s.jsonl"}, settings={"warehouse_conn_id": "wh_missing"})
    with pytest.raises(pipelines.ParamCheckError, match="setting 'aws_conn_id': connection 'gone' is not defined"):
        check({"sentences": "s.jsonl"}, settings={"warehouse_conn_id": "wh_emr", "aws_conn_id": "gone"})
    assert check({"sentences": "s.jsonl"}, settings=None)["sentences"].endswith("/s.jsonl")  # local default


def test_dags_hand_the_chosen_backends_settings_to_the_airflow_side_tasks(dagbag):
    """check_params, prepare_sentences and load_vectors get check_backend's settings, and
    load_vectors waits for whichever lane's embedding jobs ran (the others are skipped)."""

    def from_check_backend(arg):
        return (arg.operator.task_id, arg.key) == ("check_backend", "settings")

    nightly, llm = dagbag.dags["spindle_nightly_books"], dagbag.dags["spindle_llm_transform"]
    for task in (nightly.get_task("check_params"), llm.get_task("check_params"), llm.get_task("prepare_sentences")):
        assert from_check_backend(task.op_kwargs["settings"]), task.task_id
    load = nightly.get_task("load_vectors")
    assert from_check_backend(load.settings) and load.trigger_rule == "none_failed"
    lanes = ("", "yandex.", "emr.", "emr_serverless.")
    assert {f"{lane}{job}" for lane in lanes for job in ("embed_text", "embed_images")} <= load.upstream_task_ids
