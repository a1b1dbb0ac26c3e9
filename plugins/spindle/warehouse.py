"""The warehouse as the Airflow-side tasks see it: the same root the jobs resolve, on any backend.

Jobs on a cluster resolve warehouse-relative paths (``runs/<dag>/<run>/books.parquet``) against
``extra.root`` of the warehouse connection (``spark_apps.common.cli.resolve_path``). A few tasks
run on the Airflow worker instead (``prepare_sentences`` writes the LLM DAG's input table,
``load_vectors`` reads the run's Parquet), so they must reach that same root: a local folder
for the local backend (and the cloud fakes), ``s3a://<bucket>/<prefix>`` on Yandex Object
Storage, ``s3://<bucket>/<prefix>`` on EMR. :func:`warehouse_for` builds a :class:`Warehouse`
from a backend's settings (``check_backend``'s XCom):

- warehouse connection: setting ``warehouse_conn_id`` (default ``spindle_warehouse``);
- storage credentials of an S3 root: the amazon provider's ``S3Hook`` on the connection named
  by setting ``s3_conn_id`` (Yandex) or ``aws_conn_id`` (EMR), else on the warehouse connection
  itself (login/password = keys, ``extra.endpoint_url``: what the jobs use, docs/CONTRACTS.md).

Reading and writing goes through one ``pyarrow.fs`` filesystem (``S3FileSystem`` or
``LocalFileSystem``), so bytes and Spark's Parquet folders take the same code path on every
backend. ``s3://``, ``s3a://`` and ``s3n://`` are three clients' names for the same bucket and
key. Credentials stay inside the filesystem object: never in a log line, a return value or XCom.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import pyarrow.fs as pafs
from airflow.sdk import BaseHook
from airflow.sdk.exceptions import AirflowFailException, AirflowNotFoundException

from spindle.config import DEFAULT_WAREHOUSE_CONN_ID

#: URI schemes of S3-compatible object storage (Hadoop S3A, EMRFS, the old s3n): same keys.
S3_SCHEMES = ("s3", "s3a", "s3n")
#: Settings that name the storage connection, per backend (spindle.backends.config.SETTINGS).
STORAGE_CONN_SETTINGS = ("s3_conn_id", "aws_conn_id")


class WarehouseError(AirflowFailException):
    """The warehouse connection, its root or its storage connection is missing or unusable."""


class Warehouse:
    """A warehouse root plus the filesystem that reaches it from the Airflow worker.

    :param root: the root as jobs see it (``/abs/path``, ``s3a://bucket/prefix``).
    :param filesystem: ``pyarrow.fs`` filesystem of that root.
    :param base: the root as a path of ``filesystem`` (``/abs/path``, ``bucket/prefix``).
    """

    def __init__(self, root: str, filesystem: pafs.FileSystem, base: str) -> None:
        self.root = root
        self.filesystem = filesystem
        self.base = base.rstrip("/") or "/"

    def __repr__(self) -> str:  # the root only: the filesystem holds credentials
        return f"Warehouse({self.root!r})"

    @property
    def is_local(self) -> bool:
        return isinstance(self.filesystem, pafs.LocalFileSystem)

    # ------------------------------------------------------------------ naming
    def uri(self, rel: str) -> str:
        """What a job sees for ``rel``: URIs and absolute paths as they are, relative paths under
        the root (the jobs' own rule, ``resolve_path``)."""
        if _scheme(rel) or os.path.isabs(rel):
            return rel
        return self.root.rstrip("/") + "/" + rel.lstrip("/")

    def locate(self, value: str) -> tuple[pafs.FileSystem, str]:
        """``(filesystem, path)`` of a warehouse-relative path, an absolute local path or an S3
        URI (any of ``S3_SCHEMES``, read with this warehouse's credentials)."""
        scheme = _scheme(value)
        if scheme in S3_SCHEMES:
            if self.is_local:
                raise WarehouseError(f"{value}: an object-store URI, but the warehouse root {self.root} is local")
            return self.filesystem, _s3_path(value)
        if scheme == "file":
            return pafs.LocalFileSystem(), urlsplit(value).path
        if scheme:
            raise WarehouseError(f"{value}: scheme {scheme!r} is not readable here ({', '.join(S3_SCHEMES)}, file)")
        if os.path.isabs(value):
            return (self.filesystem if self.is_local else pafs.LocalFileSystem()), value
        return self.filesystem, f"{self.base}/{value.lstrip('/')}"

    # ------------------------------------------------------------------ bytes
    def exists(self, rel: str) -> bool:
        """A file, or a folder with something in it (a Spark output folder)."""
        filesystem, path = self.locate(rel)
        return filesystem.get_file_info(path).type != pafs.FileType.NotFound

    def read_bytes(self, rel: str) -> bytes:
        filesystem, path = self.locate(rel)
        with filesystem.open_input_stream(path) as stream:
            return stream.read()

    def write_bytes(self, rel: str, data: bytes) -> str:
        """Write ``data`` whole at ``rel``, replacing what was there; return :meth:`uri`.

        Readers never see half a file: an S3 object appears only when its upload completes (a
        single PUT for a small file, see :func:`s3_filesystem`); a local file is written beside
        the target and renamed over it."""
        filesystem, path = self.locate(rel)
        if isinstance(filesystem, pafs.LocalFileSystem):
            _replace_local(filesystem, path, data)
        else:
            with filesystem.open_output_stream(path) as out:
                out.write(data)
        return self.uri(rel)


def _replace_local(filesystem: pafs.LocalFileSystem, path: str, data: bytes) -> None:
    """Temp file beside ``path``, then a rename: a reader sees the old file or the new one."""
    filesystem.create_dir(os.path.dirname(path), recursive=True)
    tmp = f"{path}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        with filesystem.open_output_stream(tmp) as out:
            out.write(data)
        filesystem.move(tmp, path)
    finally:
        if filesystem.get_file_info(tmp).type != pafs.FileType.NotFound:
            filesystem.delete_file(tmp)


# --------------------------------------------------------------------------- construction
def warehouse_for(
    backend: str | None = None,
    settings: Mapping[str, Any] | None = None,
    conn_id: str = DEFAULT_WAREHOUSE_CONN_ID,
) -> Warehouse:
    """The warehouse of a backend, from its settings (``check_backend``'s ``settings``; None or
    ``{}``: the local backend). Fails with :class:`WarehouseError` naming the connection or the
    setting when a connection is missing or the root cannot be read from here."""
    settings = settings or {}
    conn_id = settings.get("warehouse_conn_id") or conn_id
    root = warehouse_root(conn_id)
    scheme = _scheme(root)
    if scheme in ("", "file"):
        path = os.path.abspath(os.path.expanduser(urlsplit(root).path if scheme else root))
        return Warehouse(root, pafs.LocalFileSystem(), path)
    if scheme not in S3_SCHEMES:
        raise WarehouseError(
            f"connection {conn_id!r}: extra.root {root} has scheme {scheme!r}; Airflow-side tasks "
            f"read local paths, file:// and {'/'.join(S3_SCHEMES)}:// roots"
        )
    if not urlsplit(root).netloc:
        raise WarehouseError(f"connection {conn_id!r}: extra.root {root} names no bucket")
    return Warehouse(root, s3_filesystem(storage_conn_id(backend, settings, conn_id), settings), _s3_path(root))


def storage_conn_id(backend: str | None, settings: Mapping[str, Any], warehouse_conn_id: str) -> str:
    """The connection holding the object store's credentials: the backend's ``s3_conn_id`` /
    ``aws_conn_id`` setting, else the warehouse connection itself. Checked to exist, so a typo
    fails naming the setting instead of silently falling back to ambient AWS credentials."""
    for key in STORAGE_CONN_SETTINGS:
        if settings.get(key):
            context = (f"backend {backend!r}: " if backend else "") + f"setting {key!r}: "
            _connection(settings[key], context)
            return str(settings[key])
    return warehouse_conn_id


def s3_filesystem(conn_id: str, settings: Mapping[str, Any]) -> pafs.S3FileSystem:
    """``S3FileSystem`` with the credentials, region and endpoint of the provider's ``S3Hook``
    (static keys, a role, or the default chain: whatever the connection configures).

    ``allow_delayed_open``: a file smaller than one upload part goes up in a single PutObject at
    close instead of a three-request multipart upload (no half-done upload is left behind)."""
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

    hook = S3Hook(aws_conn_id=conn_id, region_name=settings.get("region_name") or None)
    try:
        credentials = hook.get_credentials()  # masks the secret key and token in task logs
    except AttributeError:  # botocore found no credentials at all
        raise WarehouseError(
            f"connection {conn_id!r}: no object-storage credentials (login/password, a role or the AWS environment)"
        ) from None
    options: dict[str, Any] = {"region": hook.conn_region_name or "us-east-1"}
    endpoint = hook.conn_config.endpoint_url
    if endpoint:  # Yandex Object Storage, moto, MinIO (path-style addressing, as S3A is set up)
        parts = urlsplit(endpoint if "://" in endpoint else f"https://{endpoint}")
        options.update(endpoint_override=parts.netloc, scheme=parts.scheme)
    return pafs.S3FileSystem(
        access_key=credentials.access_key,
        secret_key=credentials.secret_key,
        session_token=credentials.token,
        allow_delayed_open=True,
        **options,
    )


def warehouse_root(conn_id: str = DEFAULT_WAREHOUSE_CONN_ID) -> str:
    """``extra.root`` of the warehouse connection (fetching it registers its password with
    Airflow's secrets masker; only the root is returned)."""
    conn = _connection(conn_id)
    root = (conn.extra_dejson or {}).get("root")
    if not root:
        raise WarehouseError(f"connection {conn_id!r} has no extra.root (the warehouse root)")
    return str(root)


def _connection(conn_id: str, context: str = "") -> Any:
    try:
        return BaseHook.get_connection(conn_id)
    except AirflowNotFoundException:
        raise WarehouseError(f"{context}connection {conn_id!r} is not defined in the secrets backend") from None


def _scheme(value: str) -> str:
    """URI scheme, lower case; '' for paths (a Windows drive letter is not a scheme)."""
    scheme = urlsplit(value).scheme.lower()
    return scheme if len(scheme) > 1 else ""


def _s3_path(uri: str) -> str:
    """``s3a://bucket/key`` -> ``bucket/key``: the path ``S3FileSystem`` uses for any scheme."""
    parts = urlsplit(uri)
    return f"{parts.netloc}/{parts.path.lstrip('/')}".rstrip("/")
