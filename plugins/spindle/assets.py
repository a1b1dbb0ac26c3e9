"""Spindle's outputs as Airflow assets, so other DAGs can be scheduled on them.

- :data:`BOOKS`, :data:`BOOK_EMBEDDINGS`, :data:`BOOK_VECTORS`: the nightly DAG's books table,
  its embeddings (with the manifest) and the Milvus collections ``load_vectors`` made from
  them. ``load_vectors`` is their producer on every backend (it runs after whichever lane ran,
  and reads what the lane wrote), so an event means the whole version is there and loaded.
- :data:`LLM_OUTPUT`: the LLM DAG's transformed table, emitted by its ``publish_output`` task.

Each event's ``extra`` says which version it is: ``version`` (the run's version label, the
suffix of its Milvus collections), ``dag_id``, ``run_id``, ``backend``, and the locations
(warehouse URIs; ``collections`` {alias: collection} for the vectors). A DAG scheduled on
``BOOK_VECTORS`` (example: ``dags/spindle_books_consumer.py``) reads them from its inlet events.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from airflow.sdk import Asset, get_current_context, task

GROUP = "spindle"
BOOKS = Asset(name="spindle_books", uri="spindle://spindle_nightly_books/books", group=GROUP)
BOOK_EMBEDDINGS = Asset(name="spindle_book_embeddings", uri="spindle://spindle_nightly_books/embeddings", group=GROUP)
#: "New book vectors": a new version of the books' vectors is loaded into Milvus.
BOOK_VECTORS = Asset(name="spindle_book_vectors", uri="spindle://spindle_nightly_books/vectors", group=GROUP)
LLM_OUTPUT = Asset(name="spindle_llm_transformed", uri="spindle://spindle_llm_transform/transformed", group=GROUP)


def set_extra(context: Mapping[str, Any], asset: Asset, **extra: Any) -> dict[str, Any]:
    """Put ``extra`` (the run's ids plus the given keys, None values left out) on the event the
    running task emits for ``asset``."""
    ti = context["ti"]
    values = {"dag_id": ti.dag_id, "run_id": ti.run_id, **extra}
    values = {key: value for key, value in values.items() if value is not None}
    context["outlet_events"][asset].extra = values
    return values


def latest_event(context: Mapping[str, Any], asset: Asset) -> Any:
    """The newest event of an inlet ``asset`` (None when it never had one)."""
    events = context["inlet_events"][asset]
    return events[-1] if len(events) else None


@task(task_id="publish_output", outlets=[LLM_OUTPUT], trigger_rule="none_failed_min_one_success")
def publish_llm_output(output: str, backend: str | None = None, settings: Mapping[str, Any] | None = None) -> dict:
    """Emit :data:`LLM_OUTPUT` for the run's transformed table, after checking it is in the
    warehouse the chosen lane wrote to (a run whose job wrote nothing emits nothing)."""
    from airflow.sdk.exceptions import AirflowFailException

    from spindle.vectors.store import run_version
    from spindle.warehouse import warehouse_for

    context = get_current_context()
    warehouse = warehouse_for(backend, settings)
    if not warehouse.exists(output):
        raise AirflowFailException(f"no output at {warehouse.uri(output)}: no asset event")
    run = context["dag_run"]
    version = run_version(run.run_id, getattr(run, "run_after", None))
    extra = set_extra(context, LLM_OUTPUT, version=version, backend=backend or "local", output=warehouse.uri(output))
    print(f"Asset {LLM_OUTPUT.name}: {extra}")
    return extra
