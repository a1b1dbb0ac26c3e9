"""Versioned vector collections in Milvus (embedded milvus-lite or a server) and their search.

One collection per (alias, model, version), named deterministically by
:func:`collection_name`; an alias per (dataset, kind), e.g. ``books_text``, points search at the
current version. Loading a new version never touches the old one, so rolling back is pointing
the alias at the previous collection (:meth:`MilvusVectorStore.switch_alias`).

What a collection was built from (model name, fingerprint and directory, dataset, version,
source Parquet, creation time) is stored in its collection properties (``spindle.*``), so a
search can embed its query with the same model and ``versions`` can list the history without
any side file.

No Airflow import here: the search and evaluation commands use this module directly.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse, urlunparse

import numpy as np

log = logging.getLogger(__name__)

#: Scalar payload stored next to each vector: (name, max UTF-8 bytes).
TEXT_FIELDS = (("title", 1024), ("author", 1024), ("cover_url", 512), ("text_sha256", 64))
ID_MAX_BYTES = 512
#: Returned with every hit.
OUTPUT_FIELDS = ["title", "author", "year", "cover_url"]
#: Up to this many rows an exact (FLAT) index: recall 1.0 and still milliseconds per query.
EXACT_INDEX_MAX_ROWS = 50_000
HNSW_BUILD = {"M": 16, "efConstruction": 200}
PROP = "spindle."  # prefix of our collection properties
# ``spindle.state`` of a collection: "loading" from its creation until every row is in, then
# "complete". A load killed half way leaves "loading": such a version is never a rollback target
# and is dropped by :meth:`MilvusVectorStore.drop_partial` (the reaper DAG) once old enough.
# Collections from before this property existed have none and count as complete.
STATE_LOADING, STATE_COMPLETE = "loading", "complete"
_NAME_RE = re.compile(r"[^a-z0-9]+")


class VectorStoreError(RuntimeError):
    """A vector-store operation cannot go on (unknown alias, dimension mismatch, ...)."""


# --------------------------------------------------------------------------- naming
def slug(text: str, max_len: int = 40) -> str:
    """``all-MiniLM-L6-v2`` -> ``all_minilm_l6_v2``: a piece of a valid Milvus name."""
    value = _NAME_RE.sub("_", text.lower()).strip("_")[:max_len].strip("_")
    return value or "x"


def collection_name(alias: str, model: str, fingerprint: str | None, version: str) -> str:
    """``<alias>__<model>__<fingerprint prefix>__<version>``: the same inputs always give the
    same collection (a re-run of a run upserts into it), a new model or version a new one."""
    digest = (fingerprint or "").split(":")[-1][:8] or "nofp"
    name = f"{slug(alias)}__{slug(model)}__{slug(digest)}__{slug(version, 60)}"
    return name if name[0].isalpha() else "c" + name


def run_version(run_id: str, run_after: dt.datetime | None = None) -> str:
    """A sortable, stable version label for a DAG run: ``v<UTC yyyymmddHHMMSS>_<hash>``; the
    hash of the run id keeps two runs in the same second apart."""
    stamp = (run_after or dt.datetime.now(dt.timezone.utc)).astimezone(dt.timezone.utc)
    return f"v{stamp:%Y%m%d%H%M%S}_{hashlib.sha1(run_id.encode()).hexdigest()[:6]}"


def index_params_for(rows: int, index_type: str = "auto") -> dict[str, Any]:
    """FLAT (exact) for small collections, HNSW above :data:`EXACT_INDEX_MAX_ROWS`; both are
    supported by milvus-lite and a Milvus server. ``index_type`` forces one (also AUTOINDEX)."""
    kind = index_type.upper()
    if kind == "AUTO":
        kind = "FLAT" if rows <= EXACT_INDEX_MAX_ROWS else "HNSW"
    params = HNSW_BUILD if kind == "HNSW" else {}
    return {"index_type": kind, "metric_type": "COSINE", "params": dict(params)}


def clip_utf8(value: Any, max_bytes: int) -> str:
    """A string that fits a VARCHAR of ``max_bytes`` (Milvus counts bytes), cut on a character."""
    text = "" if value is None else str(value)
    raw = text.encode("utf-8")
    return text if len(raw) <= max_bytes else raw[:max_bytes].decode("utf-8", errors="ignore")


def redact_uri(uri: str) -> str:
    """The URI without user:password, for log lines."""
    parsed = urlparse(uri)
    if parsed.password or parsed.username:
        host = parsed.hostname or ""
        netloc = f"***@{host}" + (f":{parsed.port}" if parsed.port else "")
        return urlunparse(parsed._replace(netloc=netloc))
    return uri


def default_lite_path() -> Path:
    """``$SPINDLE_HOME/milvus/spindle.db`` (``.spindle/milvus/spindle.db`` in a checkout)."""
    home = os.environ.get("SPINDLE_HOME")
    root = Path(home) if home else Path(__file__).resolve().parents[3] / ".spindle"
    return root / "milvus" / "spindle.db"


# --------------------------------------------------------------------------- results
@dataclass(frozen=True)
class Hit:
    """One search result: ``score`` is the cosine similarity (higher is nearer)."""

    rank: int
    id: str
    score: float
    title: str | None = None
    author: str | None = None
    year: int | None = None
    cover_url: str | None = None


@dataclass
class CollectionInfo:
    name: str
    properties: dict[str, str] = field(default_factory=dict)
    aliases: list[str] = field(default_factory=list)

    def prop(self, key: str, default: str | None = None) -> str | None:
        return self.properties.get(PROP + key, default)

    @property
    def complete(self) -> bool:
        """Whether every row of its load went in (see ``STATE_LOADING``)."""
        return self.prop("state") != STATE_LOADING

    def created(self) -> dt.datetime | None:
        try:
            return dt.datetime.fromisoformat(self.prop("created_at") or "")
        except ValueError:
            return None


# --------------------------------------------------------------------------- the store
class MilvusVectorStore:
    """A Milvus endpoint: a ``.db`` path (embedded milvus-lite, in this process) or a server URI.

    Use it as a context manager, or call :meth:`close`: milvus-lite holds a lock on its folder
    until then, and another process (the search command, the next task) waits for it.
    """

    def __init__(self, uri: str | os.PathLike | None = None, token: str = "", db_name: str = ""):
        from pymilvus import MilvusClient

        self.uri = str(uri or default_lite_path())
        self.is_lite = self.uri.endswith(".db")
        if self.is_lite:
            Path(self.uri).parent.mkdir(parents=True, exist_ok=True)
        log.info("Milvus: %s", self.describe_endpoint())
        self.client = MilvusClient(uri=self.uri, token=token, db_name=db_name)
        self._loaded: set[str] = set()

    def describe_endpoint(self) -> str:
        return f"milvus-lite {self.uri}" if self.is_lite else f"Milvus server {redact_uri(self.uri)}"

    def close(self) -> None:
        self.client.close()
        if self.is_lite:  # MilvusClient.close() keeps milvus-lite's in-process server and lock
            from milvus_lite.server_manager import server_manager_instance

            server_manager_instance.release_server(self.uri)

    def __enter__(self) -> MilvusVectorStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----------------------------------------------------------------- collections
    def ensure_collection(
        self,
        name: str,
        dim: int,
        rows_hint: int = 0,
        index_type: str = "auto",
        properties: Mapping[str, Any] | None = None,
    ) -> bool:
        """Create ``name`` (schema, index, properties) unless it exists; load it. Returns True
        when it was created. An existing collection must have the same dimension."""
        if self.client.has_collection(name):
            existing = self._dim(name)
            if existing != dim:
                raise VectorStoreError(f"collection {name!r} holds {existing}-d vectors, not {dim}-d")
            self.ensure_loaded(name)
            return False
        index = self.client.prepare_index_params()
        index.add_index(field_name="vector", **index_params_for(rows_hint, index_type))
        self.client.create_collection(
            name,
            schema=self._schema(dim),
            index_params=index,
            properties={
                PROP + k: str(v) for k, v in {**(properties or {}), "state": STATE_LOADING}.items() if v is not None
            },
        )
        self._loaded.add(name)  # create_collection with index params loads it
        return True

    @staticmethod
    def _schema(dim: int):
        from pymilvus import DataType, MilvusClient

        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("id", DataType.VARCHAR, is_primary=True, max_length=ID_MAX_BYTES)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=dim)
        for name, max_bytes in TEXT_FIELDS:
            schema.add_field(name, DataType.VARCHAR, max_length=max_bytes)
        schema.add_field("year", DataType.INT64, nullable=True)
        return schema

    def _dim(self, name: str) -> int:
        for item in self.client.describe_collection(name)["fields"]:
            if item["name"] == "vector":
                return int(item["params"]["dim"])
        raise VectorStoreError(f"collection {name!r} has no 'vector' field: not a Spindle collection")

    def ensure_loaded(self, name: str) -> None:
        """Load ``name`` for search once per store (a reopened milvus-lite file starts released)."""
        if name not in self._loaded:
            self.client.load_collection(name)
            self._loaded.add(name)

    def upsert(self, name: str, rows: Sequence[Mapping[str, Any]]) -> int:
        """Insert or replace rows by ``id``: loading the same rows twice leaves one copy."""
        if not rows:
            return 0
        clean = [
            {
                "id": clip_utf8(row["id"], ID_MAX_BYTES),
                "vector": [float(x) for x in row["vector"]],
                "year": None if row.get("year") is None else int(row["year"]),
                **{f: clip_utf8(row.get(f), n) for f, n in TEXT_FIELDS},
            }
            for row in rows
        ]
        return int(self.client.upsert(name, clean).get("upsert_count", len(clean)))

    def flush(self, name: str) -> None:
        self.client.flush(name)

    def count(self, name: str) -> int:
        """Rows really in the collection (a query, not the segment statistics, which count
        replaced rows until compaction on a server)."""
        self.ensure_loaded(name)
        result = self.client.query(name, filter="", output_fields=["count(*)"])
        return int(result[0]["count(*)"])

    def mark_complete(self, name: str) -> None:
        """Record that every row of the load is in ``name`` (before any alias may point at it)."""
        completed = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        self.client.alter_collection_properties(
            name, properties={PROP + "state": STATE_COMPLETE, PROP + "completed_at": completed}
        )

    def drop_collection(self, name: str) -> None:
        self.client.drop_collection(name)

    def drop_partial(self, older_than: dt.timedelta, dry_run: bool = False) -> list[CollectionInfo]:
        """Drop Spindle's collections whose load never completed (killed and never re-run),
        created more than ``older_than`` ago and not behind any alias; returns them. Younger
        ones are left alone: their load may still be running, or be retried."""
        cutoff = dt.datetime.now(dt.timezone.utc) - older_than
        dropped = []
        for name in self.client.list_collections():
            info = self.collection_info(name)
            created = info.created()
            if info.prop("alias") is None or info.complete or info.aliases or created is None or created > cutoff:
                continue
            if not dry_run:
                self.drop_collection(name)
            dropped.append(info)
        return dropped

    def collection_info(self, name: str) -> CollectionInfo:
        described = self.client.describe_collection(name)
        props = {str(k): str(v) for k, v in (described.get("properties") or {}).items()}
        aliases = list(self.client.list_aliases(name).get("aliases", []))
        return CollectionInfo(name=name, properties=props, aliases=aliases)

    # ----------------------------------------------------------------- aliases and versions
    def resolve_alias(self, alias: str) -> str:
        """The collection ``alias`` points at."""
        # Listed first: pymilvus logs a traceback for every failed describe_alias call.
        if alias not in self.client.list_aliases().get("aliases", []):
            raise VectorStoreError(
                f"alias {alias!r} does not exist in {self.describe_endpoint()}: load vectors first "
                "(the nightly DAG's load_vectors task)"
            )
        return str(self.client.describe_alias(alias)["collection_name"])

    def switch_alias(self, alias: str, collection: str) -> str | None:
        """Point ``alias`` at ``collection`` (create the alias the first time); returns the
        collection it pointed at before, or None."""
        if not self.client.has_collection(collection):
            raise VectorStoreError(f"collection {collection!r} does not exist")
        if not self.collection_info(collection).complete:
            raise VectorStoreError(
                f"collection {collection!r} is partial (its load never completed): re-run that load first"
            )
        try:
            previous = self.resolve_alias(alias)
        except VectorStoreError:
            previous = None
        if previous is None:
            self.client.create_alias(collection, alias)
        elif previous != collection:
            self.client.alter_alias(collection, alias)
        log.info("alias %s -> %s (was %s)", alias, collection, previous)
        return previous

    def versions(self, alias: str) -> list[CollectionInfo]:
        """Every collection loaded for ``alias``, oldest first (by ``spindle.created_at``)."""
        infos = []
        for name in self.client.list_collections():
            info = self.collection_info(name)
            if info.prop("alias") == alias:
                infos.append(info)
        return sorted(infos, key=lambda i: (i.prop("created_at") or "", i.name))

    def previous_version(self, alias: str) -> str:
        """The version loaded right before the one ``alias`` points at (the rollback target)."""
        current = self.resolve_alias(alias)
        names = [info.name for info in self.versions(alias) if info.complete or info.name == current]
        position = names.index(current) if current in names else len(names)
        if position == 0:
            raise VectorStoreError(
                f"alias {alias!r} points at its oldest complete version {current!r}: nothing to roll back to"
            )
        return names[position - 1]

    def rollback(self, alias: str) -> str:
        """Point ``alias`` at the previous version; returns that collection."""
        target = self.previous_version(alias)
        self.switch_alias(alias, target)
        return target


# --------------------------------------------------------------------------- search
def normalize(vectors: Any) -> np.ndarray:
    """Rows scaled to unit length (2-D float32); a 1-D vector becomes one row."""
    matrix = np.atleast_2d(np.asarray(vectors, dtype=np.float32))
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    if np.any(norms == 0):
        raise VectorStoreError("a query vector is all zeros: it has no direction to search")
    return matrix / norms


def search_params_for(index: Mapping[str, Any], k: int) -> dict[str, Any]:
    if str(index.get("index_type", "")).upper().startswith("HNSW"):
        return {"metric_type": "COSINE", "params": {"ef": max(64, 2 * k)}}
    return {"metric_type": "COSINE"}


def search(store: MilvusVectorStore, alias: str, query_vectors: Any, k: int = 10) -> list[list[Hit]]:
    """The ``k`` nearest items of the collection ``alias`` points at, by cosine similarity.

    :param query_vectors: one vector or a 2-D array of them (normalized here).
    :return: one list of :class:`Hit` per query vector, best first.
    """
    if k < 1:
        raise ValueError("k must be at least 1")
    collection = store.resolve_alias(alias)
    queries = normalize(query_vectors)
    store.ensure_loaded(collection)
    dim = store._dim(collection)
    if queries.shape[1] != dim:
        raise VectorStoreError(f"query vectors are {queries.shape[1]}-d, collection {collection!r} holds {dim}-d")
    names = store.client.list_indexes(collection, field_name="vector")
    index = store.client.describe_index(collection, names[0]) if names else {}
    results = store.client.search(
        collection,
        data=queries.tolist(),
        limit=k,
        output_fields=OUTPUT_FIELDS,
        search_params=search_params_for(index, k),
        anns_field="vector",
    )
    return [[_hit(rank, raw) for rank, raw in enumerate(hits, start=1)] for hits in results]


def _hit(rank: int, raw: Mapping[str, Any]) -> Hit:
    entity = raw.get("entity") or {}
    year = entity.get("year")
    return Hit(
        rank=rank,
        id=str(raw["id"]),
        score=float(raw["distance"]),
        title=entity.get("title") or None,
        author=entity.get("author") or None,
        year=None if year is None else int(year),
        cover_url=entity.get("cover_url") or None,
    )


def exact_top_k(vectors: np.ndarray, ids: Iterable[str], queries: Any, k: int) -> list[list[tuple[str, float]]]:
    """Brute-force cosine top-k with numpy: the reference an ANN index is measured against."""
    ids = list(ids)
    scores = normalize(queries) @ normalize(vectors).T
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return [[(ids[j], float(scores[q, j])) for j in row] for q, row in enumerate(order)]
