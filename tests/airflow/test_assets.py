"""Spindle's outputs as Airflow assets: who produces them, who is scheduled on them.

The events themselves (their ``extra`` with the run's version) and the consumer DAG run the
scheduler makes from them are checked on the real nightly run, in ``tests/airflow/test_e2e.py``
(``test_outputs_are_assets_and_the_consumer_is_scheduled_on_them``)."""

from __future__ import annotations


def test_load_vectors_produces_the_nightly_assets_on_every_lane(dagbag):
    """load_vectors (the one task after whichever lane ran) is the producer of the three nightly
    assets; no other task of the DAG claims them."""
    dag = dagbag.dags["spindle_nightly_books"]
    ours = {"spindle_books", "spindle_book_embeddings", "spindle_book_vectors"}
    producers = {task.task_id: {a.name for a in task.outlets} & ours for task in dag.tasks}
    assert {task_id: names for task_id, names in producers.items() if names} == {"load_vectors": ours}
    load = dag.get_task("load_vectors")
    lanes = {t.task_id for t in dag.tasks if t.task_id.endswith("embed_text") and "." in t.task_id}
    assert lanes and lanes <= load.upstream_task_ids  # it waits for the cloud lanes' embeddings too
    assert load.hold_on_drift == "{{ params.hold_alias_on_drift }}"
    assert dag.params["hold_alias_on_drift"] is False


def test_llm_output_is_published_after_any_lane(dagbag):
    dag = dagbag.dags["spindle_llm_transform"]
    publish = dag.get_task("publish_output")
    assert [a.name for a in publish.outlets] == ["spindle_llm_transformed"]
    jobs = {t.task_id for t in dag.tasks if t.task_id.split(".")[-1] == "llm_transform"}
    assert len(jobs) >= 4 and jobs <= publish.upstream_task_ids
    assert publish.trigger_rule == "none_failed_min_one_success"  # the unchosen lanes are skipped


def test_the_consumer_is_scheduled_on_new_book_vectors(dagbag):
    from spindle.assets import BOOK_VECTORS

    consumer = dagbag.dags["spindle_books_consumer"]
    assert (
        consumer.timetable.asset_condition == BOOK_VECTORS or BOOK_VECTORS in consumer.timetable.asset_condition.objects
    )
    assert consumer.is_paused_upon_creation is False  # it follows the nightly runs once deployed
    (task,) = consumer.tasks
    assert [a.name for a in task.inlets] == [BOOK_VECTORS.name]
