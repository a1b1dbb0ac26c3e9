"""Cover embedding in the nightly DAG: the embed_images task on every lane, the check that plans
it from the params, and the skip when covers are off."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from tests.support.airflow_env import REPO

DAG_ID = "spindle_nightly_books"


@pytest.fixture
def dag(dagbag):
    return dagbag.dags[DAG_ID]


def test_embed_images_runs_beside_embed_text_locally_and_after_it_on_the_cloud_lanes(dag):
    from spindle.covers import embed_covers_beside_text, share_cores_with_covers

    images, text = dag.get_task("embed_images"), dag.get_task("embed_text")
    assert images.job == "embed_images"
    assert "prepare_books" in images.upstream_task_ids and "delete_cluster" in images.downstream_task_ids
    assert "embed_images" not in text.get_flat_relative_ids(upstream=True)  # side by side, both ways
    assert "embed_text" not in images.get_flat_relative_ids(upstream=True)
    assert images._pre_execute_hook.then is embed_covers_beside_text  # after setting the job's time limit
    assert text._pre_execute_hook.then is share_cores_with_covers
    assert "yandex.embed_text" in dag.get_task("yandex.embed_images").upstream_task_ids  # a lane runs in turn
    assert {"check_backend"} <= dag.get_task("check_covers").upstream_task_ids
    assert "check_covers" in dag.get_task("create_cluster").upstream_task_ids  # checked before any cluster
    args = images.job_args
    assert (args["model"].operator.task_id, args["model"].key) == ("check_covers", "model_path")
    assert args["output"].key == "cover_embeddings"
    for task_id in ("yandex.embed_images", "emr.embed_images_submit", "emr_serverless.embed_images"):
        copy = dag.get_task(task_id)
        assert copy.job == "embed_images" and copy._pre_execute_hook.then is embed_covers_beside_text, task_id
    for lane in ("yandex", "emr", "emr_serverless"):
        stage = dag.get_task(f"{lane}.stage")
        assert "embed_images" in stage.jobs
        assert [m.key for m in stage.model_path] == ["model_path", "model_path"]
        assert [m.operator.task_id for m in stage.model_path] == ["check_params", "check_covers"]
        assert "check_covers" in stage.upstream_task_ids
    emr = dag.get_task("emr.embed_images")  # the step sensor: skipped with its submit task
    assert "emr.embed_images_submit" in emr.upstream_task_ids and emr.trigger_rule == "all_success"


@pytest.mark.parametrize(
    ("covers_on", "total", "executor_cores", "expected"),
    [(True, 2, 1, 1), (True, 5, 1, 2), (False, 2, 1, 2), (True, 2, 2, 2), (True, 1, 1, 1), (True, None, 1, None)],
)
def test_the_embedding_jobs_split_the_cores_only_when_covers_run_beside(covers_on, total, executor_cores, expected):
    """Half the cluster's cores each (``spark.cores.max``) when covers are on and half still holds
    an executor; otherwise left as rendered (None: a cloud lane's task, whose jobs run in turn)."""
    from types import SimpleNamespace

    from spindle.covers import share_cores_with_covers

    task = SimpleNamespace(task_id="embed_text", total_executor_cores=total, executor_cores=executor_cores)
    ti = SimpleNamespace(xcom_pull=lambda task_ids, key: covers_on if key == "enabled" else None)
    share_cores_with_covers({"task": task, "ti": ti})
    assert task.total_executor_cores == expected


def test_default_params_embed_covers_from_the_sample_folder(dag):
    params = dag.params
    assert params["embed_covers"] is True
    assert params["covers_source"] == "data/samples/covers"
    assert params["clip_model_path"] is None


@pytest.fixture
def clip_dir(tmp_path):
    folder = tmp_path / "clip"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "preprocessor_config.json").write_text("{}")
    return folder


def test_plan_covers(clip_dir):
    from spindle.covers import OPEN_LIBRARY_COVERS, plan_covers

    base = {"embed_covers": True, "covers_source": "data/samples/covers", "clip_model_path": str(clip_dir)}
    plan = plan_covers(base, environ={})
    assert plan == {
        "enabled": True,
        "reason": None,
        "model_path": str(clip_dir),
        "images_dir": str(REPO / "data" / "samples" / "covers"),
        "url_template": None,
    }

    off = plan_covers({**base, "embed_covers": False}, environ={})
    assert off["enabled"] is False and off["reason"] == "param 'embed_covers' is false"
    none = plan_covers({**base, "clip_model_path": None}, environ={})
    assert none["enabled"] is False and "param 'clip_model_path'" in none["reason"]
    from_env = plan_covers({**base, "clip_model_path": None}, environ={"SPINDLE_CLIP_MODEL": str(clip_dir)})
    assert from_env["enabled"] and from_env["model_path"] == str(clip_dir)

    web = plan_covers({**base, "covers_source": OPEN_LIBRARY_COVERS}, environ={})
    assert web["url_template"] == OPEN_LIBRARY_COVERS and web["images_dir"] is None
    remote = plan_covers({**base, "covers_source": "s3a://bucket/covers"}, environ={})
    assert remote["images_dir"] == "s3a://bucket/covers" and remote["url_template"] is None


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"covers_source": "data/no/such/folder"}, "param 'covers_source': data/no/such/folder is neither a folder"),
        ({"covers_source": "https://example.org/cover.jpg"}, "param 'covers_source': the URL template"),
        ({"clip_model_path": "data/samples"}, "param 'clip_model_path'"),
    ],
)
def test_plan_covers_refuses_bad_params_by_name(clip_dir, change, message):
    from spindle.covers import plan_covers
    from spindle.pipelines import ParamCheckError

    params = {"embed_covers": True, "covers_source": "data/samples/covers", "clip_model_path": str(clip_dir)}
    with pytest.raises(ParamCheckError, match=message.replace("(", r"\(")):
        plan_covers({**params, **change}, environ={})


def test_covers_enabled_skips_with_the_reason():
    from airflow.sdk.exceptions import AirflowSkipException
    from spindle.covers import covers_enabled

    def context(xcom):
        ti = SimpleNamespace(xcom_pull=lambda task_ids, key: xcom.get(key))
        return {"ti": ti}

    covers_enabled(context({"enabled": True}))  # runs: no exception
    with pytest.raises(AirflowSkipException, match="param 'embed_covers' is false"):
        covers_enabled(context({"enabled": False, "reason": "param 'embed_covers' is false"}))
