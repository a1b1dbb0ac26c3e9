"""DAG integrity: the DAGs import, every cluster has a teardown, params refuse bad values by name."""

from __future__ import annotations

import pytest
from spindle.operators.local_spark import (
    LocalSparkCreateClusterOperator,
    LocalSparkDeleteClusterOperator,
)
from spindle.operators.spark_app import SparkAppJobOperator

from tests.support.airflow_env import REPO

DAG_IDS = {"spindle_nightly_books", "spindle_llm_transform"}


def test_dags_import_without_errors(dagbag):
    assert dagbag.import_errors == {}
    assert DAG_IDS <= set(dagbag.dag_ids)
    for dag_id in DAG_IDS:
        assert dagbag.dags[dag_id].fileloc.startswith(str(REPO / "dags"))


def test_nightly_schedule_without_catchup(dagbag):
    dag = dagbag.dags["spindle_nightly_books"]
    assert dag.catchup is False
    assert dag.timetable.expression == "0 2 * * *"  # nightly, 02:00 UTC


@pytest.mark.parametrize("dag_id", sorted(DAG_IDS))
def test_every_cluster_has_a_teardown_that_deletes_it(dagbag, dag_id):
    dag = dagbag.dags[dag_id]
    creates = [t for t in dag.tasks if isinstance(t, LocalSparkCreateClusterOperator)]
    assert creates, "each Spindle DAG creates a cluster"
    for create in creates:
        assert create.is_setup
        teardowns = [dag.get_task(t) for t in create.downstream_task_ids if dag.get_task(t).is_teardown]
        deletes = [t for t in teardowns if isinstance(t, LocalSparkDeleteClusterOperator)]
        assert deletes, f"{create.task_id} has no delete-cluster teardown"
        for delete in deletes:
            # cluster_id comes from the create task's XCom, never an implicit xcom_pull
            assert delete.cluster_id.operator is create and delete.cluster_id.key == "return_value"
            assert delete.trigger_rule == "all_done_setup_success"
        # every job runs on the cluster it was given, between create and delete
        jobs = [t for t in dag.tasks if isinstance(t, SparkAppJobOperator)]
        assert jobs
        for job in jobs:
            assert job.cluster_id.operator is create
            assert create.task_id in job.upstream_task_ids
            assert all(job.task_id in d.get_flat_relative_ids(upstream=True) for d in deletes)


def test_every_setup_in_every_dag_has_a_teardown(dagbag):
    """Whatever creates a cluster (local or a cloud lane) is a setup with a teardown after it."""
    for dag in dagbag.dags.values():
        for task in dag.tasks:
            name = type(task).__name__
            if "Create" in name and any(w in name for w in ("Cluster", "JobFlow", "Application")):
                assert task.is_setup, f"{dag.dag_id}.{task.task_id} ({name}) is not a setup"
            if task.is_setup:
                teardowns = [t for t in task.downstream_list if t.is_teardown]
                assert teardowns, f"{dag.dag_id}.{task.task_id} has no teardown"


@pytest.mark.parametrize("dag_id", sorted(DAG_IDS))
def test_default_params_validate(dagbag, dag_id):
    dagbag.dags[dag_id].params.validate()


@pytest.mark.parametrize("dag_id", sorted(DAG_IDS))
def test_params_have_descriptions_and_types(dagbag, dag_id):
    for name, param in dagbag.dags[dag_id].params.items():
        assert param.description, f"{dag_id}: param {name} has no description"
        assert "type" in param.schema, f"{dag_id}: param {name} has no JSON-schema type"


@pytest.mark.parametrize(
    ("dag_id", "conf", "param"),
    [
        ("spindle_nightly_books", {"limit": 0}, "limit"),
        ("spindle_nightly_books", {"limit": "ten"}, "limit"),
        ("spindle_nightly_books", {"languages": []}, "languages"),
        ("spindle_nightly_books", {"languages": ["english"]}, "languages"),
        ("spindle_nightly_books", {"min_pages": -1}, "min_pages"),
        ("spindle_nightly_books", {"max_age_years": 0}, "max_age_years"),
        ("spindle_nightly_books", {"num_workers": 0}, "num_workers"),
        ("spindle_nightly_books", {"worker_memory_mb": 100}, "worker_memory_mb"),
        ("spindle_nightly_books", {"executor_cores": "x"}, "executor_cores"),
        ("spindle_nightly_books", {"batch_size": 0}, "batch_size"),
        ("spindle_nightly_books", {"max_error_rate": 1.5}, "max_error_rate"),
        ("spindle_llm_transform", {"max_error_rate": -0.1}, "max_error_rate"),
        ("spindle_nightly_books", {"input_path": ""}, "input_path"),
        ("spindle_llm_transform", {"prompt_template": "no placeholder"}, "prompt_template"),
        ("spindle_llm_transform", {"max_new_tokens": 100000}, "max_new_tokens"),
        ("spindle_llm_transform", {"output_column": "bad column"}, "output_column"),
        ("spindle_llm_transform", {"executor_memory_mb": 10}, "executor_memory_mb"),
        ("spindle_llm_transform", {"spark_conf": {"executor.memory": "1g"}}, "spark_conf"),
        ("spindle_llm_transform", {"spark_conf": {"spark.x": ["a"]}}, "spark_conf"),
    ],
)
def test_bad_param_values_are_refused_naming_the_param(dagbag, dag_id, conf, param):
    from airflow.sdk.exceptions import ParamValidationError
    from airflow.serialization.serialized_objects import DagSerialization

    # What Airflow does with a trigger's conf (UI form, REST, `airflow dags test -c`): merge it
    # into the serialized DAG's params and validate before the run exists.
    serialized = DagSerialization.deserialize_dag(DagSerialization.serialize_dag(dagbag.dags[dag_id]))
    with pytest.raises(ParamValidationError, match=rf"\bparam {param}\b"):
        serialized.params.deep_merge(conf).validate()


def test_check_task_refuses_what_schemas_cannot_express(airflow_db, dagbag, no_new_clusters, capfd):
    """A missing input and executors bigger than the workers fail the first task, naming the
    params; the cluster is never created, the run fails."""
    from airflow.utils.state import DagRunState, TaskInstanceState
    from spindle.hooks.local_spark import LocalSparkClusterHook

    dag = dagbag.dags["spindle_nightly_books"]
    clusters_before = len(LocalSparkClusterHook().list_clusters())
    run = dag.test(run_conf={"input_path": "data/no/such/dump.txt", "executor_cores": 4, "worker_cores": 2})
    assert run.state == DagRunState.FAILED
    states = {ti.task_id: ti.state for ti in run.get_task_instances()}
    assert states["check_params"] == TaskInstanceState.FAILED
    assert states["create_cluster"] == TaskInstanceState.UPSTREAM_FAILED
    assert len(LocalSparkClusterHook().list_clusters()) == clusters_before
    log = "".join(capfd.readouterr())
    assert "param 'input_path': data/no/such/dump.txt does not exist" in log
    assert "param 'executor_cores': 4 is more than param 'worker_cores' (2)" in log


def test_check_messages_name_the_params():
    from spindle.pipelines import (
        ParamCheckError,
        check_sizing,
        resolve_input,
        resolve_model_dir,
    )

    sizing = {
        "worker_cores": 1,
        "executor_cores": 2,
        "worker_memory_mb": 1024,
        "executor_memory_mb": 2048,
        "task_cpus": 3,
    }
    errors = check_sizing(sizing)
    assert [e.split(":")[0] for e in errors] == [
        "param 'executor_cores'",
        "param 'executor_memory_mb'",
        "param 'task_cpus'",
    ]
    with pytest.raises(ParamCheckError, match="param 'input_path'"):
        resolve_input("data/no/such/file.txt")
    assert resolve_input("data/samples/openlibrary/editions-head-n1000.txt").startswith(str(REPO))
    assert resolve_input("s3a://bucket/dump/*.gz") == "s3a://bucket/dump/*.gz"
    errors = []
    resolve_model_dir(None, errors=errors)
    resolve_model_dir(str(REPO / "data"), errors=errors)
    assert errors[0].startswith("param 'model_path' is required")
    assert errors[1].startswith("param 'model_path'") and "not a saved model" in errors[1]
