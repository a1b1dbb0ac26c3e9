"""OpenLineage lineage of the cloud lanes' job operators and the dataset naming rules.

The local lane's events are captured from a real run (``tests/airflow/test_e2e.py``: the
provider's listener writes them through the file transport). A cloud job task runs only against
the fakes (``tests/cloud``), so here each cloud lane's job operator, as the real DAG builds it, gets
the values its templates render to on such a run (the stage task's XCom, the backend settings);
the OpenLineage provider's ``ExtractorManager`` (what its listener calls) extracts the lineage,
which is sent as a RunEvent through the OpenLineage client's file transport and read back.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from types import SimpleNamespace

import pytest

ROOT = "s3a://warehouse-1/spindle"
RUN = "runs/spindle_nightly_books/manual__2026-12-01T00_00_00_00_00"
MODEL = "/opt/models/all-MiniLM-L6-v2"
DUMP = "/data/editions.txt.gz"
STAGED = {
    "bucket": "warehouse-1",
    "prefix": "spindle",
    "scheme": "s3a",
    "jobs": {},
    # the stage task uploaded the dump and the model; the model reaches the job as an archive alias
    "rewrites": {DUMP: "s3a://warehouse-1/spindle/inputs/1f2e/editions.txt.gz", MODEL: "model"},
    "models": {MODEL: "s3a://warehouse-1/spindle/models/all-MiniLM-L6-v2-9c1d.tar.gz#model"},
}
#: The cloud lanes' job operators: task id of the job operator in spindle_nightly_books per lane.
LANES = {
    "yandex": "yandex.{job}",
    "yandex_spark": "yandex_spark.{job}",
    "emr": "emr.{job}_submit",
    "emr_serverless": "emr_serverless.{job}",
}


@pytest.fixture
def warehouse(monkeypatch):
    connection = {"conn_type": "aws", "extra": {"root": ROOT}}
    monkeypatch.setenv("AIRFLOW_CONN_LINEAGE_WAREHOUSE", json.dumps(connection))
    return {"warehouse_conn_id": "lineage_warehouse"}


def emitted(tmp_path, task, lineage) -> dict:
    """``lineage`` sent as a COMPLETE RunEvent through the file transport, read back."""
    from openlineage.client import OpenLineageClient
    from openlineage.client.event_v2 import Job, Run, RunEvent, RunState
    from openlineage.client.transport.file import FileConfig, FileTransport

    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "events.jsonl"
    client = OpenLineageClient(transport=FileTransport(FileConfig(log_file_path=str(path), append=True)))
    client.emit(
        RunEvent(
            eventType=RunState.COMPLETE,
            eventTime=datetime.now(UTC).isoformat(),
            run=Run(runId=str(uuid.uuid4()), facets=lineage.run_facets),
            job=Job(namespace="default", name=f"{task.dag_id}.{task.task_id}"),
            inputs=lineage.inputs,
            outputs=lineage.outputs,
        )
    )
    (line,) = path.read_text().splitlines()
    return json.loads(line)


def extract(task):
    from airflow.providers.openlineage.extractors.manager import ExtractorManager
    from airflow.utils.state import TaskInstanceState

    run = SimpleNamespace(run_id="manual__2026-12-01T00:00:00+00:00")
    return ExtractorManager().extract_metadata(run, task, TaskInstanceState.SUCCESS, SimpleNamespace(task=task))


def pairs(event: dict, side: str) -> set[tuple[str, str]]:
    return {(d["namespace"], d["name"]) for d in event[side]}


@pytest.mark.parametrize("lane", sorted(LANES))
def test_cloud_job_operators_report_bucket_datasets_and_the_shipped_model(lane, dagbag, warehouse, tmp_path):
    dag = dagbag.dags["spindle_nightly_books"]
    prepare = dag.get_task(LANES[lane].format(job="prepare_books")).prepare_for_execution()
    prepare.staged, prepare.settings = STAGED, warehouse
    prepare.job_args = {"input": DUMP, "output": f"{RUN}/books.parquet", "quarantine": f"{RUN}/quarantine.parquet"}
    event = emitted(tmp_path / "prepare", prepare, extract(prepare))
    assert pairs(event, "inputs") == {("s3://warehouse-1", "spindle/inputs/1f2e/editions.txt.gz")}
    assert pairs(event, "outputs") == {
        ("s3://warehouse-1", f"spindle/{RUN}/books.parquet"),
        ("s3://warehouse-1", f"spindle/{RUN}/quarantine.parquet"),
    }
    assert "spindle_model" not in event["run"]["facets"]

    embed = dag.get_task(LANES[lane].format(job="embed_text")).prepare_for_execution()
    embed.staged, embed.settings, embed.metrics = STAGED, warehouse, {"model_fingerprint": "sha256:abc"}
    embed.job_args = {
        "input": f"{RUN}/books.parquet",
        "output": f"{RUN}/embeddings.parquet",
        "manifest": f"{RUN}/manifest.json",
        "model": MODEL,
        "previous": "runs/spindle_nightly_books/latest.json",  # a pointer, not a dataset
    }
    event = emitted(tmp_path / "embed", embed, extract(embed))
    assert pairs(event, "inputs") == {("s3://warehouse-1", f"spindle/{RUN}/books.parquet")}
    assert pairs(event, "outputs") == {
        ("s3://warehouse-1", f"spindle/{RUN}/embeddings.parquet"),
        ("s3://warehouse-1", f"spindle/{RUN}/manifest.json"),
    }
    model = event["run"]["facets"]["spindle_model"]
    assert {k: model[k] for k in ("name", "kind", "location", "fingerprint")} == {
        "name": "all-MiniLM-L6-v2",
        "kind": "sentence-transformers",
        "location": "s3a://warehouse-1/spindle/models/all-MiniLM-L6-v2-9c1d.tar.gz",
        "fingerprint": "sha256:abc",
    }
    assert model["_schemaURL"] and model["_producer"]


def test_dataset_naming_follows_the_openlineage_spec():
    from spindle.lineage import dataset, milvus_dataset

    def named(d):
        return d.namespace, d.name

    assert named(dataset("/w/runs/x/books.parquet")) == ("file", "/w/runs/x/books.parquet")
    assert named(dataset("runs/x/books.parquet", "/w")) == ("file", "/w/runs/x/books.parquet")
    assert named(dataset("file:///w/a.parquet")) == ("file", "/w/a.parquet")
    for scheme in ("s3", "s3a", "s3n"):  # one object, whichever connector reads it
        assert named(dataset(f"{scheme}://bucket-1/p/a.parquet")) == ("s3://bucket-1", "p/a.parquet")
    assert named(dataset("runs/a.parquet", "s3a://bucket-1/root/")) == ("s3://bucket-1", "root/runs/a.parquet")
    assert named(milvus_dataset("http://milvus:19530", "books_text__v1")) == (
        "milvus://milvus:19530",
        "default.books_text__v1",
    )
    assert named(milvus_dataset("https://m.example:443", "c", "prod")) == ("milvus://m.example:443", "prod.c")
    namespace, name = named(milvus_dataset("/srv/spindle.db", "c"))
    assert namespace.startswith("milvus-lite://") and name == "/srv/spindle.db/c"
    with pytest.raises(ValueError, match="no warehouse root"):
        dataset("runs/a.parquet")


def test_load_vectors_reports_the_parquet_it_read_and_the_collection_it_wrote(tmp_path, monkeypatch):
    import datetime as dt

    import pyarrow as pa
    import pyarrow.parquet as pq
    from spindle.vectors.operators import LoadVectorsOperator

    monkeypatch.delenv("AIRFLOW_CONN_SPINDLE_MILVUS", raising=False)
    monkeypatch.setenv("SPINDLE_MILVUS_URI", str(tmp_path / "milvus.db"))
    ids = ["/books/OL1M", "/books/OL2M"]
    pq.write_table(pa.table({"id": ids, "title": ["A", "B"]}), tmp_path / "books.parquet")
    vectors = pa.array([[1.0, 0.0], [0.0, 1.0]], pa.list_(pa.float32()))
    pq.write_table(pa.table({"id": ids, "vector": vectors, "model": ["m", "m"]}), tmp_path / "embeddings.parquet")
    task = LoadVectorsOperator(
        task_id="load_vectors",
        books=str(tmp_path / "books.parquet"),
        sources=[{"alias": "books_text", "embeddings": str(tmp_path / "embeddings.parquet")}],
    )
    run = SimpleNamespace(run_after=dt.datetime(2026, 12, 1, tzinfo=UTC))
    loaded = task.execute({"run_id": "manual__2026-12-01T00:00:00+00:00", "dag_run": run})
    lineage = task.get_openlineage_facets_on_complete(None)
    assert {(d.namespace, d.name) for d in lineage.inputs} == {
        ("file", str(tmp_path / "books.parquet")),
        ("file", str(tmp_path / "embeddings.parquet")),
    }
    ((output),) = lineage.outputs
    assert output.namespace.startswith("milvus-lite://")
    assert output.name == f"{tmp_path / 'milvus.db'}/{loaded['outputs']['books_text']}"
