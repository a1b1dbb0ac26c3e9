"""Deferrable waits on a cloud lane: with ``[operators] default_deferrable`` on, the EMR Serverless
lane's waits (application created and started, job run done, application stopped and deleted)
run as the amazon provider's triggers, and the job task still copies the driver's log and returns
the job's metrics when it resumes.

``dag.test()`` runs each trigger in process, as the triggerer would, and resumes the task in a new
operator instance (the resume path of a real deployment). The lane with deferrable off is
``tests/cloud/test_backends.py``.
"""

from __future__ import annotations

import json
import logging

import pytest
from spindle.pipelines import run_key

from tests.support.airflow_env import parse_dags
from tests.support.cloud import BUCKET, output_uri, read_bytes, read_table, set_backend_settings

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
