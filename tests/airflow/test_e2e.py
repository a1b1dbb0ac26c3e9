"""End to end: both DAGs against a real local Spark cluster, a run whose job fails, and a scan
for the warehouse secret everywhere Airflow or Spark could have put it.

The two successful runs use ``airflow dags test`` (which calls ``dag.test()``) in a subprocess:
its whole output is the task logs, and it is the very command the demo runs. The failing run
calls ``dag.test()`` in-process. Runs are sequential: one cluster at a time on 2 shared cores.
The LLM run's "Spark History" link is then opened on a History Server started after its cluster
was deleted (over the event logs kept under the warehouse).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import psutil
import pytest

from tests.support.airflow_env import (
    AIRFLOW_HOME,
    CONNECTIONS_FILE,
    REPO,
    SPINDLE_HOME,
    WAREHOUSE,
    WAREHOUSE_CONN_ID,
    WAREHOUSE_SECRET,
    spark_daemon_pids,
)
from tests.support.paths import PLUGINS
from tests.support.ui import free_port

pytestmark = pytest.mark.usefixtures("airflow_db")


class ProcWatch:
    """Records the command line and environment of every process descending from ``root_pid``
    (spark-submit, the driver's Python, cluster daemons, executors, their Python workers) while
    it runs. Other people's processes on the machine are ignored."""

    def __init__(self, root_pid: int, interval: float = 0.2) -> None:
        self.root_pid = root_pid
        self.interval = interval
        self.seen: dict[int, dict[str, str]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @staticmethod
    def _parents() -> dict[int, int]:
        return {p.info["pid"]: p.info["ppid"] for p in psutil.process_iter(["pid", "ppid"])}

    def _descendants(self) -> set[int]:
        children: dict[int, list[int]] = {}
        for pid, ppid in self._parents().items():
            children.setdefault(ppid, []).append(pid)
        found, todo = set(), [self.root_pid]
        while todo:
            for child in children.get(todo.pop(), []):
                if child not in found:
                    found.add(child)
                    todo.append(child)
        return found

    def _run(self) -> None:
        while not self._stop.is_set():
            for pid in self._descendants() - set(self.seen):
                try:
                    proc = psutil.Process(pid)
                    cmdline = " ".join(proc.cmdline())
                    environ = "\n".join(f"{key}={value}" for key, value in proc.environ().items())
                except (OSError, psutil.Error):
                    continue
                if cmdline:
                    self.seen[pid] = {"cmdline": cmdline, "environ": environ}
            self._stop.wait(self.interval)


@dataclass
class RunResult:
    dag_id: str
    run_id: str
    state: str
    returncode: int | None
    output: str
    processes: dict[int, dict[str, str]] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def task_states(self) -> dict[str, str]:
        from airflow.models import TaskInstance
        from airflow.utils.session import create_session
        from sqlalchemy import select

        with create_session() as session:
            tis = session.scalars(
                select(TaskInstance).where(TaskInstance.dag_id == self.dag_id, TaskInstance.run_id == self.run_id)
            )
            return {ti.task_id: str(ti.state) for ti in tis}

    def xcom(self, task_id: str, key: str = "return_value") -> Any:
        return xcoms(self.dag_id, self.run_id).get((task_id, key))

    def rendered(self, task_id: str) -> dict[str, Any]:
        return rendered_fields(self.dag_id, self.run_id).get(task_id, {})


def xcoms(dag_id: str, run_id: str) -> dict[tuple[str, str], Any]:
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        rows = session.scalars(select(XComModel).where(XComModel.dag_id == dag_id, XComModel.run_id == run_id))
        return {(x.task_id, x.key): XComModel.deserialize_value(x) for x in rows}


def rendered_fields(dag_id: str, run_id: str) -> dict[str, dict[str, Any]]:
    from airflow.models.renderedtifields import RenderedTaskInstanceFields as RTIF
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        rows = session.scalars(select(RTIF).where(RTIF.dag_id == dag_id, RTIF.run_id == run_id))
        return {r.task_id: r.rendered_fields for r in rows}


def latest_run(dag_id: str):
    from airflow.models import DagRun
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        run = session.scalars(select(DagRun).where(DagRun.dag_id == dag_id).order_by(DagRun.id.desc())).first()
        session.expunge(run)
        return run


def run_dag_cli(dag_id: str, conf: dict[str, Any]) -> RunResult:
    """``airflow dags test <dag_id> -c <conf>`` in a subprocess, watching Spark processes."""
    started = time.monotonic()
    with (
        subprocess.Popen(
            [sys.executable, "-m", "airflow", "dags", "test", dag_id, "-c", json.dumps(conf)],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        ) as proc,
        ProcWatch(proc.pid) as watch,
    ):
        output, _ = proc.communicate(timeout=900)
    run = latest_run(dag_id)
    return RunResult(
        dag_id=dag_id,
        run_id=run.run_id,
        state=str(run.state),
        returncode=proc.returncode,
        output=output,
        processes=dict(watch.seen),
        seconds=time.monotonic() - started,
    )


def assert_local_lane_succeeded(result: RunResult, task_ids: list[str]) -> None:
    """The local lane ran and succeeded; anything else (other backends' lanes) was skipped."""
    states = result.task_states
    for task_id in [*task_ids, "create_cluster", "delete_cluster"]:
        assert states.get(task_id) == "success", (task_id, states)
    assert set(states.values()) <= {"success", "skipped"}, states


def assert_cluster_went_through_xcom_and_is_gone(result: RunResult, job_task_ids: list[str]) -> str:
    from spindle.hooks.local_spark import LocalSparkClusterHook

    cluster_id = result.xcom("create_cluster")
    assert isinstance(cluster_id, str) and cluster_id.startswith("spindle-local-")
    master_url, ui_url = result.xcom("create_cluster", "master_url"), result.xcom("create_cluster", "ui_url")
    assert master_url.startswith("spark://127.0.0.1:") and ui_url.startswith("http://127.0.0.1:")
    for task_id in [*job_task_ids, "delete_cluster"]:
        # the job and delete tasks rendered cluster_id=create.output into the very same id
        assert result.rendered(task_id)["cluster_id"] == cluster_id, task_id
    state = LocalSparkClusterHook().get_cluster(cluster_id)
    assert state.status == "DELETED" and state.master_url == master_url
    assert LocalSparkClusterHook().cluster_processes(cluster_id) == []
    assert [line for line in spark_daemon_pids() if cluster_id in line] == []
    return cluster_id


def assert_spark_ui_links(
    result: RunResult, job_task_ids: list[str], client, history_url: str = "http://localhost:18080"
) -> None:
    """The Spark UI link of each job task and its Spark History link (``SPINDLE_HISTORY_URL``,
    by default ``http://localhost:18080``), as stored at task end and served by the API server."""
    ui_url = result.xcom("create_cluster", "ui_url")
    for task_id in job_task_ids:
        app_id = result.xcom(task_id, "spark_app_id")
        assert re.fullmatch(r"app-\d{14}-\d{4,}", app_id or ""), app_id
        expected = f"{ui_url}/app/?appId={app_id}"
        assert result.xcom(task_id, "_link_SparkUILink") == expected
        url = f"/api/v2/dags/{result.dag_id}/dagRuns/{result.run_id}/taskInstances/{task_id}/links"
        response = client.get(url)
        assert response.status_code == 200, response.text
        history = f"{history_url}/history/{app_id}/jobs/"
        assert response.json()["extra_links"] == {"Spark UI": expected, "Spark History": history}


def assert_vectors_loaded(result: RunResult, embeddings: list[dict[str, Any]]) -> None:
    """load_vectors put every vector into Milvus (the run's milvus-lite file) behind the alias
    ``books_text``, and a book's own vector finds that book first."""
    from spindle.vectors.store import MilvusVectorStore, search

    loaded = result.xcom("load_vectors")
    assert loaded["rows_upserted"] == len(embeddings), loaded
    with MilvusVectorStore(SPINDLE_HOME / "milvus" / "spindle.db") as store:
        assert store.resolve_alias("books_text") == loaded["outputs"]["books_text"]
        assert store.count("books_text") == len(embeddings)
        hits = search(store, "books_text", [row["vector"] for row in embeddings[:3]], 1)
        assert [h[0].id for h in hits] == [row["id"] for row in embeddings[:3]]


def assert_version_recorded(result: RunResult, run_folder: Path, embeddings: list[dict[str, Any]]) -> None:
    """embed_text wrote the run's manifest (with prepare_books' counts, from XCom through the
    templated job args) and moved the ``latest`` pointer to this run's embeddings."""
    manifest = json.loads((run_folder / "manifest.json").read_text())
    prepared = result.xcom("prepare_books")
    assert (manifest["rows"]["read"], manifest["rows"]["kept"], manifest["rows"]["quarantined"]) == (
        prepared["rows_read"],
        prepared["rows_kept"],
        prepared["rows_quarantined"],
    )
    assert manifest["rows"]["written"] == len(embeddings)
    assert manifest["model"]["fingerprint"] == embeddings[0]["model_fingerprint"]
    pointer = json.loads((WAREHOUSE / "runs" / "spindle_nightly_books" / "latest.json").read_text())
    assert pointer["embeddings"] == str(run_folder / "embeddings.parquet")


def parquet_rows(path: Path) -> list[dict[str, Any]]:
    import pyarrow.parquet as pq

    assert path.is_dir() and any(path.glob("*.parquet")), f"no Parquet output at {path}"
    return pq.read_table(path).to_pylist()


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def api_client():
    """The Airflow REST API (the API server's app) answering in-process."""
    from airflow.api_fastapi.app import create_app
    from fastapi.testclient import TestClient

    with TestClient(create_app("core")) as client:
        yield client


@pytest.fixture(scope="module")
def lineage_events(tmp_path_factory):
    """OpenLineage's file transport for this module's DAG runs (the provider's listener in the
    ``airflow dags test`` process writes every task's events there, one JSON per line)."""
    path = tmp_path_factory.mktemp("openlineage") / "events.jsonl"
    transport = {"type": "file", "log_file_path": str(path), "append": True}
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AIRFLOW__OPENLINEAGE__TRANSPORT", json.dumps(transport))
        yield path


@pytest.fixture(scope="module")
def nightly_run(lineage_events) -> RunResult:
    conf = {"reference_year": 2026, "num_workers": 2, "worker_cores": 1, "worker_memory_mb": 1536}
    return run_dag_cli("spindle_nightly_books", conf)


@pytest.fixture(scope="module")
def tiny_t5(tmp_path_factory) -> Path:
    tiny_models = pytest.importorskip("devtools.tiny_models", reason="devtools.tiny_models not available")
    folder = tmp_path_factory.mktemp("tiny-t5")
    built = tiny_models.build_tiny_t5(folder)
    return Path(built) if built else folder


@pytest.fixture(scope="module")
def history_url() -> str:
    """Where the History Server of the history test listens; the LLM run's links point there."""
    return f"http://127.0.0.1:{free_port()}"


@pytest.fixture(scope="module")
def llm_run(tiny_t5, lineage_events, history_url) -> RunResult:
    conf = {"model_path": str(tiny_t5), "limit": 40, "max_new_tokens": 4, "batch_size": 8}
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SPINDLE_HISTORY_URL", history_url)
        return run_dag_cli("spindle_llm_transform", conf)


# --------------------------------------------------------------------------- tests
def test_nightly_books_end_to_end(nightly_run, api_client):
    result = nightly_run
    assert result.returncode == 0, result.output[-5000:]
    assert result.state == "success"
    assert_local_lane_succeeded(result, ["check_params", "prepare_books", "embed_text"])
    assert_cluster_went_through_xcom_and_is_gone(result, ["prepare_books", "embed_text"])
    assert_spark_ui_links(result, ["prepare_books", "embed_text"], api_client)

    run_folder = WAREHOUSE / result.xcom("check_params", "run_prefix")
    assert run_folder == WAREHOUSE / "runs" / "spindle_nightly_books" / re.sub(
        r"[^A-Za-z0-9_.-]+", "_", result.run_id
    ).strip("_.")
    books = parquet_rows(run_folder / "books.parquet")
    embeddings = parquet_rows(run_folder / "embeddings.parquet")
    assert books and len(embeddings) == len(books)
    assert all(len(row["vector"]) == 384 for row in embeddings)  # all-MiniLM-L6-v2
    assert_vectors_loaded(result, embeddings)
    assert_version_recorded(result, run_folder, embeddings)
    assert isinstance(result.xcom("prepare_books"), dict) and isinstance(result.xcom("embed_text"), dict)
    # the driver's output reached the task log
    assert "SPINDLE_METRICS" in result.output and "Connected to Spark cluster with app ID" in result.output
    print(f"nightly run: {result.seconds:.0f} s; metrics {result.xcom('prepare_books')} {result.xcom('embed_text')}")


def test_llm_transform_end_to_end(llm_run, api_client, history_url):
    result = llm_run
    assert result.returncode == 0, result.output[-5000:]
    assert result.state == "success"
    assert_local_lane_succeeded(result, ["check_params", "prepare_sentences", "llm_transform"])
    assert_cluster_went_through_xcom_and_is_gone(result, ["llm_transform"])
    assert_spark_ui_links(result, ["llm_transform"], api_client, history_url)

    run_folder = WAREHOUSE / result.xcom("check_params", "run_prefix")
    sentences = (run_folder / "sentences.jsonl").read_text().splitlines()
    assert len(sentences) == 40
    rows = parquet_rows(run_folder / "transformed.parquet")
    assert len(rows) == 40 and all(isinstance(row["label"], str) for row in rows)
    assert {row["id"] for row in rows} == {json.loads(line)["id"] for line in sentences}
    print(f"llm run: {result.seconds:.0f} s; metrics {result.xcom('llm_transform')}")


def test_link_is_registered_by_the_plugin():
    from airflow import plugins_manager
    from spindle.links.spark_ui import SparkUILink
    from spindle.operators.spark_app import SparkAppJobOperator

    links = [link for link in plugins_manager.get_operator_extra_links() if isinstance(link, SparkUILink)]
    assert links and SparkAppJobOperator in links[0].operators


def test_secret_never_leaks(nightly_run, llm_run):
    """The warehouse password is in the secrets file only: not in task logs, rendered fields,
    XCom, the spark-submit command line or environment, nor in Spark's own logs."""
    secret = WAREHOUSE_SECRET
    assert secret in CONNECTIONS_FILE.read_text()  # the scan below would see it if it were there

    for result in (nightly_run, llm_run):
        assert secret not in result.output, f"{result.dag_id}: secret in task logs"
        rendered = json.dumps(rendered_fields(result.dag_id, result.run_id), default=str)
        assert "cluster_id" in rendered and secret not in rendered, f"{result.dag_id}: rendered fields"
        values = json.dumps({f"{k[0]}/{k[1]}": v for k, v in xcoms(result.dag_id, result.run_id).items()}, default=str)
        assert "cluster" in values and secret not in values, f"{result.dag_id}: XCom"

        submits = [p for p in result.processes.values() if "org.apache.spark.deploy.SparkSubmit" in p["cmdline"]]
        assert submits, f"{result.dag_id}: the process watcher saw no spark-submit"
        for proc in submits:
            # the job gets a reference: a connection id and where the secrets file is
            assert f"--warehouse-conn-id {WAREHOUSE_CONN_ID}" in proc["cmdline"]
            assert f"SPINDLE_SECRETS_SOURCE=file://{CONNECTIONS_FILE}" in proc["environ"].splitlines()
        for pid, proc in result.processes.items():
            assert secret not in proc["cmdline"], f"{result.dag_id}: secret on the command line of {pid}"
            assert secret not in proc["environ"], f"{result.dag_id}: secret in the environment of {pid}"

    for folder in (AIRFLOW_HOME / "logs", SPINDLE_HOME / "clusters"):
        for path in folder.rglob("*") if folder.exists() else []:
            if path.is_file() and path.stat().st_size < 50_000_000:
                assert secret.encode() not in path.read_bytes(), f"secret in {path}"


def test_failing_job_still_deletes_the_cluster(dagbag, tmp_path, no_new_clusters, capfd):
    """A job that fails after the cluster started (a broken model directory): the teardown
    deletes the cluster and the DAG run ends failed."""
    from spindle.hooks.local_spark import LocalSparkClusterHook

    broken_model = tmp_path / "broken-model"
    broken_model.mkdir()
    (broken_model / "config.json").write_text(json.dumps({"model_type": "t5"}))  # no weights, no tokenizer

    dag = dagbag.dags["spindle_llm_transform"]
    conf = {
        "model_path": str(broken_model),
        "limit": 5,
        "num_workers": 1,
        "worker_cores": 1,
        "spark_conf": {"spark.task.maxFailures": 1},  # fail on the first attempt, not the fourth
    }
    run = dag.test(run_conf=conf)
    result = RunResult(dag.dag_id, run.run_id, str(run.state), None, "".join(capfd.readouterr()))
    assert result.state == "failed"
    states = result.task_states
    assert states["create_cluster"] == "success"
    assert states["llm_transform"] == "failed"
    assert states["delete_cluster"] == "success"
    cluster_id = result.xcom("create_cluster")
    assert LocalSparkClusterHook().get_cluster(cluster_id).status == "DELETED"
    assert LocalSparkClusterHook().cluster_processes(cluster_id) == []
    assert result.xcom("llm_transform", "_link_SparkUILink"), "a failed job still links to its Spark UI"
    assert "Cannot execute" in result.output  # spark-submit's failure, with its output's tail
    assert WAREHOUSE_SECRET not in result.output


# --------------------------------------------------------------------------- assets, lineage
def asset_events(asset_name: str, run_id: str) -> list[Any]:
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        rows = session.scalars(
            select(AssetEvent)
            .join(AssetModel, AssetModel.id == AssetEvent.asset_id)
            .where(AssetModel.name == asset_name, AssetEvent.source_run_id == run_id)
        ).all()
        session.expunge_all()
        return list(rows)


def assert_consumer_follows_book_vectors(run_id: str, loaded: dict[str, Any], run_folder: Path, dagbag) -> None:
    """load_vectors of run ``run_id`` emitted the nightly assets with the run's version; Airflow's
    scheduler code (its asset-triggered run creation, called for real) starts
    spindle_books_consumer from them, whose task reports that version from Milvus."""
    from airflow.jobs.job import Job
    from airflow.jobs.scheduler_job_runner import SchedulerJobRunner
    from airflow.models import DagRun
    from airflow.models.asset import AssetDagRunQueue
    from airflow.models.dag import DagModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    (vectors,) = asset_events("spindle_book_vectors", run_id)
    assert vectors.extra["version"] == loaded["version"] and vectors.extra["collections"] == loaded["outputs"]
    (books,) = asset_events("spindle_books", run_id)
    assert books.extra["location"] == str(run_folder / "books.parquet")
    (embeddings,) = asset_events("spindle_book_embeddings", run_id)
    assert embeddings.extra["locations"] == {"books_text": str(run_folder / "embeddings.parquet")}

    consumer = "spindle_books_consumer"
    with create_session() as session:
        assert session.scalars(select(AssetDagRunQueue).where(AssetDagRunQueue.target_dag_id == consumer)).all()
        query, triggered = DagModel.dags_needing_dagruns(session)
        assert consumer in triggered
        due = [model for model in query.all() if model.dag_id == consumer]
        SchedulerJobRunner(job=Job())._create_dag_runs_asset_triggered(dag_models=due, session=session)
        session.flush()
        run = session.scalars(select(DagRun).where(DagRun.dag_id == consumer).order_by(DagRun.id.desc())).first()
        assert str(run.run_type) == "asset_triggered"
        assert vectors.id in {event.id for event in run.consumed_asset_events}
        session.rollback()  # the test runs the consumer itself, below

    report = dagbag.dags[consumer].test()
    assert str(report.state) == "success"
    reported = xcoms(consumer, report.run_id)[("report_new_version", "return_value")]
    assert reported["version"] == loaded["version"] and reported["run_id"] == run_id
    assert reported["collections"]["books_text"] == {
        "collection": loaded["outputs"]["books_text"],
        "rows": loaded["rows_upserted"],
        "serving": True,
    }


def test_outputs_are_assets_and_the_consumer_is_scheduled_on_them(nightly_run, llm_run, dagbag):
    """The nightly run's assets start the consumer; publish_output emitted the LLM asset."""
    run_folder = WAREHOUSE / nightly_run.xcom("check_params", "run_prefix")
    assert_consumer_follows_book_vectors(nightly_run.run_id, nightly_run.xcom("load_vectors"), run_folder, dagbag)
    (llm,) = asset_events("spindle_llm_transformed", llm_run.run_id)
    llm_folder = WAREHOUSE / llm_run.xcom("check_params", "run_prefix")
    assert llm.extra["output"] == str(llm_folder / "transformed.parquet") and llm.extra["backend"] == "local"


def lineage_of(events: list[dict], dag_id: str, task_id: str) -> dict:
    """The COMPLETE event of a task (the file holds this module's runs only)."""
    done = [e for e in events if e["eventType"] == "COMPLETE" and e["job"]["name"] == f"{dag_id}.{task_id}"]
    assert done, f"no COMPLETE event of {dag_id}.{task_id}"
    return done[-1]


def datasets(event: dict, side: str) -> set[tuple[str, str]]:
    return {(d["namespace"], d["name"]) for d in event[side]}


def test_lineage_events_name_each_jobs_inputs_outputs_and_model(nightly_run, llm_run, lineage_events, tiny_t5):
    """The OpenLineage provider's listener sent, for every job task and load_vectors, the
    datasets read and written (namespace ``file`` + absolute path for local files, per the
    OpenLineage naming spec; a Milvus collection for the load) and the model as a run facet."""
    events = [json.loads(line) for line in lineage_events.read_text().splitlines() if line.strip()]
    night = WAREHOUSE / nightly_run.xcom("check_params", "run_prefix")
    dump = nightly_run.xcom("check_params", "input_path")
    prepare = lineage_of(events, "spindle_nightly_books", "prepare_books")
    assert datasets(prepare, "inputs") == {("file", dump)}
    assert datasets(prepare, "outputs") == {("file", str(night / n)) for n in ("books.parquet", "quarantine.parquet")}
    assert "spindle_model" not in prepare["run"]["facets"]

    embed = lineage_of(events, "spindle_nightly_books", "embed_text")
    assert datasets(embed, "inputs") == {("file", str(night / "books.parquet"))}
    assert datasets(embed, "outputs") == {("file", str(night / n)) for n in ("embeddings.parquet", "manifest.json")}
    model = embed["run"]["facets"]["spindle_model"]
    fingerprint = parquet_rows(night / "embeddings.parquet")[0]["model_fingerprint"]
    model_dir = nightly_run.xcom("check_params", "model_path")
    assert (model["kind"], model["location"], model["fingerprint"]) == ("sentence-transformers", model_dir, fingerprint)

    load = lineage_of(events, "spindle_nightly_books", "load_vectors")
    assert datasets(load, "inputs") == {("file", str(night / n)) for n in ("books.parquet", "embeddings.parquet")}
    collection = nightly_run.xcom("load_vectors")["outputs"]["books_text"]
    ((namespace, name),) = datasets(load, "outputs")
    assert namespace.startswith("milvus-lite://") and name == f"{SPINDLE_HOME / 'milvus' / 'spindle.db'}/{collection}"

    llm_folder = WAREHOUSE / llm_run.xcom("check_params", "run_prefix")
    llm = lineage_of(events, "spindle_llm_transform", "llm_transform")
    assert datasets(llm, "inputs") == {("file", str(llm_folder / "sentences.jsonl"))}
    assert datasets(llm, "outputs") == {("file", str(llm_folder / "transformed.parquet"))}
    facet = llm["run"]["facets"]["spindle_model"]
    assert (facet["kind"], facet["name"]) == ("seq2seq", tiny_t5.name)


# --------------------------------------------------------------------------- Spark history
def _get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.status, response.read()


def _wait_json(url: str, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return json.loads(_get(url)[1])
        except (OSError, ValueError):
            if time.monotonic() > deadline:
                raise
        time.sleep(1)


def _serve_history(port: int, log: Path) -> subprocess.Popen:
    """Spark's History Server as ``scripts/airflow_ui.sh`` starts it (``python -m spindle.history
    serve``), over the event logs the runs kept under the warehouse."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(PLUGINS), os.environ.get("PYTHONPATH", "")])}
    with open(log, "wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "spindle.history", "serve", "--port", str(port)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )


def test_history_link_of_the_finished_run_answers_after_the_cluster_is_gone(llm_run, history_url, tmp_path):
    """The LLM run's cluster was deleted by its teardown; its event log was kept under the
    warehouse, and its "Spark History" link answers from a History Server started afterwards."""
    from spindle.hooks.local_spark import LocalSparkClusterHook

    result = llm_run
    assert result.state == "success", result.output[-3000:]
    cluster_id = result.xcom("create_cluster")
    cluster = LocalSparkClusterHook().get_cluster(cluster_id)
    assert cluster.status == "DELETED" and LocalSparkClusterHook().cluster_processes(cluster_id) == []
    with pytest.raises(OSError):
        _get(cluster.ui_url, timeout=2)

    app_id = result.xcom("llm_transform", "spark_app_id")
    kept = {path.name for path in (WAREHOUSE / "_spark-events").iterdir()}
    assert app_id in kept or f"eventlog_v2_{app_id}" in kept, kept  # Spark 4's rolling log: a folder
    expected = f"{history_url}/history/{app_id}/jobs/"
    assert result.xcom("llm_transform", "_link_SparkHistoryLink") == expected

    port = int(history_url.rsplit(":", 1)[1])
    server = _serve_history(port, tmp_path / "history-server.log")
    try:
        api = f"{history_url}/api/v1/applications/{app_id}"
        try:
            app = _wait_json(api, timeout=120)
        except (OSError, ValueError) as err:
            log = (tmp_path / "history-server.log").read_text(errors="replace")[-3000:]
            pytest.fail(f"the History Server did not list {app_id}: {err}\n{log}")
        assert app["id"] == app_id and app["name"].startswith("spindle.") and "llm_transform" in app["name"]
        assert app["attempts"][-1]["completed"] is True
        status, page = _get(expected, timeout=30)
        assert status == 200
        # the application's own jobs page (its title shortens a long app name to 32 characters)
        assert f"<title>{app['name'][:32]}".encode() in page and b" - Spark Jobs</title>" in page, page[:400]
        jobs = json.loads(_get(f"{api}/jobs")[1])
        assert jobs and all(job["status"] == "SUCCEEDED" for job in jobs)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=10)
