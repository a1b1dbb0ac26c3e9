"""Where Spindle's vectors live: the ``spindle_milvus`` connection, else embedded milvus-lite.

Resolution order (the first that applies):

1. Airflow connection ``spindle_milvus`` from the secrets backend: ``extra.uri`` (or
   ``host`` + ``port``, scheme from ``schema``: ``http://milvus:19530``; a ``.db`` path means
   milvus-lite), the token is ``password`` (``login:password`` when a login is set, Milvus'
   user:password form), ``extra.db_name`` the database. The token is only handed to the
   client; it is never logged, templated or pushed to XCom.
2. env ``SPINDLE_MILVUS_URI`` (a ``.db`` path or a server without authentication), as set by
   docker-compose.yaml.
3. milvus-lite at ``$SPINDLE_HOME/milvus/spindle.db``.
"""

from __future__ import annotations

import os
from typing import Any

from airflow.sdk import BaseHook
from airflow.sdk.exceptions import AirflowNotFoundException

from spindle.vectors.store import MilvusVectorStore, default_lite_path

DEFAULT_MILVUS_CONN_ID = "spindle_milvus"


class MilvusHook(BaseHook):
    """Opens a :class:`MilvusVectorStore` on the endpoint the connection (or default) names."""

    conn_name_attr = "milvus_conn_id"
    default_conn_name = DEFAULT_MILVUS_CONN_ID
    conn_type = "milvus"
    hook_name = "Milvus (Spindle)"

    def __init__(self, milvus_conn_id: str | None = DEFAULT_MILVUS_CONN_ID, required: bool = False, **kwargs: Any):
        super().__init__(**kwargs)
        self.milvus_conn_id = milvus_conn_id
        self.required = required

    def endpoint(self) -> dict[str, str]:
        """``uri``, ``token``, ``db_name`` and ``source`` (how it was chosen)."""
        conn = self._connection()
        if conn is not None:
            extra = conn.extra_dejson or {}
            uri = extra.get("uri") or _uri_from_parts(conn.host, conn.port, conn.schema)
            if not uri:
                raise ValueError(f"connection {self.milvus_conn_id!r} names no Milvus: set extra.uri or host")
            token = f"{conn.login}:{conn.password}" if conn.login and conn.password else conn.password or ""
            return {
                "uri": uri,
                "token": token,
                "db_name": extra.get("db_name", ""),
                "source": f"connection {self.milvus_conn_id}",
            }
        if os.environ.get("SPINDLE_MILVUS_URI"):
            return {
                "uri": os.environ["SPINDLE_MILVUS_URI"],
                "token": "",
                "db_name": "",
                "source": "env SPINDLE_MILVUS_URI",
            }
        return {"uri": str(default_lite_path()), "token": "", "db_name": "", "source": "default milvus-lite file"}

    def _connection(self):
        if not self.milvus_conn_id:
            return None
        try:
            return self.get_connection(self.milvus_conn_id)
        except AirflowNotFoundException:
            if self.required:
                raise
            return None

    def get_conn(self) -> MilvusVectorStore:
        """A new store; close it (or use ``with``) when done: milvus-lite locks its folder."""
        endpoint = self.endpoint()
        store = MilvusVectorStore(endpoint["uri"], token=endpoint["token"], db_name=endpoint["db_name"])
        self.log.info("Vectors in %s (from %s)", store.describe_endpoint(), endpoint["source"])
        return store


def _uri_from_parts(host: str | None, port: int | None, schema: str | None) -> str:
    if not host:
        return ""
    if host.endswith(".db") or "://" in host:
        return host
    return f"{schema or 'http'}://{host}:{port or 19530}"
