"""Both DAGs on every cloud lane, against fakes whose clusters share nothing with Airflow.

The fake clusters (tests/fakes) run a managed image of their own: pyspark 3.5, pandas, numpy,
pyarrow, boto3; no torch, no transformers, no Airflow, no access to this machine's files. So a
run succeeds only when Spindle ships what a real account would need: the cluster environment
(packed from requirements-cluster.txt), the models, the code and the inputs, all through the
bucket, and the secrets through the cloud's own secret store. Expected values come from each
model called directly on this machine (``tests.support.references``: sentence-transformers'
``encode``, CLIP's ``get_image_features``, T5's ``generate``, one item at a time).

Each cloud run must: produce those embeddings and LLM labels, write outputs,
manifest and metrics into the bucket, load the run's vectors into Milvus (searchable), create
its cluster / job flow / application exactly once and delete it exactly once. A failing job
must still delete it; a lane whose cluster has no model libraries fails naming them.

The test command runs a slice of the lanes x jobs matrix (see ``EXTRAS``); the whole of it:
``SPINDLE_CLOUD_FULL=1 scripts/test.sh tests/cloud/test_backends.py``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
from spindle.pipelines import default_embedding_model, run_key
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
from tests.support.references import bare_text_vectors, clip_reference, cosines, direct_generate, direct_image_vectors

pytestmark = pytest.mark.timeout(1800)

CLOUDS = ("yandex", "yandex_spark", "emr", "emr_serverless")
#: What each lane runs besides the nightly's text path (prepare_books, embed_text, vectors): the
#: covers job (embed_images) and the LLM DAG each run on one lane of each cloud (EMR Serverless
#: also runs the LLM DAG in test_deferrable.py). What differs per lane (create, submit, driver
#: logs, progress, delete) is in every lane's nightly; the jobs reach every lane through the same
#: staging and the same environment. SPINDLE_CLOUD_FULL=1: both on every lane (the matrix, about
#: 4 minutes more; docs/CLOUD_BACKENDS.md records it).
EXTRAS = {"yandex": {"covers"}, "yandex_spark": {"llm"}, "emr": {"llm"}, "emr_serverless": {"covers"}}
if os.environ.get("SPINDLE_CLOUD_FULL") == "1":
    EXTRAS = {cloud: {"covers", "llm"} for cloud in CLOUDS}
# A driver that dies at once (a real spark-submit failure): the cheapest failing job.
BROKEN_SPARK = {"spark_properties": {"spark.executor.memory": "not-a-size"}}
NIGHTLY_TASKS = ("stage", "create_cluster", "prepare_books", "embed_text", "embed_images", "delete_cluster")
NIGHTLY = "spindle_nightly_books"
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
def clip(models):
    """transformers' own CLIP objects for the tiny model (the covers' reference)."""
    return clip_reference(models["clip"])


def weights_fingerprint(model_dir) -> str:
    """What a job must record as the model's fingerprint: the sha256 of its weights file."""
    return "sha256:" + hashlib.sha256((Path(model_dir) / "model.safetensors").read_bytes()).hexdigest()


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


# --------------------------------------------------------------------------- the DAGs, every lane
@pytest.mark.parametrize("backend", CLOUDS)
def test_dags_run_on_a_cluster_that_shares_nothing(
    backend,
    cloud_dagbag,
    cluster_environment,
    models,
    covers,
    clip,
    clouds,
    capfd,
    no_new_spark_processes,
    monkeypatch,
):
    fakes = clouds(backend)
    set_backend_settings(backend)
    monkeypatch.setenv("SPINDLE_PROGRESS_INTERVAL", "2")  # short test jobs: progress every 2 s
    with_covers = "covers" in EXTRAS[backend]
    jobs = ("prepare_books", "embed_text", "embed_images") if with_covers else ("prepare_books", "embed_text")
    before = fakes.snapshot()
    # every cover param given: dag.test() leaves a run's params in the shared DAG object
    covers_conf = {"clip_model_path": models["clip"], "covers_source": covers} if with_covers else {}
    run, states = run_nightly(cloud_dagbag, backend, embed_covers=with_covers, **covers_conf)
    assert str(run.state) == "success", states
    assert set(lane_states(states, backend, ("stage", "create_cluster", *jobs, "delete_cluster")).values()) == {
        "success"
    }, lane_states(states, backend)
    assert states[f"{backend}.embed_images"] == ("success" if with_covers else "skipped")
    assert states["load_vectors"] == "success" and states["create_cluster"] == "skipped"
    fakes.assert_one_created_and_gone(before)

    # outputs, manifest and metrics are in the bucket; every kept book embedded as the bare model does
    books = read_table(output_uri(backend, NIGHTLY, run.run_id, "books.parquet")).set_index("id")
    embeddings = read_embeddings(run.run_id, backend)
    assert len(embeddings) > 0 and sorted(embeddings["id"]) == sorted(books.index[books["text"].notna()])
    expected = bare_text_vectors(default_embedding_model(), list(books.loc[embeddings["id"], "text"]))
    assert cosines(np.stack(embeddings["vector"]), expected).min() >= 0.9999
    assert set(embeddings["model_fingerprint"]) == {weights_fingerprint(default_embedding_model())}
    manifest = json.loads(read_bytes(output_uri(backend, NIGHTLY, run.run_id, "manifest.json")))
    assert manifest["rows"]["written"] == len(embeddings)
    for job in jobs:
        metrics = xcom(run, f"{backend}.{job}")
        assert metrics["job"] == job
        # one object per try, written by the job (EMR: under its submit task's id)
        [key] = bucket_keys(fakes.aws, f"spindle/metrics/spindle_nightly_books/{run_key(run.run_id)}/{backend}.{job}")
        assert json.loads(read_bytes(f"s3://{BUCKET}/{key}")) == metrics  # the XCom is the bucket's object
    if with_covers:  # every kept book with a cover id: its image as CLIP itself embeds it
        cover_vectors = read_table(output_uri(backend, NIGHTLY, run.run_id, "cover_embeddings.parquet"))
        cover_vectors = cover_vectors.dropna(subset=["vector"])
        with_cover_id = books.index[books["cover_ids"].map(len) > 0]
        assert xcom(run, f"{backend}.embed_images")["images_embedded"] == len(cover_vectors) > 0
        assert sorted(cover_vectors["id"]) == sorted(with_cover_id)
        images = [Path(covers) / f"{cover_id}.jpg" for cover_id in cover_vectors["cover_id"]]
        assert cosines(np.stack(cover_vectors["vector"]), direct_image_vectors(clip, images)).min() >= 0.9999

    # the run's vectors are searchable: a book's own vector finds that book first
    from spindle.vectors.store import MilvusVectorStore, search

    from tests.support.airflow_env import SPINDLE_HOME

    loaded = xcom(run, "load_vectors")
    upserted = {load["alias"]: load["rows_upserted"] for load in loaded["loads"] if "collection" in load}
    assert upserted == {"books_text": len(embeddings), **({"books_covers": len(cover_vectors)} if with_covers else {})}
    with MilvusVectorStore(SPINDLE_HOME / "milvus" / "spindle.db") as store:
        assert store.resolve_alias("books_text") == loaded["outputs"]["books_text"]
        if with_covers:
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
    assert len(ends) >= len(jobs) and all(a == b and c == d != "0" for a, b, c, d in ends), ends

    if "llm" in EXTRAS[backend]:
        assert_llm_dag_runs(backend, cloud_dagbag, models, fakes)

    # the environment was packed once and uploaded once, under its content digest
    environments = bucket_keys(fakes.aws, "spindle/artifacts/environments/")
    assert environments == [f"spindle/artifacts/environments/{cluster_environment.name}"]


def assert_llm_dag_runs(backend, cloud_dagbag, models, fakes):
    """The LLM DAG: its input table reaches the bucket; each label is T5's own ``generate`` of
    the prompt (the DAG's default template) for that sentence."""
    before = fakes.snapshot()
    llm, llm_states = run_dag(cloud_dagbag, LLM, backend=backend, model_path=models["t5"], **LLM_CONF)
    assert str(llm.state) == "success", llm_states
    assert llm_states[f"{backend}.llm_transform"] == "success"
    fakes.assert_one_created_and_gone(before)
    sentences = [
        json.loads(line) for line in read_bytes(output_uri(backend, LLM, llm.run_id, "sentences.jsonl")).splitlines()
    ]
    assert len(sentences) == LLM_CONF["limit"]
    labels = read_table(output_uri(backend, LLM, llm.run_id, "transformed.parquet"))
    text_of = {str(s["id"]): s["text"] for s in sentences}
    assert sorted(map(str, labels["id"])) == sorted(text_of)
    template = cloud_dagbag.dags[LLM].params["prompt_template"]
    prompts = [template.replace("{text}", text_of[str(i)]) for i in labels["id"]]
    assert list(labels["label"]) == direct_generate(models["t5"], prompts, LLM_CONF["max_new_tokens"])
    assert xcom(llm, f"{backend}.llm_transform")["rows_transformed"] == LLM_CONF["limit"]


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
