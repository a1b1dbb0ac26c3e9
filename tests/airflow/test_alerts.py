"""Failure emails (``spindle.alerts.FailureEmail``, every task's ``on_failure_callback``) through
the SMTP provider's ``SmtpNotifier``, against a real SMTP server on loopback that requires the
connection's login and password: a failed run sends one email naming the DAG, run, task and log
URL; the password reaches the server and nowhere else; no connection means no email and no error."""

from __future__ import annotations

import json
import secrets
from pathlib import Path
from urllib.parse import quote

import pytest

from tests.support.airflow_env import AIRFLOW_HOME, WAREHOUSE_SECRET
from tests.support.paths import DAGS as REPO_DAGS
from tests.support.smtp import SmtpServer

pytestmark = pytest.mark.usefixtures("airflow_db")

SMTP_LOGIN = "spindle-alerts"
SMTP_PASSWORD = "smtp-test-" + secrets.token_urlsafe(18)
RECIPIENTS = ["oncall@example.test", "data-team@example.test"]
DAG_ID = "spindle_nightly_books"


@pytest.fixture
def bag():
    """A DagBag of its own per test: dag.test() leaves the run's conf in the DAG objects' params
    (``tests.support.airflow_env.parse_dags``), and these runs use failing confs."""
    from tests.support.airflow_env import parse_dags

    return parse_dags()


@pytest.fixture
def smtp(monkeypatch):
    """The SMTP server, the connection ``spindle_alerts_smtp`` pointing at it, and the
    recipients Variable (env ``AIRFLOW_CONN_*`` / ``AIRFLOW_VAR_*``, as a deployment may set them)."""
    with SmtpServer(SMTP_LOGIN, SMTP_PASSWORD) as server:
        connection = {
            "conn_type": "smtp",
            "host": server.host,
            "port": server.port,
            "login": SMTP_LOGIN,
            "password": SMTP_PASSWORD,
            "extra": {
                "from_email": "spindle@example.test",
                "disable_tls": True,  # plain SMTP on loopback
                "disable_ssl": True,
                "timeout": 10,
                "retry_limit": 0,
            },
        }
        monkeypatch.setenv("AIRFLOW_CONN_SPINDLE_ALERTS_SMTP", json.dumps(connection))
        monkeypatch.setenv("AIRFLOW_VAR_SPINDLE_ALERT_EMAILS", ", ".join(RECIPIENTS))
        yield server


def _task_logs() -> str:
    """Every task log file Airflow wrote in this session (dag.test() also prints them)."""
    root = AIRFLOW_HOME / "logs"
    return "".join(p.read_text(errors="replace") for p in root.rglob("*") if p.is_file()) if root.exists() else ""


def _states(run) -> dict[str, str]:
    return {ti.task_id: str(ti.state) for ti in run.get_task_instances()}


def _assert_email_names(received, run, task_id: str) -> None:
    subject = received.message["Subject"]
    body = received.body()
    assert DAG_ID in subject and task_id in subject and run.run_id in subject
    for text in (DAG_ID, run.run_id, task_id):
        assert text in body
    log_url = f"/dags/{DAG_ID}/runs/{quote(run.run_id)}/tasks/{task_id}"
    assert log_url in body, body
    assert received.rcpt_to == RECIPIENTS and received.mail_from == "spindle@example.test"


def test_failed_task_sends_one_email_and_no_secret_leaks(bag, smtp, no_new_clusters, capfd):
    """A run that fails in its first task (a missing input; no cluster): one email, for that task."""
    run = bag.dags[DAG_ID].test(run_conf={"input_path": "data/no/such/dump.txt"})
    output = "".join(capfd.readouterr())
    assert str(run.state) == "failed" and _states(run)["check_params"] == "failed"
    assert len(smtp.messages) == 1, [m.message["Subject"] for m in smtp.messages]
    received = smtp.messages[0]
    _assert_email_names(received, run, "check_params")
    assert "does not exist" in received.body()  # the error, redacted by the secrets masker
    assert smtp.auth_attempts == [(SMTP_LOGIN, True)]  # the password did reach the server
    assert f"Failure email for {DAG_ID}.check_params sent to {', '.join(RECIPIENTS)}" in output
    for secret in (SMTP_PASSWORD, WAREHOUSE_SECRET):
        assert secret not in output
        assert secret not in _task_logs()
        assert secret not in received.raw


def test_failing_job_sends_one_email_and_the_cluster_is_deleted(bag, smtp, no_new_clusters, capfd):
    """A Spark job that fails (its driver cannot start: an invalid driver memory): one email, for
    that job's task; the downstream tasks never ran (no email for them); the teardown deleted the
    cluster (and sent nothing: it succeeded)."""
    from spindle.hooks.local_spark import LocalSparkClusterHook

    conf = {"limit": 5, "worker_cores": 1, "spark_conf": {"spark.driver.memory": "not-a-size"}}
    run = bag.dags[DAG_ID].test(run_conf=conf)
    output = "".join(capfd.readouterr())
    states = _states(run)
    assert str(run.state) == "failed"
    assert states["create_cluster"] == "success" and states["prepare_books"] == "failed"
    assert states["embed_text"] == "upstream_failed" and states["delete_cluster"] == "success"
    assert "Time limit of this try: 180 min (param job_timeout_minutes)" in output
    assert [m.message["Subject"] for m in smtp.messages] == [
        f"[Spindle] {DAG_ID}: task prepare_books failed (run {run.run_id})"
    ]
    _assert_email_names(smtp.messages[0], run, "prepare_books")
    hook = LocalSparkClusterHook()
    cluster_id = next(c.cluster_id for c in hook.list_clusters() if c.labels.get("run") == run.run_id)
    assert hook.get_cluster(cluster_id).status == "DELETED" and hook.cluster_processes(cluster_id) == []
    for secret in (SMTP_PASSWORD, WAREHOUSE_SECRET):
        assert secret not in output and secret not in _task_logs() and secret not in smtp.messages[0].raw


def test_no_connection_no_email_no_error(bag, monkeypatch, capfd):
    """Without the connection a failed task logs one line and nothing else happens."""
    monkeypatch.delenv("AIRFLOW_CONN_SPINDLE_ALERTS_SMTP", raising=False)
    monkeypatch.setenv("AIRFLOW_VAR_SPINDLE_ALERT_EMAILS", RECIPIENTS[0])
    run = bag.dags[DAG_ID].test(run_conf={"input_path": "data/no/such/dump.txt"})
    output = "".join(capfd.readouterr())
    assert str(run.state) == "failed" and _states(run)["check_params"] == "failed"
    assert output.count("No failure email: connection 'spindle_alerts_smtp' is not configured") == 1
    assert "Failed to run task callback" not in output and "Failed to send notification" not in output


def test_recipients_from_the_variable():
    from spindle.alerts import recipients

    assert recipients(None) == []
    assert recipients(" a@x.test, b@x.test;c@x.test ") == ["a@x.test", "b@x.test", "c@x.test"]
    assert recipients('["a@x.test", " b@x.test"]') == ["a@x.test", "b@x.test"]
    assert recipients(["a@x.test"]) == ["a@x.test"]


def test_every_task_of_the_model_dags_alerts_and_retries(dagbag):
    """The production defaults: each task has the failure email and retries with exponential
    backoff (count from env SPINDLE_TASK_RETRIES: the tests set 0); each job task, on every lane,
    has a time limit set from param job_timeout_minutes."""
    from datetime import timedelta

    from spindle.alerts import FailureEmail
    from spindle.pipelines import JobPreExecute, set_job_timeout, task_defaults

    assert task_defaults()["retries"] == 0  # tests/support/airflow_env.py
    for dag_id in (DAG_ID, "spindle_llm_transform", "spindle_reaper"):
        for task in dagbag.dags[dag_id].tasks:
            assert any(isinstance(cb, FailureEmail) for cb in task.on_failure_callback), task.task_id
            assert task.retry_exponential_backoff == 2.0 and task.max_retry_delay == timedelta(minutes=30)
    jobs = {"prepare_books", "embed_text", "embed_images"}
    dag = dagbag.dags[DAG_ID]
    for task in dag.tasks:
        if task.task_id.split(".")[-1] in jobs:
            hook = task._pre_execute_hook
            assert isinstance(hook, JobPreExecute) or hook is set_job_timeout, task.task_id
            assert task.execution_timeout == timedelta(minutes=180), task.task_id
    assert Path(dag.fileloc).name == "spindle_nightly_books.py"


def test_task_retries_env(monkeypatch):
    from spindle.pipelines import task_retries

    monkeypatch.delenv("SPINDLE_TASK_RETRIES")
    assert task_retries() == 2
    monkeypatch.setenv("SPINDLE_TASK_RETRIES", "5")
    assert task_retries() == 5
    monkeypatch.setenv("SPINDLE_TASK_RETRIES", "many")
    with pytest.raises(ValueError, match="SPINDLE_TASK_RETRIES"):
        task_retries()


def test_job_timeout_follows_the_param(dagbag):
    """The job task's pre_execute sets its execution_timeout from the run's param (the task
    runner applies it around execute), then runs the job's own pre_execute."""
    from datetime import timedelta

    task = dagbag.dags["spindle_llm_transform"].get_task("llm_transform").prepare_for_execution()
    task._pre_execute_hook({"params": {"job_timeout_minutes": 7}, "task": task})
    assert task.execution_timeout == timedelta(minutes=7)


# --------------------------------------------------------------------------- drift
def _write_version(folder: Path, ids: list[str], vectors, model: str) -> None:
    """books.parquet and embeddings.parquet as prepare_books / embed_text write them."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"id": ids, "title": [f"Book {i}" for i in ids]}), folder / "books.parquet")
    pq.write_table(
        pa.table(
            {
                "id": ids,
                "vector": pa.array(vectors.tolist(), pa.list_(pa.float32())),
                "model": [model] * len(ids),
                "model_fingerprint": ["sha256:test"] * len(ids),
            }
        ),
        folder / "embeddings.parquet",
    )


@pytest.fixture
def asset_queue_cleared():
    """Empties Airflow's asset-triggered run queue after the test. A live scheduler consumes it at
    once; here none runs, and a row left behind would date the next asset-triggered run to this
    test's event (``test_e2e`` checks that the consumer follows the nightly run's own event)."""
    yield
    from airflow.models.asset import AssetDagRunQueue
    from airflow.utils.session import create_session
    from sqlalchemy import delete

    with create_session() as session:
        session.execute(delete(AssetDagRunQueue))


@pytest.mark.usefixtures("asset_queue_cleared")
def test_drift_sends_one_email_and_holds_the_alias_until_approved(bag, smtp, tmp_path, monkeypatch, capfd):
    """A nightly run whose manifest flags drift, with param hold_alias_on_drift: load_vectors (run
    for real by dag.test(); the Spark tasks are marked success by Airflow's mark_success_pattern,
    their outputs written here as the jobs write them) loads the version without moving the
    alias and sends one drift email; `versions switch`, the approval, then moves it."""
    import datetime as dt

    import numpy as np
    from spark_apps.common import drift
    from spindle.pipelines import default_embedding_model, run_prefix
    from spindle.vectors import versions
    from spindle.vectors.loading import load_embeddings
    from spindle.vectors.store import MilvusVectorStore

    from tests.support.airflow_env import WAREHOUSE

    monkeypatch.delenv("AIRFLOW_CONN_SPINDLE_MILVUS", raising=False)
    monkeypatch.setenv("SPINDLE_MILVUS_URI", str(tmp_path / "milvus.db"))
    rng = np.random.default_rng(7)
    ids = [f"/books/OL{i}M" for i in range(60)]
    previous = rng.normal(size=(60, 16))
    current = previous + 1.5  # every vector moved: a shift a classifier tells apart
    figures = drift.compare(previous, current)  # the job's own drift figures
    assert figures["drift_detected"] and figures["classifier_auc"] > figures["auc_threshold"]

    # The version search serves now.
    _write_version(tmp_path / "previous", ids, previous, "test-model")
    with MilvusVectorStore(tmp_path / "milvus.db") as store:
        served = load_embeddings(
            store,
            tmp_path / "previous" / "embeddings.parquet",
            alias="books_text",
            version="v20261101000000_aaaaaa",
            books_path=tmp_path / "previous" / "books.parquet",
            model_dir=default_embedding_model(),
        ).collection

    run_after = dt.datetime.now(dt.UTC).replace(microsecond=0)
    run_id = f"manual__{run_after.isoformat()}"
    folder = WAREHOUSE / run_prefix(DAG_ID, run_id)
    _write_version(folder, ids, current, "test-model")
    (folder / "manifest.json").write_text(json.dumps({"drift": figures}))

    spark_tasks = r"create_cluster|prepare_books|embed_text|embed_images|delete_cluster"
    run = bag.dags[DAG_ID].test(
        run_after=run_after, run_conf={"hold_alias_on_drift": True}, mark_success_pattern=spark_tasks
    )
    output = "".join(capfd.readouterr())
    assert run.run_id == run_id and str(run.state) == "success", _states(run)
    assert _states(run)["load_vectors"] == "success"

    assert len(smtp.messages) == 1, [m.message["Subject"] for m in smtp.messages]
    mail = smtp.messages[0]
    assert mail.message["Subject"] == f"[Spindle] {DAG_ID}: embedding drift above the threshold (run {run_id})"
    with MilvusVectorStore(tmp_path / "milvus.db") as store:
        new = [info.name for info in store.versions("books_text") if info.name != served]
        assert len(new) == 1 and store.count(new[0]) == len(ids)
        assert store.resolve_alias("books_text") == served  # held back: search serves the previous version
    body = mail.body()
    assert f"python -m spindle.vectors.versions switch books_text {new[0]}" in body
    assert str(figures["classifier_auc"]) in body and mail.rcpt_to == RECIPIENTS
    assert "books_text held back on" in output

    assert versions.main(["switch", "books_text", new[0]]) == 0  # the approval
    with MilvusVectorStore(tmp_path / "milvus.db") as store:
        assert store.resolve_alias("books_text") == new[0]


# --------------------------------------------------------------------------- deadline
def test_a_run_past_its_deadline_sends_one_email(smtp, monkeypatch):
    """Airflow's own deadline alert: a run created through the REST API (queued, as a trigger
    makes it) of the nightly DAG parsed with a 60 ms deadline gets a Deadline row; once it has
    passed, the scheduler's handling (Deadline.handle_miss) queues the callback and the
    executor's callback runner (execute_callback) sends one email."""
    import time
    from datetime import timedelta

    from airflow.api_fastapi.app import create_app
    from airflow.dag_processing.bundles.manager import DagBundlesManager
    from airflow.dag_processing.dagbag import sync_bag_to_db
    from airflow.models import DagRun
    from airflow.models.deadline import Deadline
    from airflow.sdk.execution_time.callback_supervisor import execute_callback
    from airflow.utils.session import create_session
    from fastapi.testclient import TestClient
    from sqlalchemy import select

    from tests.support.airflow_env import parse_dags

    monkeypatch.setenv("SPINDLE_RUN_DEADLINE_MINUTES", "0.001")
    # An earlier test may have stored this DAG (without a deadline) less than 30 s ago: Airflow
    # would keep that version instead of the one parsed here.
    monkeypatch.setenv("AIRFLOW__CORE__MIN_SERIALIZED_DAG_UPDATE_INTERVAL", "0")
    bag = parse_dags()
    DagBundlesManager().sync_bundles_to_db()
    sync_bag_to_db(bag, "dags-folder", None)  # what the dag processor does
    with TestClient(create_app("core")) as client:
        response = client.post(f"/api/v2/dags/{DAG_ID}/dagRuns", json={"logical_date": None, "conf": {"limit": 1}})
    assert response.status_code == 200, response.text
    run_id = response.json()["dag_run_id"]
    try:
        time.sleep(0.5)
        with create_session() as session:
            run = session.scalar(select(DagRun).where(DagRun.dag_id == DAG_ID, DagRun.run_id == run_id))
            deadlines = session.scalars(select(Deadline).where(Deadline.dagrun_id == run.id)).all()
            assert len(deadlines) == 1
            assert deadlines[0].deadline_time == run.queued_at + timedelta(minutes=0.001)
            deadlines[0].handle_miss(session)  # the scheduler loop's call for a deadline in the past
            data = dict(deadlines[0].callback.data)
        assert smtp.messages == []  # queued, not yet run
        import structlog  # the executor's supervisor logs with structlog

        ok, error = execute_callback(data["path"], data["kwargs"], REPO_DAGS, None, structlog.get_logger("test"))
        assert ok, error
        assert len(smtp.messages) == 1
        mail = smtp.messages[0]
        assert mail.message["Subject"] == f"[Spindle] {DAG_ID}: run {run_id} is past its deadline"
        assert run_id in mail.body() and mail.rcpt_to == RECIPIENTS
    finally:
        with create_session() as session:
            session.delete(session.scalar(select(DagRun).where(DagRun.dag_id == DAG_ID, DagRun.run_id == run_id)))


def test_run_deadline_env(monkeypatch):
    from spindle.alerts import run_deadline, run_deadline_minutes

    monkeypatch.delenv("SPINDLE_RUN_DEADLINE_MINUTES", raising=False)
    assert run_deadline_minutes() == 0 and run_deadline() is None
    monkeypatch.setenv("SPINDLE_RUN_DEADLINE_MINUTES", "240")
    assert run_deadline().interval.total_seconds() == 240 * 60
    monkeypatch.setenv("SPINDLE_RUN_DEADLINE_MINUTES", "0")
    assert run_deadline() is None
    monkeypatch.setenv("SPINDLE_RUN_DEADLINE_MINUTES", "soon")
    with pytest.raises(ValueError, match="SPINDLE_RUN_DEADLINE_MINUTES"):
        run_deadline_minutes()
