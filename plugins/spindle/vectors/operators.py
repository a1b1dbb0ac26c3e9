"""``LoadVectorsOperator``: a run's embeddings Parquet -> a new Milvus version behind an alias.

It runs on the Airflow worker, not on the Spark cluster: loading needs only the Parquet files
the jobs wrote to the warehouse, so the cluster can be deleted in parallel (no idle cluster
while Milvus indexes). It reads them where the chosen backend's jobs wrote them (a local folder,
or object storage through :mod:`spindle.warehouse`), so every backend's runs become searchable.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from spindle.config import DEFAULT_WAREHOUSE_CONN_ID
from spindle.vectors.hook import DEFAULT_MILVUS_CONN_ID, MilvusHook
from spindle.vectors.loading import NoVectorsError, load_embeddings, open_table
from spindle.vectors.store import VectorStoreError, run_version
from spindle.warehouse import Warehouse, warehouse_for

SOURCE_KEYS = {"alias", "embeddings", "model_dir", "model_kind", "optional", "dataset"}


class LoadVectorsOperator(BaseOperator):
    """Upsert each source's embeddings (joined with the books for title, author, year, cover)
    into the collection of (alias, model, run version) and point the alias at it after a
    successful load. A re-run of the same run upserts into the same collection: no duplicates.

    :param sources: one mapping per vector set: ``alias`` (e.g. ``books_text``),
        ``embeddings`` (warehouse-relative Parquet path or folder; an absolute local path or an
        ``s3://``/``s3a://`` URI also works), ``model_dir`` (local; recorded
        for query embedding), ``model_kind`` (``sentence-transformers`` | ``clip``),
        ``optional`` (True: a missing Parquet is skipped, e.g. covers switched off), ``dataset``
        (templated).
    :param books: the books Parquet (payload), warehouse-relative or absolute (templated). When
        it has no row (no book survived prepare_books' filters) the task is skipped, with the
        reason in its log, and no alias moves: search keeps answering from the last real version.
    :param books_metrics: prepare_books' metrics (its XCom, a mapping or its JSON; templated):
        only to name the figures (read, filtered out, failed filters) in that skip message.
    :param version: version label; default: from the run (:func:`run_version`) (templated).
    :param index_type: ``auto`` (FLAT up to 50k rows, else HNSW), ``FLAT``, ``HNSW``, ``AUTOINDEX``.
    :param switch_alias: False loads the version without making it current.
    :param manifest: the run's ``manifest.json`` (warehouse-relative, templated): when its
        ``drift.drift_detected`` is true (the embeddings drifted from the previous version above
        the threshold), a drift email goes out (:func:`spindle.alerts.notify_drift`) and, with
        ``hold_on_drift``, the version is loaded but no alias moves: search keeps serving the
        previous version until someone approves (``python -m spindle.vectors.versions switch``).
    :param hold_on_drift: hold the alias switch back on drift (templated: a bool or
        ``"True"``/``"False"``, e.g. ``"{{ params.hold_alias_on_drift }}"``).
    :param backend: the run's backend (``check_backend``'s ``backend``, templated): only named
        in messages.
    :param settings: that backend's settings (``check_backend``'s ``settings``, templated; None:
        the local backend): relative paths are read from the warehouse its jobs wrote to
        (setting ``warehouse_conn_id``; for an ``s3://``/``s3a://`` root, credentials from the
        ``s3_conn_id``/``aws_conn_id`` connection). ``model_dir`` stays a local path: search
        embeds queries on this side. Use ``trigger_rule="none_failed"`` to run when optional
        upstreams (cover embedding) or the other backends' lanes were skipped.
    :return: XCom ``rows_upserted`` (all sources), ``outputs`` {alias: collection}, ``loads``
        (per source: counts, collection, previous collection, seconds), ``drift`` (the manifest's
        figures, or None), ``held_back`` {alias: collection not made current}.

    Outlets among :mod:`spindle.assets` (``BOOKS``, ``BOOK_EMBEDDINGS``, ``BOOK_VECTORS``) get
    the version, the locations and the collections in their event's ``extra``. Lineage
    (OpenLineage): the Parquet it read, the collections it wrote (:mod:`spindle.lineage`).
    """

    template_fields: Sequence[str] = (
        "sources",
        "books",
        "books_metrics",
        "version",
        "manifest",
        "hold_on_drift",
        "index_type",
        "backend",
        "settings",
    )
    ui_color = "#d6ecf3"

    def __init__(
        self,
        *,
        sources: Sequence[Mapping[str, Any]],
        books: str | None = None,
        books_metrics: Mapping[str, Any] | str | None = None,
        version: str | None = None,
        manifest: str | None = None,
        hold_on_drift: bool | str = False,
        index_type: str = "auto",
        switch_alias: bool = True,
        backend: str | None = None,
        settings: Mapping[str, Any] | None = None,
        batch_size: int = 1000,
        milvus_conn_id: str = DEFAULT_MILVUS_CONN_ID,
        warehouse_conn_id: str = DEFAULT_WAREHOUSE_CONN_ID,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        for source in sources:
            unknown = set(source) - SOURCE_KEYS if isinstance(source, Mapping) else set()
            if unknown:
                raise ValueError(f"unknown source keys {sorted(unknown)}; allowed: {sorted(SOURCE_KEYS)}")
        self.sources = sources
        self.books = books
        self.books_metrics = books_metrics
        self.version = version
        self.manifest = manifest
        self.hold_on_drift = hold_on_drift
        self.index_type = index_type
        self.switch_alias = switch_alias
        self.backend = backend
        self.settings = settings
        self.batch_size = batch_size
        self.milvus_conn_id = milvus_conn_id
        self.warehouse_conn_id = warehouse_conn_id
        self._lineage: Any = None

    def execute(self, context: Any) -> dict[str, Any]:
        warehouse = warehouse_for(self.backend, self.settings, self.warehouse_conn_id)
        self.log.info("Backend %s: reading the run's Parquet from %s", self.backend or "local", warehouse.root)
        version = self.version or run_version(context["run_id"], _run_time(context))
        drift = self._drift(warehouse)
        hold = bool(drift) and _truthy(self.hold_on_drift)
        loads: list[dict[str, Any]] = []
        hook = MilvusHook(self.milvus_conn_id)
        with hook.get_conn() as store:
            self._skip_if_no_books(store, warehouse)
            for source in self.sources:
                loads.append(self._load(store, warehouse, source, version, switch=self.switch_alias and not hold))
        loaded = [item for item in loads if "collection" in item]
        outputs = {item["alias"]: item["collection"] for item in loaded}
        held = outputs if hold else {}
        self._report_drift(context, drift, held)
        self._emit_assets(context, warehouse, version, outputs)
        endpoint = hook.endpoint()  # where the collections are, without the token
        self._lineage = (warehouse.uri, loads, {"uri": endpoint["uri"], "db_name": endpoint["db_name"]})
        return {
            "version": version,
            "rows_upserted": sum(item["rows_upserted"] for item in loaded),
            "outputs": outputs,
            "loads": loads,
            "drift": drift,
            "held_back": held,
        }

    # ------------------------------------------------------------------ drift, assets, lineage
    def _drift(self, warehouse: Warehouse) -> dict[str, Any] | None:
        """The manifest's drift figures when they flag drift; None otherwise (or no manifest)."""
        if not self.manifest or not warehouse.exists(self.manifest):
            return None
        figures = json.loads(warehouse.read_bytes(self.manifest)).get("drift") or {}
        return dict(figures) if figures.get("drift_detected") else None

    def _report_drift(self, context: Any, drift: Mapping[str, Any] | None, held: Mapping[str, str]) -> None:
        if not drift:
            return
        from spindle.alerts import approve_command, notify_drift

        self.log.warning(
            "Drift above the threshold: classifier AUC %s > %s", drift.get("classifier_auc"), drift.get("auc_threshold")
        )
        for alias, collection in held.items():
            self.log.warning(
                "%s held back on %s (param hold_alias_on_drift): approve with `%s`",
                alias,
                collection,
                approve_command(alias, collection),
            )
        try:
            notify_drift(context, drift, held, log=self.log)
        except Exception as err:  # noqa: BLE001 - the version is loaded; a mail server's failure must not undo that
            self.log.error("Drift email not sent: %s: %s", type(err).__name__, err)

    def _emit_assets(self, context: Any, warehouse: Warehouse, version: str, outputs: Mapping[str, str]) -> None:
        from spindle.assets import BOOK_EMBEDDINGS, BOOK_VECTORS, BOOKS, set_extra

        names = {getattr(outlet, "name", None) for outlet in self.outlets or []}
        common = {"version": version, "backend": self.backend or "local"}
        embeddings = {s["alias"]: warehouse.uri(s["embeddings"]) for s in self.sources if s["alias"] in outputs}
        if BOOKS.name in names and self.books:
            set_extra(context, BOOKS, **common, location=warehouse.uri(self.books))
        if BOOK_EMBEDDINGS.name in names:
            set_extra(context, BOOK_EMBEDDINGS, **common, locations=embeddings)
        if BOOK_VECTORS.name in names:
            set_extra(context, BOOK_VECTORS, **common, collections=dict(outputs))

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> Any:
        """The books and embeddings Parquet read, the Milvus collections written."""
        from spindle.lineage import load_lineage

        if self._lineage is None:
            return None
        uri, loads, endpoint = self._lineage
        return load_lineage(uri, self.books, loads, self.sources, endpoint)

    def _skip_if_no_books(self, store: Any, warehouse: Warehouse) -> None:
        """Skip the task, moving no alias, when the run's books table is there but empty."""
        if not self.books or not warehouse.exists(self.books):
            return
        filesystem, path = warehouse.locate(self.books)
        if open_table(path, filesystem).count_rows():
            return
        figures = _figures(_metrics(self.books_metrics))
        current = []
        for alias in dict.fromkeys(source["alias"] for source in self.sources):
            try:
                current.append(f"{alias} -> {store.resolve_alias(alias)}")
            except VectorStoreError:
                current.append(f"{alias} -> nothing yet")
        raise AirflowSkipException(
            f"0 books survived the filters ({figures or 'books table ' + warehouse.uri(self.books) + ' is empty'}): "
            f"nothing to load, no alias moved ({'; '.join(current)}). Widen the filters (params languages, "
            "min_pages, subject, max_age_years) or raise limit."
        )

    def _load(
        self, store: Any, warehouse: Warehouse, source: Mapping[str, Any], version: str, switch: bool = True
    ) -> dict[str, Any]:
        alias = source["alias"]
        embeddings = source.get("embeddings") or None
        where = warehouse.uri(embeddings) if embeddings else None
        if embeddings is None or not warehouse.exists(embeddings):
            if source.get("optional"):
                self.log.info("%s: no embeddings at %s: skipped", alias, where)
                return {"alias": alias, "skipped": f"no embeddings at {where}"}
            raise AirflowFailException(f"{alias}: no embeddings Parquet at {where}")
        filesystem, path = warehouse.locate(embeddings)
        books_filesystem, books = warehouse.locate(self.books) if self.books else (None, None)
        try:
            result = load_embeddings(
                store,
                path,
                alias=alias,
                version=version,
                books_path=books,
                model_dir=source.get("model_dir") or None,
                model_kind=source.get("model_kind") or "sentence-transformers",
                dataset=source.get("dataset") or "books",
                batch_size=self.batch_size,
                index_type=self.index_type,
                switch_alias=switch,
                filesystem=filesystem,
                books_filesystem=books_filesystem,
                source=where,
            )
        except NoVectorsError as err:
            if source.get("optional"):  # e.g. covers: every image failed, each row says why
                self.log.info("%s: %s: %s: skipped", alias, where, err)
                return {"alias": alias, "skipped": f"no vector in {where}"}
            raise AirflowFailException(f"{alias}: {err}") from err
        except VectorStoreError as err:
            raise AirflowFailException(f"{alias}: {err}") from err
        self.log.info(
            "%s: %d rows upserted into %s (%d in it; %d without a vector, %d without a book); alias %s -> %s (was %s)",
            alias,
            result.rows_upserted,
            result.collection,
            result.rows_in_collection,
            result.rows_skipped_no_vector,
            result.rows_without_book,
            alias,
            result.collection,
            result.previous_collection,
        )
        return result.as_dict()


def _truthy(value: Any) -> bool:
    return value.strip().lower() in ("true", "1", "yes") if isinstance(value, str) else bool(value)


def _metrics(value: Mapping[str, Any] | str | None) -> dict[str, Any]:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return {}
    return dict(value) if isinstance(value, Mapping) else {}


def _figures(metrics: Mapping[str, Any]) -> str:
    """``read 5, filtered out 5, quarantined 0; failed filter: language 3, subject 5``."""
    counts = [
        f"{label} {metrics[key]}"
        for key, label in (
            ("rows_read", "read"),
            ("rows_filtered_out", "filtered out"),
            ("rows_quarantined", "quarantined"),
        )
        if metrics.get(key) is not None
    ]
    failed = ", ".join(f"{name} {n}" for name, n in (metrics.get("failed_filter") or {}).items() if n)
    return ", ".join(counts) + (f"; failed filter: {failed}" if failed else "")


def _run_time(context: Any):
    run = context.get("dag_run")
    return getattr(run, "run_after", None) or getattr(run, "logical_date", None) or context.get("logical_date")
