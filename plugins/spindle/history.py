"""Spark history after teardown: where local runs keep their event logs, the Spark History
Server that serves them, and the URL of one application there.

Every job on a local cluster writes Spark's event log (``spark.eventLog.enabled``) into one
folder under the warehouse, ``<warehouse root>/_spark-events`` (``$SPINDLE_SPARK_EVENTS_DIR``
wins; ``$SPINDLE_HOME/spark-events`` when the warehouse is not a local folder). The folder
outlives the cluster, so Spark's own History Server (``org.apache.spark.deploy.history.
HistoryServer`` from the pip-installed pyspark's jars) replays a finished application after
its cluster was deleted. ``scripts/airflow_ui.sh`` starts one next to Airflow::

    python -m spindle.history serve            # http://localhost:18080 over the kept logs

and the job tasks' "Spark History" link points at ``$SPINDLE_HISTORY_URL`` (default
``http://localhost:18080``) ``/history/<app id>/jobs/``.

Cloud lanes keep their history where the service does: EMR's persistent application UI and
EMR Serverless's Spark UI dashboard (the amazon provider's links), Data Proc's history server.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

from spindle.config import DEFAULT_WAREHOUSE_CONN_ID, spindle_home

HISTORY_SERVER_CLASS = "org.apache.spark.deploy.history.HistoryServer"
EVENTS_FOLDER = "_spark-events"
DEFAULT_HISTORY_PORT = 18080
ENV_EVENTS_DIR = "SPINDLE_SPARK_EVENTS_DIR"
ENV_HISTORY_URL = "SPINDLE_HISTORY_URL"


def local_event_log_dir(conn_id: str = DEFAULT_WAREHOUSE_CONN_ID) -> Path:
    """The folder local jobs write their event logs to (created if missing)."""
    folder = _event_log_dir(conn_id)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _event_log_dir(conn_id: str) -> Path:
    explicit = os.environ.get(ENV_EVENTS_DIR)
    if explicit:
        return Path(explicit).resolve()
    from spindle.warehouse import warehouse_root

    try:
        root = warehouse_root(conn_id)
    except Exception:  # noqa: BLE001 - no warehouse connection (a bare cluster): the run folder
        return spindle_home() / "spark-events"
    if "://" in root and not root.startswith("file://"):
        return spindle_home() / "spark-events"
    return Path(root.removeprefix("file://")).resolve() / EVENTS_FOLDER


def event_log_conf(folder: str | os.PathLike) -> dict[str, str]:
    """Spark properties that keep an application's event log in ``folder``."""
    return {
        "spark.eventLog.enabled": "true",
        "spark.eventLog.dir": Path(folder).resolve().as_uri(),
        # Two masters started in the same second number their apps alike: a clash must never
        # fail a job, it only replaces the older log.
        "spark.eventLog.overwrite": "true",
    }


def history_base_url() -> str:
    """The Spark History Server the links point at (``$SPINDLE_HISTORY_URL``)."""
    return os.environ.get(ENV_HISTORY_URL, f"http://localhost:{DEFAULT_HISTORY_PORT}").rstrip("/")


def app_history_url(app_id: str | None, base_url: str | None = None) -> str | None:
    """The finished application's page on the History Server; None without an id."""
    if not app_id:
        return None
    return f"{(base_url or history_base_url()).rstrip('/')}/history/{urllib.parse.quote(app_id, safe='')}/jobs/"


def history_server_command(log_dir: str | os.PathLike, port: int = DEFAULT_HISTORY_PORT, host: str = "127.0.0.1"):
    """``(argv, env)`` that run Spark's History Server over ``log_dir`` in the foreground."""
    from spindle.hooks.local_spark import spark_home

    home = spark_home()
    options = {
        "spark.history.fs.logDirectory": Path(log_dir).resolve().as_uri(),
        "spark.history.ui.port": str(port),
        "spark.history.fs.update.interval": "2s",  # a run that just ended shows up at once
    }
    env = dict(os.environ)
    env.update(
        {
            "SPARK_HOME": str(home),
            "SPARK_LOCAL_IP": host,
            "SPARK_HISTORY_OPTS": " ".join(f"-D{k}={v}" for k, v in options.items()),
        }
    )
    return [str(home / "bin" / "spark-class"), HISTORY_SERVER_CLASS], env


def start_history_server(
    log_dir: str | os.PathLike, port: int = DEFAULT_HISTORY_PORT, host: str = "127.0.0.1", log_file=None
) -> subprocess.Popen:
    """Start the History Server in its own process group (stop it with ``os.killpg``)."""
    Path(log_dir).mkdir(parents=True, exist_ok=True)
    argv, env = history_server_command(log_dir, port, host)
    return subprocess.Popen(
        argv,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=log_file or subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def wait_for_application(base_url: str, app_id: str, timeout: float = 60.0) -> dict:
    """The History Server's record of ``app_id`` (REST ``/api/v1/applications/<id>``), once it
    has read the application's event log."""
    import json

    url = f"{base_url.rstrip('/')}/api/v1/applications/{urllib.parse.quote(app_id, safe='')}"
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=3) as response:
                return json.load(response)
        except (OSError, ValueError) as err:
            if time.monotonic() > deadline:
                raise TimeoutError(f"the History Server at {base_url} did not list {app_id}: {err}") from err
        time.sleep(0.5)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m spindle.history", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run Spark's History Server over the kept event logs (foreground)")
    serve.add_argument("--dir", help="event log folder (default: the warehouse's _spark-events)")
    serve.add_argument("--port", type=int, default=DEFAULT_HISTORY_PORT)
    serve.add_argument("--host", default="127.0.0.1")
    sub.add_parser("dir", help="print the event log folder")
    args = parser.parse_args(argv)
    if args.command == "dir":
        print(local_event_log_dir())
        return 0
    folder = Path(args.dir) if args.dir else local_event_log_dir()
    folder.mkdir(parents=True, exist_ok=True)
    command, env = history_server_command(folder, args.port, args.host)
    print(f"Spark History Server on http://{args.host}:{args.port} over {folder}", flush=True)
    os.execvpe(command[0], command, env)
    return 0


if __name__ == "__main__":
    sys.exit(main())
