"""Deferrable waits on a cloud lane: with ``[operators] default_deferrable`` on, the EMR Serverless
lane's waits (application created and started, job run done, application stopped and deleted)
run as the amazon provider's triggers, and the job task still copies the driver's log and returns
the job's metrics when it resumes.

``dag.test()`` runs each trigger in process, as the triggerer would, and resumes the task in a new
operator instance (the resume path of a real deployment). The lane with deferrable off is
``tests/cloud/test_backends.py``.

The Data Proc job task (``yandex`` backend; the provider has no deferrable mode, the trigger is
Spindle's) is driven at the operator level on the gRPC fake: it defers while the job runs, the
trigger polls ``JobService.Get`` to its event, and a new operator instance resumes: the driver
log into the task log, then the job's metrics, or the job's error.
"""

from __future__ import annotations

import asyncio
import json
import logging

import pytest
from spindle.pipelines import run_key

from tests.support.airflow_env import parse_dags
from tests.support.cloud import (
    BUCKET,
    FAILING_JOB,
    METRICS_JOB,
    output_uri,
    read_bytes,
    read_table,
    set_backend_settings,
    task_context,
    upload,
)

pytestmark = [pytest.mark.usefixtures("airflow_db"), pytest.mark.timeout(1200)]

BACKEND = "emr_serverless"
LLM = "spindle_llm_transform"
CONF = {"limit": 12, "max_new_tokens": 2, "batch_size": 8}


@pytest.fixture(scope="module")
def tiny_t5(tmp_path_factory):
    tiny_models = pytest.importorskip("devtools.tiny_models")
    folder = tmp_path_factory.mktemp("tiny-t5")
    tiny_models.build_tiny_t5(folder)
    return str(folder)


def deferred_tasks(records) -> list[str]:
    """The task ids whose run ``dag.test()`` handed to a trigger, in order."""
    current, deferred = None, []
    for record in records:
        message = record.getMessage()
        if "[DAG TEST] starting task_id=" in message:
            current = message.split("task_id=", 1)[1].split()[0]
        elif "[DAG TEST] running trigger in line" in message:
            deferred.append(current)
    return deferred


def test_emr_serverless_lane_with_default_deferrable_on(
    fake_aws, cluster_environment, tiny_t5, monkeypatch, caplog, capfd
):
    monkeypatch.setenv("AIRFLOW__OPERATORS__DEFAULT_DEFERRABLE", "True")
    caplog.set_level(logging.INFO, logger="airflow.sdk.definitions.dag")
    set_backend_settings(BACKEND)
    serverless = fake_aws.moto.client("emr-serverless")
    before = {a["id"] for a in serverless.list_applications()["applications"]}

    dag = parse_dags().dags[LLM]  # parsed now: the operators read default_deferrable when built
    assert dag.task_dict[f"{BACKEND}.llm_transform"].deferrable is True
    run = dag.test(run_conf={**CONF, "backend": BACKEND, "model_path": tiny_t5})
    states = {ti.task_id: str(ti.state) for ti in run.get_task_instances()}
    assert str(run.state) == "success", states

    # every long wait of the lane went through a trigger
    deferred = deferred_tasks(caplog.records)
    for task in ("create_cluster", "llm_transform", "delete_cluster"):
        assert f"{BACKEND}.{task}" in deferred, deferred

    # resumed, the job task copied the driver's log and returned the metrics the job wrote
    out = capfd.readouterr().out
    assert "driver log of job run" in out and "SPINDLE_METRICS " in out
    task = f"{BACKEND}.llm_transform"
    metrics = run.get_task_instance(task).xcom_pull(task_ids=task)
    key = f"spindle/metrics/{LLM}/{run_key(run.run_id)}/{task}.try1.json"
    assert json.loads(read_bytes(f"s3://{BUCKET}/{key}")) == metrics
    assert metrics["rows_transformed"] == CONF["limit"]

    # the output has a label for every input sentence
    sentences = [
        json.loads(line) for line in read_bytes(output_uri(BACKEND, LLM, run.run_id, "sentences.jsonl")).splitlines()
    ]
    labels = read_table(output_uri(BACKEND, LLM, run.run_id, "transformed.parquet"))
    assert sorted(labels["id"]) == sorted(s["id"] for s in sentences) and len(sentences) == CONF["limit"]

    # one application created, and deleted by the deferred teardown
    after = {a["id"]: a["state"] for a in serverless.list_applications()["applications"]}
    new = {k: v for k, v in after.items() if k not in before}
    assert list(new.values()) == ["TERMINATED"], new
    fake_aws.wait_idle()
    assert fake_aws.runner.clusters.running == []


def test_data_proc_job_task_with_default_deferrable_on(fake_yandex, fake_aws, monkeypatch, capfd):
    """``[operators] default_deferrable`` on, setting ``deferrable`` null: the job task submits
    and defers while the job is still running; the trigger's event resumes a new operator
    instance, which copies the driver log and returns the metrics, or fails with the job's error.
    Setting ``deferrable: false`` wins over Airflow's default."""
    import yandex.cloud.dataproc.v1.job_pb2 as job_pb
    from airflow.sdk.exceptions import AirflowException, TaskDeferred
    from spindle.backends.config import validate_settings
    from spindle.yandex.operators import SpindleDataprocCreateClusterOperator, SpindleDataprocPysparkJobOperator
    from spindle.yandex.triggers import DataprocJobTrigger

    monkeypatch.setenv("AIRFLOW__OPERATORS__DEFAULT_DEFERRABLE", "True")
    settings = validate_settings("yandex", set_backend_settings("yandex", poll_interval=1), "test")
    assert settings["deferrable"] is None

    cluster_id = "c9qnotyet"  # the cluster is created below, after the quick checks

    def job_task(job_uri: str | None = None, **overrides):
        staged = {"jobs": {"probe": job_uri or "unused"}, "bucket": BUCKET, "prefix": "spindle", "scheme": "s3a"}
        return SpindleDataprocPysparkJobOperator(
            task_id="embed_text", job="probe", staged=staged, settings={**settings, **overrides}, cluster_id=cluster_id
        )

    def run_deferred(job_uri: str, context: dict):
        """execute() up to its deferral, then the trigger to its event; (event, resume kwargs)."""
        with pytest.raises(TaskDeferred) as deferred:
            job_task(job_uri).execute(context)
        trigger = deferred.value.trigger
        assert isinstance(trigger, DataprocJobTrigger) and deferred.value.method_name == "execute_complete"
        job = fake_yandex.state.jobs[trigger.job_id].proto
        assert job.status not in (job.DONE, job.ERROR), "the task waited for the job instead of deferring"
        assert type(trigger)(**trigger.serialize()[1]).serialize() == trigger.serialize()

        async def first_event():
            async for event in trigger.run():
                return event.payload

        return asyncio.run(first_event()), deferred.value.kwargs

    assert job_task()._deferrable() is True
    assert job_task(deferrable=False)._deferrable() is False
    cluster_id = SpindleDataprocCreateClusterOperator(
        task_id="create_cluster", settings=settings, cluster_name="spindle-test-deferrable"
    ).execute(task_context("create_cluster"))
    try:
        context = task_context("embed_text", "manual__deferrable_ok")
        event, kwargs = run_deferred(upload(fake_aws, "tests/deferrable/metrics.py", METRICS_JOB), context)
        assert event["status"] == "DONE" and event["cluster_id"] == cluster_id
        assert fake_yandex.state.jobs[event["job_id"]].proto.status == job_pb.Job.DONE
        capfd.readouterr()
        assert job_task().execute_complete(context, event, **kwargs) == {"job": "metrics_job", "rows": 3}
        logged = capfd.readouterr().out  # cluster deploy mode: the job log is spark-submit's YARN client
        assert "driver log (Data Proc job log API): begin" in logged and "final status: SUCCEEDED" in logged

        context = task_context("embed_text", "manual__deferrable_failing")
        event, kwargs = run_deferred(upload(fake_aws, "tests/deferrable/failing.py", FAILING_JOB), context)
        assert event["status"] == "ERROR"
        with pytest.raises(AirflowException, match="ended ERROR: Job .* failed: spark-submit exited with code"):
            job_task().execute_complete(context, event, **kwargs)
        logged = capfd.readouterr().out
        assert "driver log (Data Proc job log API): end" in logged and "final status: FAILED" in logged
    finally:
        from spindle.yandex.hooks import SpindleDataprocHook

        SpindleDataprocHook(yandex_conn_id=settings["connection_id"]).dataproc_client.delete_cluster(cluster_id)
    assert cluster_id not in fake_yandex.live_clusters
