"""End to end: both DAGs against a real local Spark cluster, a run whose job fails, and a scan
for the warehouse secret everywhere Airflow or Spark could have put it.

The two successful runs use ``airflow dags test`` (which calls ``dag.test()``) in a subprocess:
its whole output is the task logs, and it is the very command the demo runs. The failing run
calls ``dag.test()`` in-process. Runs are sequential: one cluster at a time on 2 shared cores.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
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


def assert_spark_ui_links(result: RunResult, job_task_ids: list[str], client) -> None:
    ui_url = result.xcom("create_cluster", "ui_url")
    for task_id in job_task_ids:
        app_id = result.xcom(task_id, "spark_app_id")
        assert re.fullmatch(r"app-\d{14}-\d{4,}", app_id or ""), app_id
        expected = f"{ui_url}/app/?appId={app_id}"
        assert result.xcom(task_id, "_link_SparkUILink") == expected
        url = f"/api/v2/dags/{result.dag_id}/dagRuns/{result.run_id}/taskInstances/{task_id}/links"
        response = client.get(url)
        assert response.status_code == 200, response.text
        assert response.json()["extra_links"] == {"Spark UI": expected}


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
def nightly_run() -> RunResult:
    conf = {"reference_year": 2026, "num_workers": 2, "worker_cores": 1, "worker_memory_mb": 1536}
    return run_dag_cli("spindle_nightly_books", conf)


@pytest.fixture(scope="module")
def tiny_t5(tmp_path_factory) -> Path:
    tiny_models = pytest.importorskip("devtools.tiny_models", reason="devtools.tiny_models not available")
    folder = tmp_path_factory.mktemp("tiny-t5")
    built = tiny_models.build_tiny_t5(folder)
    return Path(built) if built else folder


@pytest.fixture(scope="module")
def llm_run(tiny_t5) -> RunResult:
    conf = {"model_path": str(tiny_t5), "limit": 40, "max_new_tokens": 4, "batch_size": 8}
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


def test_llm_transform_end_to_end(llm_run, api_client):
    result = llm_run
    assert result.returncode == 0, result.output[-5000:]
    assert result.state == "success"
    assert_local_lane_succeeded(result, ["check_params", "prepare_sentences", "llm_transform"])
    assert_cluster_went_through_xcom_and_is_gone(result, ["llm_transform"])
    assert_spark_ui_links(result, ["llm_transform"], api_client)

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
