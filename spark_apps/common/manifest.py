"""Versions of an embedding set: the manifest a run writes next to its outputs, and the
``latest`` pointer that tells the next run which version came before it.

- ``manifest.json``: model, parameters, input fingerprint, row counts, timings, outputs, the
  previous version, drift figures, and evaluation figures once ``spindle.eval`` adds them.
- pointer (e.g. ``runs/<dag>/latest.json``): ``{"embeddings", "manifest", "created_at"}`` of the
  newest successful version, rewritten by each run after its outputs are complete.
"""

import datetime

from spark_apps.common import storage

VERSION = 1


def now():
    return datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat()


def parent(path):
    return path.rstrip("/").rsplit("/", 1)[0] if "/" in path.rstrip("/") else "."


def default_location(target):
    """``manifest.json`` in the folder of the embeddings output."""
    return parent(target) + "/manifest.json"


def _embeddings_of(doc):
    """The embeddings path named by a pointer or a manifest."""
    return doc.get("embeddings") or (doc.get("outputs") or {}).get("embeddings")


def resolve_previous(spark, spec, target):
    """``{"embeddings", "manifest"}`` of the version before this run's, or None.

    ``spec``: a Parquet path, or a ``.json`` pointer / manifest (missing: no previous version).
    A re-run of a run finds a pointer naming its own output: it steps back to the version that
    output's manifest records as its predecessor, never reading what it is about to overwrite.
    """
    if not spec:
        return None
    if not spec.endswith(".json"):
        if spec.rstrip("/") == target.rstrip("/"):
            raise ValueError("--previous must not be the --output being written")
        return {"embeddings": spec, "manifest": None}
    doc, location = storage.read_json(spark, spec), spec
    for _ in range(3):
        if not doc:
            return None
        embeddings = _embeddings_of(doc)
        manifest_path = doc.get("manifest") or ((doc.get("outputs") or {}).get("manifest")) or location
        if embeddings and embeddings.rstrip("/") != target.rstrip("/"):
            return {"embeddings": embeddings, "manifest": manifest_path}
        own = storage.read_json(spark, manifest_path) if manifest_path else None
        doc, location = (own or {}).get("previous"), None
    return None


def write_pointer(spark, path, manifest):
    storage.write_json(
        spark,
        path,
        {
            "embeddings": manifest["outputs"]["embeddings"],
            "manifest": manifest["outputs"]["manifest"],
            "model_fingerprint": manifest["model"]["fingerprint"],
            "created_at": manifest["created_at"],
        },
    )


def input_fingerprint(spark, path, fmt):
    try:
        listing = storage.files_fingerprint(spark, path)
    except Exception as err:  # a glob or an unreadable listing: say so, do not fail the run
        listing = {"error": f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"}
    listing.update({"path": path, "format": fmt})
    return listing


def upstream_rows(upstream):
    """read / kept / quarantined of the job that made the input (prepare_books), when given."""
    upstream = upstream or {}
    return {
        "read": upstream.get("rows_read"),
        "kept": upstream.get("rows_kept"),
        "quarantined": upstream.get("rows_quarantined"),
    }
