"""OpenLineage lineage of Spindle's tasks: which datasets a job read and wrote, and its model.

The job operators (local :class:`~spindle.operators.spark_app.SparkAppJobOperator`, the cloud
lanes' operators through :class:`~spindle.backends.common.JobSpec`) and ``load_vectors`` return
an ``OperatorLineage`` from ``get_openlineage_facets_on_complete``; the OpenLineage provider's
listener (``apache-airflow-providers-openlineage``) sends it with the task's START/COMPLETE
events to the transport configured in ``[openlineage] transport``.

Datasets are named per the OpenLineage naming spec (``openlineage.client.naming.dataset``):
a local path is namespace ``file`` and its absolute path; ``s3://``/``s3a://``/``s3n://`` URIs
are namespace ``s3://<bucket>`` and the object key (the same object, whichever Hadoop connector
reads it). A Milvus collection has no entry in the spec; it follows the spec's pattern:
namespace ``milvus://<host>:<port>`` and name ``<database>.<collection>`` for a server,
namespace ``milvus-lite://<hostname>`` and name ``<db file>/<collection>`` for embedded
milvus-lite. The model is the run facet ``spindle_model`` (name, kind, location, fingerprint).

This module is imported only when lineage is extracted, never when a DAG file is parsed.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import urlsplit

import attr
from airflow.providers.openlineage.extractors import OperatorLineage
from openlineage.client.event_v2 import Dataset
from openlineage.client.generated.base import RunFacet
from openlineage.client.naming import dataset as naming

#: Job arguments naming what a job reads, what it writes, and its model (docs/CONTRACTS.md).
#: ``previous``/``latest`` are pointers to versions, not data the job transforms: left out.
INPUT_ARGS = ("input", "images_dir", "authors")
OUTPUT_ARGS = ("output", "quarantine", "manifest")
MODEL_ARG = "model"
S3_SCHEMES = ("s3", "s3a", "s3n")
#: What kind of model each job runs (the facet's ``kind``).
MODEL_KINDS = {"embed_text": "sentence-transformers", "embed_images": "clip", "llm_transform": "seq2seq"}
MODEL_FACET = "spindle_model"


@attr.define
class SpindleModelRunFacet(RunFacet):
    """The model a job ran: its name (the directory's name), kind, where it was loaded from
    (a local directory, or the archive shipped to the cluster) and, when the job reported one,
    its fingerprint (a hash of the model files, as in the run's manifest)."""

    name: str
    kind: str
    location: str
    fingerprint: str | None = None

    @staticmethod
    def _get_schema() -> str:
        return "https://github.com/spindle/spindle/blob/main/docs/operations.md#lineage"


def dataset(location: str, root: str | None = None) -> Dataset:
    """The dataset a job argument names: a URI, an absolute path, or a path relative to the
    warehouse ``root`` (the jobs' own rule)."""
    location = str(location)
    if not urlsplit(location).scheme and not os.path.isabs(location):
        if not root:
            raise ValueError(f"{location}: a relative path, and no warehouse root to resolve it against")
        location = root.rstrip("/") + "/" + location.lstrip("/")
    parts = urlsplit(location)
    if parts.scheme in S3_SCHEMES:
        name = naming.S3(bucket_name=parts.netloc, object_key=parts.path.lstrip("/") or "/")
    elif parts.scheme in ("", "file"):
        name = naming.LocalFileSystem(path=os.path.normpath(parts.path if parts.scheme else location))
    else:  # another object store: <scheme>://<authority>, the path as the name
        return Dataset(namespace=f"{parts.scheme}://{parts.netloc}", name=parts.path.lstrip("/") or "/")
    return Dataset(namespace=name.get_namespace(), name=name.get_name())


def milvus_dataset(uri: str, collection: str, db_name: str = "") -> Dataset:
    """A Milvus collection on a server (``http(s)://host:port``) or in a milvus-lite file."""
    parts = urlsplit(uri)
    if parts.scheme in ("http", "https", "tcp", "grpc") and parts.hostname:
        return Dataset(
            namespace=f"milvus://{parts.hostname}:{parts.port or 19530}", name=f"{db_name or 'default'}.{collection}"
        )
    path = os.path.abspath(parts.path if parts.scheme == "file" else uri)
    return Dataset(namespace=f"milvus-lite://{socket.gethostname()}", name=f"{path}/{collection}")


def _values(job_args: Mapping[str, Any], keys: Iterable[str], rewrites: Mapping[str, str]) -> list[str]:
    found = []
    for key in keys:
        value = job_args.get(key)
        if isinstance(value, str) and value.strip():
            found.append(rewrites.get(value, value))
    return found


def model_facet(job: str, job_args: Mapping[str, Any], metrics: Any, location: str | None = None) -> dict[str, Any]:
    """``{"spindle_model": facet}`` for a job that runs a model, ``{}`` otherwise."""
    model = job_args.get(MODEL_ARG)
    if not isinstance(model, str) or not model.strip():
        return {}
    metrics = metrics if isinstance(metrics, Mapping) else {}
    reported = metrics.get("model")
    fingerprint = metrics.get("model_fingerprint") or (
        reported.get("fingerprint") if isinstance(reported, Mapping) else None
    )
    facet = SpindleModelRunFacet(
        name=os.path.basename(model.rstrip("/")),
        kind=MODEL_KINDS.get(job, "model"),
        location=location or model,
        fingerprint=fingerprint,
    )
    return {MODEL_FACET: facet}


def job_lineage(
    job: str,
    job_args: Mapping[str, Any] | None,
    root: str | None,
    *,
    rewrites: Mapping[str, str] | None = None,
    model_location: str | None = None,
    metrics: Any = None,
) -> OperatorLineage:
    """Inputs, outputs and model of a ``spark_apps`` job from its (rendered) arguments.

    :param root: the warehouse root the job resolves relative paths against.
    :param rewrites: local paths the stage task uploaded -> their remote URI (cloud lanes).
    :param model_location: where the cluster got the model (cloud: the shipped archive).
    :param metrics: the job's metrics (``model.fingerprint`` when it reported one).
    """
    args, rewrites = dict(job_args or {}), dict(rewrites or {})
    return OperatorLineage(
        inputs=[dataset(value, root) for value in _values(args, INPUT_ARGS, rewrites)],
        outputs=[dataset(value, root) for value in _values(args, OUTPUT_ARGS, rewrites)],
        run_facets=model_facet(job, args, metrics, model_location),
    )


def load_lineage(
    warehouse_uri: Any,
    books: str | None,
    loads: Iterable[Mapping[str, Any]],
    sources: Iterable[Mapping[str, Any]],
    endpoint: Mapping[str, str],
) -> OperatorLineage:
    """``load_vectors``: the books and embeddings Parquet it read, the collections it wrote.

    :param warehouse_uri: ``Warehouse.uri`` (what a job sees for a warehouse-relative path).
    :param loads: the task's per-source results (a ``collection`` for each loaded source).
    """
    loaded = {item["alias"]: item for item in loads if item.get("collection")}
    inputs = [dataset(warehouse_uri(books))] if books else []
    inputs += [dataset(warehouse_uri(s["embeddings"])) for s in sources if s["alias"] in loaded and s.get("embeddings")]
    outputs = [
        milvus_dataset(endpoint["uri"], item["collection"], endpoint.get("db_name", "")) for item in loaded.values()
    ]
    return OperatorLineage(inputs=inputs, outputs=outputs)
