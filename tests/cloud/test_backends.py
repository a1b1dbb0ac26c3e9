"""The nightly DAG on every backend: local, Yandex Data Proc (TLS gRPC fake), EMR on EC2 and
EMR Serverless (moto server + step/job-run runner). Jobs run for real with spark-submit.

Each cloud run must produce the local backend's embeddings, create its cluster / job flow /
application exactly once and delete it exactly once; a failing job must still delete it; a
missing or malformed backend setting must fail the first task before anything is created.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import read_embeddings, run_nightly, set_backend_settings

pytestmark = pytest.mark.timeout(900)

# A driver that dies at once (a real spark-submit failure): the cheapest failing job.
BROKEN_SPARK = {"spark_properties": {"spark.executor.memory": "not-a-size"}}
CLOUD_TASKS = ("stage", "create_cluster", "prepare_books", "embed_text", "delete_cluster")


@pytest.fixture(scope="module")
def local_embeddings(cloud_dagbag):
    run, states = run_nightly(cloud_dagbag, "local")
    assert str(run.state) == "success", states
    assert states["yandex.create_cluster"] == "skipped"
    return read_embeddings(run.run_id)


def assert_same_embeddings(run_id, expected):
    got = read_embeddings(run_id)
    assert len(got) == len(expected) > 0
    assert list(got["id"]) == list(expected["id"])
    assert np.allclose(np.stack(got["vector"]), np.stack(expected["vector"]), atol=1e-5)
    assert list(got["model_fingerprint"]) == list(expected["model_fingerprint"])


def lane_states(states, lane):
    return {t: states.get(f"{lane}.{t}") for t in CLOUD_TASKS if f"{lane}.{t}" in states}


# --------------------------------------------------------------------------- Yandex Data Proc
def test_yandex_backend_matches_local(cloud_dagbag, fake_yandex, local_embeddings, no_new_spark_processes):
    set_backend_settings("yandex")
    before = (fake_yandex.state.count("Cluster.Create"), fake_yandex.state.count("Cluster.Delete"))
    run, states = run_nightly(cloud_dagbag, "yandex")
    assert str(run.state) == "success", states
    assert set(lane_states(states, "yandex").values()) == {"success"}
    assert states["create_cluster"] == "skipped" and states["emr.create_cluster"] == "skipped"
    assert fake_yandex.state.count("Cluster.Create") == before[0] + 1
    assert fake_yandex.state.count("Cluster.Delete") == before[1] + 1
    assert fake_yandex.live_clusters == []
    created = [d for n, d in fake_yandex.state.calls if n == "Cluster.Create"][-1]
    assert created["labels"]["spindle-managed"] == "true"
    assert created["labels"]["spindle-dag"] == "spindle_nightly_books"
    assert created["labels"]["spindle-ttl-hours"] == "6"
    ti = run.get_task_instance("yandex.embed_text")
    assert ti.xcom_pull(task_ids="yandex.embed_text")["job"] == "embed_text"  # metrics from the driver log
    assert ti.xcom_pull(task_ids="yandex.embed_text", key="spark_ui_url").startswith("http://127.0.0.1:")
    assert_same_embeddings(run.run_id, local_embeddings)


def test_yandex_failing_job_still_deletes_the_cluster(cloud_dagbag, fake_yandex, no_new_spark_processes):
    set_backend_settings("yandex", **BROKEN_SPARK)
    before = fake_yandex.state.count("Cluster.Delete")
    run, states = run_nightly(cloud_dagbag, "yandex")
    assert str(run.state) == "failed"
    assert states["yandex.create_cluster"] == "success"
    assert states["yandex.prepare_books"] == "failed"
    assert states["yandex.delete_cluster"] == "success"
    assert fake_yandex.state.count("Cluster.Delete") == before + 1
    assert fake_yandex.live_clusters == []


# --------------------------------------------------------------------------- EMR on EC2
def _emr_clusters(fake_aws):
    return fake_aws.moto.client("emr").list_clusters()["Clusters"]


def test_emr_backend_matches_local(cloud_dagbag, fake_aws, local_embeddings, no_new_spark_processes):
    set_backend_settings("emr")
    before = {c["Id"] for c in _emr_clusters(fake_aws)}
    run, states = run_nightly(cloud_dagbag, "emr")
    assert str(run.state) == "success", states
    new = [c for c in _emr_clusters(fake_aws) if c["Id"] not in before]
    assert len(new) == 1, new
    assert new[0]["Status"]["State"] == "TERMINATED"
    tags = {t["Key"]: t["Value"] for t in fake_aws.moto.client("emr").describe_cluster(ClusterId=new[0]["Id"])
            ["Cluster"]["Tags"]}  # fmt: skip
    assert tags["spindle-managed"] == "true" and tags["spindle-dag"] == "spindle_nightly_books"
    assert run.get_task_instance("emr.embed_text").xcom_pull(task_ids="emr.embed_text")["job"] == "embed_text"
    assert_same_embeddings(run.run_id, local_embeddings)
    fake_aws.wait_idle()
    assert fake_aws.runner.clusters.running == []


def test_emr_failing_step_still_terminates(cloud_dagbag, fake_aws, no_new_spark_processes):
    set_backend_settings("emr", **BROKEN_SPARK)
    before = {c["Id"] for c in _emr_clusters(fake_aws)}
    run, states = run_nightly(cloud_dagbag, "emr")
    assert str(run.state) == "failed"
    assert states["emr.prepare_books"] == "failed"
    assert states["emr.delete_cluster"] == "success"
    new = [c for c in _emr_clusters(fake_aws) if c["Id"] not in before]
    assert [c["Status"]["State"] for c in new] == ["TERMINATED"]
    fake_aws.wait_idle()
    assert fake_aws.runner.clusters.running == []


# --------------------------------------------------------------------------- EMR Serverless
def _apps(fake_aws):
    return fake_aws.moto.client("emr-serverless").list_applications()["applications"]


def test_emr_serverless_backend_matches_local(cloud_dagbag, fake_aws, local_embeddings, no_new_spark_processes):
    set_backend_settings("emr_serverless")
    before = {a["id"] for a in _apps(fake_aws)}
    run, states = run_nightly(cloud_dagbag, "emr_serverless")
    assert str(run.state) == "success", states
    new = [a for a in _apps(fake_aws) if a["id"] not in before]
    assert [a["state"] for a in new] == ["TERMINATED"]
    assert_same_embeddings(run.run_id, local_embeddings)
    fake_aws.wait_idle()
    assert fake_aws.runner.clusters.running == []


def test_emr_serverless_failing_job_still_deletes(cloud_dagbag, fake_aws, no_new_spark_processes):
    set_backend_settings("emr_serverless", **BROKEN_SPARK)
    before = {a["id"] for a in _apps(fake_aws)}
    run, states = run_nightly(cloud_dagbag, "emr_serverless")
    assert str(run.state) == "failed"
    assert states["emr_serverless.prepare_books"] == "failed"
    assert states["emr_serverless.delete_cluster"] == "success"
    assert [a["state"] for a in _apps(fake_aws) if a["id"] not in before] == ["TERMINATED"]
    fake_aws.wait_idle()
    assert fake_aws.runner.clusters.running == []
