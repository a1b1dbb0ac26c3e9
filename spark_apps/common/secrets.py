"""Resolve an Airflow connection id inside the job, from the source in ``SPINDLE_SECRETS_SOURCE``.

The Airflow side hands a job a connection *id* and a *reference* to the secrets store, never
a secret value: values would otherwise show up in task logs, XCom and the spark-submit
command line. Supported sources (the URI scheme picks the resolver, see ``RESOLVERS``):

- ``file:///abs/connections.json``: Airflow's LocalFilesystemBackend JSON, ``{conn_id: value}``
  where a value is a connection dict (``conn_type``, ``host``, ``login``, ``password``,
  ``schema``, ``port``, ``extra`` as a dict or a JSON string) or an Airflow connection URI.
- ``lockbox://<secret-id>`` (Yandex Lockbox, by secret id; see :func:`_from_lockbox`) and
  ``aws-sm://<prefix>`` (AWS Secrets Manager, secret ``<prefix>/<conn_id>``).
"""

import json
import os
from urllib.parse import parse_qsl, unquote, urlsplit

ENV_SOURCE = "SPINDLE_SECRETS_SOURCE"


class SecretsError(RuntimeError):
    """A connection could not be resolved (the message never contains a secret value)."""


class Connection:
    """The fields of an Airflow connection that jobs use. ``repr`` hides the password."""

    def __init__(
        self, conn_id, conn_type=None, host=None, login=None, password=None, schema=None, port=None, extra=None
    ):
        self.conn_id = conn_id
        self.conn_type = conn_type
        self.host = host
        self.login = login
        self.password = password
        self.schema = schema
        self.port = int(port) if port not in (None, "") else None
        self.extra = dict(extra or {})

    def __repr__(self):
        return "Connection(conn_id={!r}, conn_type={!r}, host={!r}, login={!r}, password={})".format(
            self.conn_id, self.conn_type, self.host, self.login, "***" if self.password else None
        )


def _parse_extra(extra):
    if extra in (None, ""):
        return {}
    if isinstance(extra, dict):
        return extra
    try:
        value = json.loads(extra)
    except ValueError:
        raise SecretsError("connection extra is neither a dict nor a JSON object string") from None
    if not isinstance(value, dict):
        raise SecretsError("connection extra must be a JSON object")
    return value


def connection_from_uri(conn_id, uri):
    """Parse Airflow's connection URI form: ``type://login:password@host:port/schema?k=v``
    (components URL-encoded; a ``__extra__`` query parameter holds the extra as JSON)."""
    parts = urlsplit(uri)
    if not parts.scheme:
        raise SecretsError(f"connection {conn_id!r}: the URI has no scheme (conn type)")
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    extra = _parse_extra(query.pop("__extra__")) if "__extra__" in query else query
    return Connection(
        conn_id,
        conn_type=parts.scheme.replace("-", "_"),
        host=unquote(parts.hostname) if parts.hostname else None,
        login=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
        schema=unquote(parts.path[1:]) if parts.path[1:] else None,
        port=parts.port,
        extra=extra,
    )


def connection_from_value(conn_id, value):
    """A LocalFilesystemBackend value: a URI string, a dict, or (older files) a 1-item list."""
    if isinstance(value, list):
        if len(value) != 1:
            raise SecretsError(f"connection {conn_id!r} is defined {len(value)} times")
        value = value[0]
    if isinstance(value, str):
        return connection_from_uri(conn_id, value)
    if not isinstance(value, dict):
        raise SecretsError(f"connection {conn_id!r}: unsupported value type {type(value).__name__}")
    if "uri" in value:
        return connection_from_uri(conn_id, value["uri"])
    return Connection(
        conn_id,
        conn_type=value.get("conn_type"),
        host=value.get("host"),
        login=value.get("login"),
        password=value.get("password"),
        schema=value.get("schema"),
        port=value.get("port"),
        extra=_parse_extra(value.get("extra")),
    )


def _from_local_file(source, conn_id):
    path = unquote(urlsplit(source).path)
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except (OSError, ValueError) as err:
        raise SecretsError(f"cannot read secrets file {path}: {type(err).__name__}") from None
    if conn_id not in data:
        raise SecretsError(f"connection {conn_id!r} is not defined in {path}")
    return connection_from_value(conn_id, data[conn_id])


def _http_json(url, headers, timeout=10):
    import urllib.request

    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read().decode("utf-8"))
    except Exception as err:  # noqa: BLE001 - urllib/ssl/json errors; never echo a payload
        raise SecretsError(f"request to {url.split('?')[0]} failed: {type(err).__name__}") from None


def _from_lockbox(source, conn_id):
    """``lockbox://<secret-id>[?endpoint=https://host:port&metadata=host:port]``: the Lockbox
    secret's payload holds one entry per connection id (value: connection JSON or URI). The
    IAM token comes from the VM's metadata service (the cluster's service account); endpoints
    default to Yandex Cloud's. Standard library only (runs on Data Proc images as they are)."""
    parts = urlsplit(source)
    secret_id = parts.netloc or parts.path.strip("/")
    if not secret_id:
        raise SecretsError("lockbox source has no secret id: lockbox://<secret-id>")
    query = dict(parse_qsl(parts.query))
    endpoint = query.get("endpoint", "https://payload.lockbox.api.cloud.yandex.net").rstrip("/")
    metadata = query.get("metadata", os.environ.get("YC_METADATA_ADDR", "169.254.169.254"))
    token = _http_json(
        f"http://{metadata}/computeMetadata/v1/instance/service-accounts/default/token",
        {"Metadata-Flavor": "Google"},
    ).get("access_token")
    if not token:
        raise SecretsError("the metadata service returned no IAM token")
    payload = _http_json(f"{endpoint}/lockbox/v1/secrets/{secret_id}/payload", {"Authorization": "Bearer " + token})
    for entry in payload.get("entries", []):
        if entry.get("key") == conn_id:
            value = entry.get("textValue")
            if value is None:
                raise SecretsError(f"lockbox entry {conn_id!r} has no text value")
            value = value.strip()
            return connection_from_value(conn_id, json.loads(value) if value.startswith("{") else value)
    raise SecretsError(f"connection {conn_id!r} is not an entry of lockbox secret {secret_id}")


def _from_aws_secrets_manager(source, conn_id):
    """``aws-sm://<prefix>[?region=...]``: secret ``<prefix>/<conn_id>`` (Airflow's
    SecretsManagerBackend layout) holding connection JSON or URI. boto3 (on EMR images) with
    the node's credentials; ``AWS_ENDPOINT_URL`` is honoured by boto3 itself."""
    import boto3

    parts = urlsplit(source)
    prefix = (parts.netloc + parts.path).strip("/")
    query = dict(parse_qsl(parts.query))
    name = f"{prefix}/{conn_id}" if prefix else conn_id
    client = boto3.client("secretsmanager", region_name=query.get("region") or None)
    try:
        value = client.get_secret_value(SecretId=name)["SecretString"].strip()
    except Exception as err:  # noqa: BLE001 - botocore errors; the message names no value
        raise SecretsError(f"secret {name!r} could not be read: {type(err).__name__}") from None
    return connection_from_value(conn_id, json.loads(value) if value.startswith("{") else value)


#: URI scheme -> ``resolve(source, conn_id) -> Connection``.
RESOLVERS = {
    "file": _from_local_file,
    "lockbox": _from_lockbox,
    "aws-sm": _from_aws_secrets_manager,
}


def register_source(scheme, resolver):
    """Plug in a secrets store: ``resolver(source_uri, conn_id) -> Connection``."""
    RESOLVERS[scheme] = resolver


def get_connection(conn_id, source=None):
    """Resolve ``conn_id`` from ``source`` (default: env ``SPINDLE_SECRETS_SOURCE``)."""
    source = source or os.environ.get(ENV_SOURCE)
    if not source:
        raise SecretsError(
            f"connection {conn_id!r} requested but {ENV_SOURCE} is not set (e.g. file:///abs/connections.json)"
        )
    scheme = urlsplit(source).scheme or "file"
    if scheme not in RESOLVERS:
        raise SecretsError(f"unknown secrets source scheme {scheme!r}")
    return RESOLVERS[scheme](source, conn_id)
