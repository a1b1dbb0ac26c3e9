"""A real Airflow on loopback for the UI and REST tests, and the browser that drives it.

:class:`AirflowServer` runs ``airflow db migrate`` and then the three components a developer
runs (``api-server``, ``scheduler``, ``dag-processor``) as separate processes, with the
repository's ``dags/`` and ``plugins/`` and the conventions of ``scripts/env.sh``, but with its
own Airflow home, metadata DB, secrets file, warehouse and ``$SPINDLE_HOME`` in a temp dir, a
free port and LocalExecutor.

Auth: Airflow's SimpleAuthManager with one user ``admin`` (role admin) whose password is random
per run and written to the passwords file beforehand. Not "all admins" mode: that mode has no
login page, and logging in is part of the path a person takes.

Stopping: every component runs in its own process group (the scheduler's LocalExecutor workers,
the task processes and their spark-submit children live below it); Spark daemons and
spark-submit start their own sessions. So :meth:`AirflowServer.stop` signals each group (TERM,
then KILL after a grace period) and then sweeps every process that still carries this run's
marker in its environment (``SPINDLE_UI_TEST_RUN``), which every descendant inherits.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from tests.support.paths import REPO, TEST_ARTIFACTS

ARTIFACTS = TEST_ARTIFACTS / "ui"
DOCS_IMG = REPO / "docs" / "img"
CHROMIUM = os.environ.get("SPINDLE_CHROMIUM", "/usr/bin/chromium")
# Flags for a closed network: without the background-networking ones Chromium keeps trying to
# reach Google's hosts. --no-sandbox: the tests may run as root.
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]
MARKER = "SPINDLE_UI_TEST_RUN"
ADMIN_USER = "admin"
COMPONENTS = ("api-server", "scheduler", "dag-processor")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def airflow_command() -> list[str]:
    exe = Path(sys.executable).with_name("airflow")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "airflow"]


def browser_missing_reason() -> str | None:
    """Why the browser tests cannot run here, or None."""
    if not Path(CHROMIUM).exists():
        return f"no Chromium at {CHROMIUM} (apt-get install chromium chromium-driver)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright package is not installed (requirements-dev.txt)"
    return None


def skip_or_fail(reason: str) -> None:
    """Skip a test that cannot run here; in CI (or with SPINDLE_REQUIRE_BROWSER=1) fail it."""
    import pytest

    if os.environ.get("CI", "").lower() in ("1", "true") or os.environ.get("SPINDLE_REQUIRE_BROWSER") == "1":
        pytest.fail(reason + " (required: CI or SPINDLE_REQUIRE_BROWSER=1)", pytrace=False)
    pytest.skip(reason)


# --------------------------------------------------------------------------- processes
def _environ_has(proc: psutil.Process, key: str, value: str) -> bool:
    try:
        return proc.environ().get(key) == value
    except (OSError, psutil.Error):
        return False


def marked_pids(run_token: str) -> list[int]:
    """Live processes whose environment carries ``SPINDLE_UI_TEST_RUN=<run_token>``."""
    me = os.getpid()
    found = []
    for proc in psutil.process_iter():
        if proc.pid != me and _environ_has(proc, MARKER, run_token):
            try:
                if proc.status() in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD):
                    continue
            except psutil.Error:
                continue
            found.append(proc.pid)
    return found


def spark_daemons(folder: Path) -> list[str]:
    """``ps`` lines of Spark masters/workers whose cluster folder lies under ``folder``."""
    out = subprocess.run(["ps", "-ww", "-eo", "pid,args"], check=False, capture_output=True, text=True).stdout
    lines = []
    for line in out.splitlines():
        if "org.apache.spark.deploy.master.Master" in line or "org.apache.spark.deploy.worker.Worker" in line:
            pid = int(line.split()[0])
            try:
                cwd = psutil.Process(pid).cwd()
            except (OSError, psutil.Error):
                continue
            if cwd.startswith(str(folder)):
                lines.append(line)
    return lines


@dataclass
class AirflowServer:
    """One Airflow (api-server, scheduler, dag-processor) on 127.0.0.1:<free port>."""

    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="spindle-ui-")))
    port: int = field(default_factory=free_port)
    # Spark's History Server over the warehouse's kept event logs, as scripts/airflow_ui.sh runs it
    history_port: int = field(default_factory=free_port)
    log_dir: Path = ARTIFACTS / "logs"
    run_token: str = field(default_factory=lambda: secrets.token_hex(8))
    password: str = field(default_factory=lambda: secrets.token_urlsafe(12))
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    _token: str | None = None

    # ------------------------------------------------------------------ layout
    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def history_url(self) -> str:
        return f"http://127.0.0.1:{self.history_port}"

    @property
    def airflow_home(self) -> Path:
        return self.root / "airflow"

    @property
    def spindle_home(self) -> Path:
        return self.root / "spindle"

    @property
    def clusters_dir(self) -> Path:
        return self.spindle_home / "clusters"

    def env(self) -> dict[str, str]:
        """scripts/env.sh's conventions, pointed at this run's folders. Nothing of the calling
        process's Airflow or Spindle settings leaks in (other tests set some at import time)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "SPINDLE_"))}
        home, secrets_dir = self.airflow_home, self.airflow_home / "secrets"
        backend = "airflow.secrets.local_filesystem.LocalFilesystemBackend"
        backend_kwargs = json.dumps(
            {
                "connections_file_path": str(secrets_dir / "connections.json"),
                "variables_file_path": str(secrets_dir / "variables.json"),
            }
        )
        python = sys.executable
        env.update(
            {
                MARKER: self.run_token,
                "SPINDLE_REPO": str(REPO),
                "SPINDLE_HOME": str(self.spindle_home),
                "SPINDLE_SECRETS_DIR": str(secrets_dir),
                "AIRFLOW_HOME": str(home),
                "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
                "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
                "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
                "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
                "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
                "AIRFLOW__CORE__PARALLELISM": "4",
                # One retry, as a production deployment would set: on a busy 2-core CI machine a
                # task can die of its host's load; the test records every retry and its first log.
                "AIRFLOW__CORE__DEFAULT_TASK_RETRIES": "1",
                "AIRFLOW__CORE__DEFAULT_TASK_RETRY_DELAY": "5",
                "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home}/airflow.db",
                "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(home / "logs"),
                "AIRFLOW__CORE__AUTH_MANAGER": (
                    "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"
                ),
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{ADMIN_USER}:admin",
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "False",
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(home / "passwords.json"),
                "AIRFLOW__API__HOST": "127.0.0.1",
                "AIRFLOW__API__PORT": str(self.port),
                "AIRFLOW__API__WORKERS": "1",
                "AIRFLOW__API__BASE_URL": self.base_url,
                "AIRFLOW__API__SECRET_KEY": self.run_token * 2,
                "AIRFLOW__API_AUTH__JWT_SECRET": self.run_token * 4,
                "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.base_url}/execution/",
                # Only manual runs: unpausing the nightly DAG must not also start its scheduled run.
                "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "False",
                "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "2",
                "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "30",
                "AIRFLOW__SECRETS__BACKEND": backend,
                "AIRFLOW__SECRETS__BACKEND_KWARGS": backend_kwargs,
                "AIRFLOW__WORKERS__SECRETS_BACKEND": backend,
                "AIRFLOW__WORKERS__SECRETS_BACKEND_KWARGS": backend_kwargs,
                "HF_HUB_OFFLINE": "1",
                "TRANSFORMERS_OFFLINE": "1",
                "TOKENIZERS_PARALLELISM": "false",
                # Job tasks log Spark progress every 3 s (default 15 s): short test jobs show it.
                "SPINDLE_PROGRESS_INTERVAL": "3",
                "SPINDLE_HISTORY_URL": self.history_url,
                "PYSPARK_PYTHON": python,
                "PYSPARK_DRIVER_PYTHON": python,
                "PYTHONPATH": str(REPO),
                "PATH": f"{Path(python).parent}{os.pathsep}{env.get('PATH', '')}",
                "NO_COLOR": "1",
            }
        )
        return env

    # ------------------------------------------------------------------ start / stop
    def prepare(self) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.airflow_home.mkdir(parents=True, exist_ok=True)
        self.spindle_home.mkdir(parents=True, exist_ok=True)
        (self.airflow_home / "passwords.json").write_text(json.dumps({ADMIN_USER: self.password}))
        env = self.env()
        # The lead's secrets initialiser: warehouse connection under $SPINDLE_HOME/warehouse.
        subprocess.run(
            [sys.executable, str(REPO / "scripts" / "init_local_secrets.py"), env["SPINDLE_SECRETS_DIR"]],
            env=env,
            check=True,
            cwd=self.root,
        )

    def start(self, timeout: float = 240.0) -> None:
        self.prepare()
        env = self.env()
        with open(self.log_dir / "db-migrate.log", "wb") as out:
            subprocess.run(
                [*airflow_command(), "db", "migrate"],
                env=env,
                cwd=self.root,
                stdout=out,
                stderr=subprocess.STDOUT,
                check=True,
                timeout=300,
            )
        for name in COMPONENTS:
            args = [*airflow_command(), name]
            if name == "api-server":
                args += ["--host", "127.0.0.1", "--port", str(self.port)]
            out = open(self.log_dir / f"{name}.log", "wb")  # noqa: SIM115 (closed by the child's exit)
            self.procs[name] = subprocess.Popen(
                args,
                env=env,
                cwd=self.root,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            out.close()
        self._start_history_server(env)
        self.wait_healthy(timeout)

    def _start_history_server(self, env: dict[str, str]) -> None:
        command = [sys.executable, "-m", "spindle.history", "serve", "--port", str(self.history_port)]
        env = {**env, "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'plugins'}"}
        with open(self.log_dir / "spark-history-server.log", "wb") as out:
            self.procs["history-server"] = subprocess.Popen(
                command,
                env=env,
                cwd=self.root,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def _check_running(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                tail = (self.log_dir / f"{name}.log").read_text(errors="replace")[-3000:]
                raise RuntimeError(f"airflow {name} exited with {proc.returncode}:\n{tail}")

    def wait_healthy(self, timeout: float) -> dict[str, Any]:
        """Until /api/v2/monitor/health says the DB, scheduler and dag-processor are healthy."""
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            self._check_running()
            try:
                with urllib.request.urlopen(f"{self.base_url}/api/v2/monitor/health", timeout=3) as resp:
                    last = json.load(resp)
                parts = ("metadatabase", "scheduler", "dag_processor")
                if all((last.get(p) or {}).get("status") == "healthy" for p in parts):
                    return last
            except (OSError, ValueError) as err:
                last = err
            time.sleep(1)
        raise TimeoutError(f"Airflow did not become healthy in {timeout:.0f} s: {last}")

    def stop(self, grace: float = 10.0) -> list[int]:
        """Stop every component's process group, then anything left with this run's marker.
        Returns the pids that needed the sweep (for the record; they are killed)."""
        for proc in self.procs.values():
            if proc.poll() is None:
                _killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for proc in self.procs.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            _killpg(proc.pid, signal.SIGKILL)  # the group may outlive its leader
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        swept = []
        for _ in range(3):
            left = marked_pids(self.run_token)
            if not left:
                break
            swept += left
            for pid in left:
                try:
                    os.killpg(os.getpgid(pid), signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
                try:
                    os.kill(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
            time.sleep(0.5)
        return sorted(set(swept))

    def cleanup(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)

    # ------------------------------------------------------------------ REST API v2
    def token(self) -> str:
        if self._token is None:
            status, body = self.request(
                "POST", "/auth/token", {"username": ADMIN_USER, "password": self.password}, auth=False
            )
            assert status in (200, 201), (status, body)
            self._token = body["access_token"]
        return self._token

    def request(
        self, method: str, path: str, body: Any = None, auth: bool = True, timeout: float = 30
    ) -> tuple[int, Any]:
        """(status, parsed JSON body) of one call; HTTP errors are returned, not raised."""
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if auth:
            headers["Authorization"] = f"Bearer {self.token()}"
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.base_url + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                status, raw = resp.status, resp.read()
        except urllib.error.HTTPError as err:
            status, raw = err.code, err.read()
        try:
            return status, json.loads(raw or b"null")
        except ValueError:
            return status, raw.decode(errors="replace")

    def api(self, method: str, path: str, body: Any = None) -> Any:
        status, data = self.request(method, "/api/v2" + path, body)
        if status >= 300:
            raise AssertionError(f"{method} /api/v2{path} -> {status}: {data}")
        return data

    def wait_for_dag(self, dag_id: str, timeout: float = 120.0) -> dict[str, Any]:
        """Until the dag-processor has parsed ``dag_id`` (and it has no import error)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._check_running()
            status, data = self.request("GET", f"/api/v2/dags/{dag_id}")
            if status == 200:
                return data
            errors = self.api("GET", "/importErrors").get("import_errors", [])
            if errors:
                raise AssertionError(f"DAG import errors: {errors}")
            time.sleep(2)
        raise TimeoutError(f"DAG {dag_id} did not appear in {timeout:.0f} s")

    def task_log(self, dag_id: str, run_id: str, task_id: str, try_number: int = 1) -> list[str]:
        """The task's log lines (``event`` of each structured line) as the UI reads them."""
        run = urllib.parse.quote(run_id, safe="")
        data = self.api("GET", f"/dags/{dag_id}/dagRuns/{run}/taskInstances/{task_id}/logs/{try_number}")
        lines = []
        for item in data.get("content", []):
            lines.append(item.get("event", "") if isinstance(item, dict) else str(item))
        return lines

    def wait_for_run(self, dag_id: str, run_id: str, timeout: float = 300.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._check_running()
            run = self.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}")
            if run["state"] in ("success", "failed"):
                return run
            time.sleep(3)
        raise TimeoutError(f"run {run_id} of {dag_id} did not finish in {timeout:.0f} s")


def _killpg(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass
