"""
### Example consumer of Spindle's "new book vectors" asset

Scheduled on the asset `spindle_book_vectors` (`spindle.assets.BOOK_VECTORS`): the scheduler
starts a run each time `spindle_nightly_books`' `load_vectors` loads a new version. Its one task
reads the newest event (the version, run and collections in its `extra`), opens Milvus and
reports how many vectors each new collection holds and whether search already serves it (the
alias points at it) or it is held back on drift, waiting for approval. Copy it as the start of
your own downstream DAG (re-index, notify, evaluate, ...).

Active at creation (not paused), so that it follows the nightly runs as soon as it is deployed.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import DAG, get_current_context, task
from spindle.assets import BOOK_VECTORS, latest_event
from spindle.pipelines import task_defaults

with DAG(
    dag_id="spindle_books_consumer",
    description="Reports each new version of the book vectors (an asset-scheduled example)",
    schedule=[BOOK_VECTORS],
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    is_paused_upon_creation=False,
    tags=["spindle", "example", "assets"],
    doc_md=__doc__,
    default_args=task_defaults(),
) as dag:

    @task(task_id="report_new_version", inlets=[BOOK_VECTORS])
    def report_new_version() -> dict:
        """The newest version's collections: rows in each, and whether its alias serves it."""
        from spindle.vectors.hook import MilvusHook

        event = latest_event(get_current_context(), BOOK_VECTORS)
        if event is None:
            raise ValueError(f"asset {BOOK_VECTORS.name} has no event yet: run spindle_nightly_books first")
        extra = dict(event.extra or {})
        report = {"version": extra.get("version"), "run_id": extra.get("run_id"), "collections": {}}
        with MilvusHook().get_conn() as store:
            for alias, collection in (extra.get("collections") or {}).items():
                serving = store.resolve_alias(alias) == collection
                report["collections"][alias] = {
                    "collection": collection,
                    "rows": store.count(collection),
                    "serving": serving,
                }
                print(
                    f"{alias}: {collection} ({store.count(collection)} vectors), {'serving' if serving else 'held back'}"
                )
        return report

    report_new_version()
