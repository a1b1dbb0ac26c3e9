"""Both DAGs on every cloud lane, against fakes whose clusters share nothing with Airflow.

The fake clusters (tests/fakes) run a managed image of their own: pyspark 3.5, pandas, numpy,
pyarrow, boto3; no torch, no transformers, no Airflow, no access to this machine's files. So a
run succeeds only when Spindle ships what a real account would need: the cluster environment
(packed from requirements-cluster.txt), the models, the code and the inputs, all through the
bucket, and the secrets through the cloud's own secret store. Expected values come from the
local lane (the same DAG on a local cluster with the Airflow side's own Python).

Each cloud run must: produce the local lane's embeddings and LLM labels, write outputs,
manifest and metrics into the bucket, load the run's vectors into Milvus (searchable), create
its cluster / job flow / application exactly once and delete it exactly once. A failing job
must still delete it; a lane whose cluster has no model libraries fails naming them.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from spindle.pipelines import run_key
from spindle.vectors.search import run_search

from tests.support.cloud import (
    BUCKET,
    output_uri,
    read_bytes,
    read_embeddings,
    read_table,
    run_dag,
    run_nightly,
    set_backend_settings,
)

pytestmark = pytest.mark.timeout(1800)

CLOUDS = ("yandex", "yandex_spark", "emr", "emr_serverless")
# A driver that dies at once (a real spark-submit failure): the cheapest failing job.
BROKEN_SPARK = {"spark_properties": {"spark.executor.memory": "not-a-size"}}
NIGHTLY_TASKS = ("stage", "create_cluster", "prepare_books", "embed_text", "embed_images", "delete_cluster")
LLM = "spindle_llm_transform"
LLM_CONF = {"limit": 40, "max_new_tokens": 4, "batch_size": 8}
#: The marker each lane's job task writes around the driver log it copies into the task log.
DRIVER_LOG_TITLE = {
    "yandex": "driver log (Data Proc job log API): begin",
    "yandex_spark": "driver log (Managed Spark ListLog): begin",
    "emr": "driver log of step",
    "emr_serverless": "driver log of job run",
}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Tiny random CLIP and T5 models (real tokenizers), built through transformers' config
    classes: no model hub here."""
    tiny_models = pytest.importorskip("devtools.tiny_models")
    clip = tmp_path_factory.mktemp("tiny-clip")
    t5 = tmp_path_factory.mktemp("tiny-t5")
    tiny_models.build_tiny_clip(clip)
    tiny_models.build_tiny_t5(t5)
    return {"clip": str(clip), "t5": str(t5)}


@pytest.fixture(scope="module")
def covers(tmp_path_factory):
    """A covers folder named the way embed_images looks images up (``<cover id>.jpg``): the
    bundled real covers, one per cover id of the sample dump (the dump's own covers are not
    bundled), so every lane embeds real JPEGs."""
    import itertools
    import shutil

    from tests.support.paths import REPO

    folder = tmp_path_factory.mktemp("covers")
    jpegs = itertools.cycle(sorted((REPO / "data" / "samples" / "covers").rglob("*.jpg")))
    with open(REPO / "data" / "samples" / "openlibrary" / "editions-head-n1000.txt", encoding="utf-8") as dump:
        for line in dump:
            record = json.loads(line.rstrip("\n").split("\t")[-1])
            for cover_id in record.get("covers") or []:
                if cover_id > 0:
                    shutil.copyfile(next(jpegs), folder / f"{cover_id}.jpg")
    return str(folder)


@pytest.fixture(scope="module")
def local(cloud_dagbag, models, covers):
    """The local lane's results: what every cloud lane must reproduce."""
    run, states = run_nightly(cloud_dagbag, "local", clip_model_path=models["clip"], covers_source=covers)
    assert str(run.state) == "success", states
    assert states["yandex.create_cluster"] == "skipped" and states["embed_images"] == "success"
    llm, llm_states = run_dag(cloud_dagbag, LLM, backend="local", model_path=models["t5"], **LLM_CONF)
    assert str(llm.state) == "success", llm_states
    return {
        "embeddings": read_embeddings(run.run_id),
        "covers": read_table(output_uri("local", "spindle_nightly_books", run.run_id, "cover_embeddings.parquet")),
        "labels": read_table(output_uri("local", LLM, llm.run_id, "transformed.parquet")),
    }


def lane_states(states, lane, tasks=NIGHTLY_TASKS):
    return {t: states.get(f"{lane}.{t}") for t in tasks}


def xcom(run, task_id, key="return_value"):
    return run.get_task_instance(task_id).xcom_pull(task_ids=task_id, key=key)


def bucket_keys(fake_aws, prefix):
    listed = fake_aws.moto.client("s3").list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents", [])
    return [o["Key"] for o in listed]


class Clusters:
    """What a fake cloud created and deleted: counted from the fake's own records."""

    def __init__(self, backend, fake_yandex, fake_aws):
        self.backend, self.yandex, self.aws = backend, fake_yandex, fake_aws

    def snapshot(self):
        if self.backend == "yandex":
            return self.yandex.state.count("Cluster.Create"), self.yandex.state.count("Cluster.Delete")
        if self.backend == "yandex_spark":
            return self.yandex.state.count("Spark.Cluster.Create"), self.yandex.state.count("Spark.Cluster.Delete")
        if self.backend == "emr":
            listed = self.aws.moto.client("emr").list_clusters()["Clusters"]
            return {c["Id"]: c["Status"]["State"] for c in listed}
        apps = self.aws.moto.client("emr-serverless").list_applications()["applications"]
        return {a["id"]: a["state"] for a in apps}

    def assert_one_created_and_gone(self, before):
        after = self.snapshot()
        if self.backend in ("yandex", "yandex_spark"):
            assert after == (before[0] + 1, before[1] + 1)
            assert self.yandex.live_clusters == [] and self.yandex.spark.live_clusters == []
        else:
            new = {k: v for k, v in after.items() if k not in before}
            assert list(new.values()) == ["TERMINATED"], new
            self.aws.wait_idle()
            assert self.aws.runner.clusters.running == []


@pytest.fixture
def clouds(request):
    def fakes(backend):
        fake_aws = request.getfixturevalue("fake_aws")
        fake_yandex = request.getfixturevalue("fake_yandex") if backend.startswith("yandex") else None
        return Clusters(backend, fake_yandex, fake_aws)

    return fakes


# --------------------------------------------------------------------------- both DAGs, every lane
@pytest.mark.parametrize("backend", CLOUDS)
def test_both_dags_run_on_a_cluster_that_shares_nothing(
    backend,
    cloud_dagbag,
    cluster_environment,
    models,
    covers,
    local,
    clouds,
    capfd,
    no_new_spark_processes,
    monkeypatch,
):
    fakes = clouds(backend)
    set_backend_settings(backend)
    monkeypatch.setenv("SPINDLE_PROGRESS_INTERVAL", "2")  # short test jobs: progress every 2 s
    before = fakes.snapshot()
    run, states = run_nightly(cloud_dagbag, backend, clip_model_path=models["clip"], covers_source=covers)
    assert str(run.state) == "success", states
    assert set(lane_states(states, backend).values()) == {"success"}, lane_states(states, backend)
    assert states["load_vectors"] == "success" and states["create_cluster"] == "skipped"
    fakes.assert_one_created_and_gone(before)

    # outputs, manifest and metrics are in the bucket, and equal the local lane's
    embeddings = read_embeddings(run.run_id, backend)
    expected = local["embeddings"]
    assert list(embeddings["id"]) == list(expected["id"]) and len(embeddings) > 0
    assert np.allclose(np.stack(embeddings["vector"]), np.stack(expected["vector"]), atol=1e-5)
    assert list(embeddings["model_fingerprint"]) == list(expected["model_fingerprint"])
    manifest = json.loads(read_bytes(output_uri(backend, "spindle_nightly_books", run.run_id, "manifest.json")))
    assert manifest["rows"]["written"] == len(embeddings)
    for job in ("prepare_books", "embed_text", "embed_images"):
        metrics = xcom(run, f"{backend}.{job}")
        assert metrics["job"] == job
        # one object per try, written by the job (EMR: under its submit task's id)
        [key] = bucket_keys(fakes.aws, f"spindle/metrics/spindle_nightly_books/{run_key(run.run_id)}/{backend}.{job}")
        assert json.loads(read_bytes(f"s3://{BUCKET}/{key}")) == metrics  # the XCom is the bucket's object
    cover_vectors = read_table(output_uri(backend, "spindle_nightly_books", run.run_id, "cover_embeddings.parquet"))
    expected = local["covers"].dropna(subset=["vector"])
    assert xcom(run, f"{backend}.embed_images")["images_embedded"] == len(expected) > 0
    cover_vectors = cover_vectors.dropna(subset=["vector"])
    assert list(cover_vectors["id"]) == list(expected["id"])
    assert np.allclose(np.stack(cover_vectors["vector"]), np.stack(expected["vector"]), atol=1e-5)

    # the run's vectors are searchable: a book's own vector finds that book first
    from spindle.vectors.store import MilvusVectorStore, search

    from tests.support.airflow_env import SPINDLE_HOME

    loaded = xcom(run, "load_vectors")
    upserted = {load["alias"]: load["rows_upserted"] for load in loaded["loads"] if "collection" in load}
    assert upserted == {"books_text": len(embeddings), "books_covers": len(cover_vectors)}, loaded
    with MilvusVectorStore(SPINDLE_HOME / "milvus" / "spindle.db") as store:
        assert store.resolve_alias("books_text") == loaded["outputs"]["books_text"]
        assert store.resolve_alias("books_covers") == loaded["outputs"]["books_covers"]
        hits = search(store, "books_text", list(embeddings["vector"][:3]), 1)
        assert [h[0].id for h in hits] == list(embeddings["id"][:3])
        # and the search command's path: a text query embedded with the collection's own model
        info, found = run_search(store, "books_text", "a detective story in foggy London", 5)
        assert info.prop("version") == loaded["version"] and len(found) == min(5, len(embeddings))
        assert {hit.id for hit in found} <= set(embeddings["id"]) and all(hit.title for hit in found)

    # links: Spindle's Spark UI link where the provider has none, else the provider's own
    if backend == "emr_serverless":
        dashboard = xcom(run, f"{backend}.embed_text", key="emr_serverless_dashboard")
        assert dashboard["application_id"] and dashboard["job_run_id"]
    else:
        assert xcom(run, f"{backend}.embed_text", key="spark_ui_url").startswith("http://")
    if backend == "yandex_spark":  # the job's id went to XCom; the cluster's history server is linked
        assert xcom(run, f"{backend}.embed_text", key="job_id") in fakes.yandex.spark.jobs
        assert xcom(run, f"{backend}.embed_text", key="spark_history_url").startswith("http://")

    # the driver's log reached the task log, from where the service puts it (after its late upload)
    out = capfd.readouterr().out
    assert DRIVER_LOG_TITLE[backend] in out
    if backend != "yandex":  # Data Proc's job log API shows the YARN client in cluster mode
        assert "SPINDLE_METRICS " in out  # the job's last stdout line, from the driver's own log
    # the jobs' progress reached the task log from the bucket (the driver UI is out of reach): at
    # least the last document each job wrote, every stage and task done
    ends = re.findall(r"Spark progress \S+, last seen: stages (\d+)/(\d+) done, 0 failed, tasks (\d+)/(\d+) done", out)
    assert len(ends) >= 3 and all(a == b and c == d != "0" for a, b, c, d in ends), ends

    # the LLM DAG: its input table reaches the bucket, its labels equal the local lane's
    before = fakes.snapshot()
    llm, llm_states = run_dag(cloud_dagbag, LLM, backend=backend, model_path=models["t5"], **LLM_CONF)
    assert str(llm.state) == "success", llm_states
    assert llm_states[f"{backend}.llm_transform"] == "success"
    fakes.assert_one_created_and_gone(before)
    assert read_bytes(output_uri(backend, LLM, llm.run_id, "sentences.jsonl")).count(b"\n") == LLM_CONF["limit"]
    labels = read_table(output_uri(backend, LLM, llm.run_id, "transformed.parquet"))
    assert list(labels["id"]) == list(local["labels"]["id"])
    assert list(labels["label"]) == list(local["labels"]["label"])
    assert xcom(llm, f"{backend}.llm_transform")["rows_transformed"] == LLM_CONF["limit"]

    # the environment was packed once and uploaded once, under its content digest
    environments = bucket_keys(fakes.aws, "spindle/artifacts/environments/")
    assert environments == [f"spindle/artifacts/environments/{cluster_environment.name}"]


# --------------------------------------------------------------------------- failures
@pytest.mark.parametrize("backend", CLOUDS)
def test_a_failing_job_still_deletes_the_cluster(
    backend, cloud_dagbag, cluster_environment, clouds, no_new_spark_processes
):
    fakes = clouds(backend)
    set_backend_settings(backend, **BROKEN_SPARK)
    before = fakes.snapshot()
    run, states = run_nightly(cloud_dagbag, backend, embed_covers=False)
    assert str(run.state) == "failed"
    assert states[f"{backend}.create_cluster"] == "success"
    assert states[f"{backend}.prepare_books"] == "failed"
    assert states[f"{backend}.delete_cluster"] == "success"
    fakes.assert_one_created_and_gone(before)


def test_a_lane_without_the_environment_fails_naming_what_is_missing(
    cloud_dagbag, clouds, capfd, no_new_spark_processes
):
    """'provided' promises an image with the model libraries; the fake image has none: the job
    that needs them fails at once, its driver log (copied into the task log) naming them, and
    the application is still deleted. prepare_books needs none and succeeds on the image."""
    fakes = clouds("emr_serverless")
    set_backend_settings("emr_serverless", environment="provided")
    before = fakes.snapshot()
    run, states = run_nightly(cloud_dagbag, "emr_serverless", embed_covers=False)
    assert str(run.state) == "failed"
    assert states["emr_serverless.prepare_books"] == "success"
    assert states["emr_serverless.embed_text"] == "failed"
    assert states["emr_serverless.delete_cluster"] == "success"
    fakes.assert_one_created_and_gone(before)
    out = capfd.readouterr().out
    assert "MissingPackagesError: embed_text: the cluster's Python" in out
    assert "has no torch, transformers, sentence_transformers" in out
