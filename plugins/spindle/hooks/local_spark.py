"""A local Spark standalone cluster, started from the pip-installed Spark, as an ephemeral resource.

``create_cluster`` starts a master and N workers, each as its own process group
(``spark-class`` through ``Popen(start_new_session=True)``), and returns once every worker is
registered with the master. Why not ``sbin/spark-daemon.sh``: it sleeps 2 s after each daemon it
starts, so master + 2 workers would cost 6 s of sleeping alone, and it hides which pid belongs to
which process group. A JVM we start ourselves is the group leader of its own session, so a later
``delete_cluster`` (from another task process) can stop the daemon *and* everything it spawned
(executors, their Python workers) with one ``killpg``.

Every cluster lives in ``$SPINDLE_HOME/clusters/<cluster_id>/``:

- ``state.json``: ports, URLs, pids, the sizing it was created with, ``status``;
- ``logs/``: one ``.out`` file per daemon (the daemon's stdout and stderr);
- ``work/``: the workers' work dir (executor logs, shipped files);
- ``tmp/``: Spark local dirs (shuffle, spills), removed on delete.

The daemons carry ``-Dspindle.cluster.id=<id>`` on their command line, so the processes of a
cluster can be found even when ``state.json`` is gone. ``delete_cluster`` is idempotent.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil
from airflow.sdk import BaseHook

from spindle.config import repo_root, spindle_home
from spindle.history import event_log_conf

MASTER_CLASS = "org.apache.spark.deploy.master.Master"
WORKER_CLASS = "org.apache.spark.deploy.worker.Worker"
CLUSTER_TAG = "-Dspindle.cluster.id="
_CLUSTER_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_MEMORY_RE = re.compile(r"^[1-9][0-9]*[kKmMgGtT]?$")
# The daemons do bookkeeping, not computation: a C1-only JIT and the serial GC start them
# ~40% faster. Executors are launched by the worker with their own JVM options.
_DAEMON_JAVA_OPTS = "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC"


class ClusterNotFound(LookupError):
    """No local cluster with this id exists (never created, or its folder was removed)."""


class ClusterError(RuntimeError):
    """A local cluster could not be started or stopped."""


@dataclass
class DaemonProcess:
    """One JVM daemon of a cluster; ``pid`` is also its process group id."""

    role: str
    pid: int
    port: int
    webui_port: int
    log: str
    # The process's creation time (``psutil.Process.create_time()``, seconds since the epoch):
    # tells a reused pid apart. 0: unknown, the pid is trusted as recorded.
    create_time: float = 0.0

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DaemonProcess:
        data = dict(data)
        # state.json written before psutil recorded ``start_ticks``: Linux clock ticks after
        # boot, which is what psutil's create_time() is derived from there.
        ticks = data.pop("start_ticks", None)
        if ticks and not data.get("create_time"):
            try:
                data["create_time"] = psutil.boot_time() + int(ticks) / os.sysconf("SC_CLK_TCK")
            except (OSError, ValueError, AttributeError):
                pass
        return cls(**data)


@dataclass
class LocalSparkCluster:
    """What a running (or deleted) local cluster looks like; persisted as ``state.json``."""

    cluster_id: str
    folder: str
    host: str
    master_url: str
    ui_url: str
    num_workers: int
    worker_cores: int
    worker_memory: str
    status: str = "STARTING"
    created_at: str = ""
    deleted_at: str | None = None
    # Who created it (``dag``, ``run``): the reaper's report names them.
    labels: dict[str, str] = field(default_factory=dict)
    # Where the jobs keep their Spark event logs (outlives the cluster); None: not kept.
    event_log_dir: str | None = None
    master: DaemonProcess | None = None
    workers: list[DaemonProcess] = field(default_factory=list)

    @property
    def total_cores(self) -> int:
        return self.num_workers * self.worker_cores

    def submit_conf(self) -> dict[str, str]:
        """Spark properties a driver needs to reach this cluster from this machine (and to keep
        its event log for the History Server, when the cluster keeps them)."""
        conf = {"spark.driver.host": self.host, "spark.driver.bindAddress": self.host}
        if self.event_log_dir:
            conf.update(event_log_conf(self.event_log_dir))
        return conf

    def app_ui_url(self, app_id: str | None) -> str:
        """The application's page on the master UI, or the master UI when the id is unknown."""
        return f"{self.ui_url}/app/?appId={app_id}" if app_id else self.ui_url

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LocalSparkCluster:
        data = dict(data)
        master = data.pop("master", None)
        workers = data.pop("workers", [])
        return cls(
            **data,
            master=DaemonProcess.from_dict(master) if master else None,
            workers=[DaemonProcess.from_dict(w) for w in workers],
        )


# --------------------------------------------------------------------------- process helpers
def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


# Processes are found, inspected and stopped through psutil (Linux and macOS alike). A
# recorded creation time is compared with this slack: on Linux psutil derives it from the boot
# time, which moves when the wall clock is stepped; a pid is never reused within a second.
_CREATE_TIME_SLACK_S = 1.0
_GONE = (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD)


def _process(pid: int, create_time: float = 0.0) -> psutil.Process | None:
    """The live (non-zombie) process ``pid``; None when it is gone, or when ``create_time`` is
    given and the pid now belongs to another process."""
    try:
        proc = psutil.Process(pid)
    except psutil.Error:
        return None
    try:
        if create_time and abs(proc.create_time() - create_time) > _CREATE_TIME_SLACK_S:
            return None
        if proc.status() in _GONE:
            return None
    except psutil.NoSuchProcess:
        return None
    except psutil.AccessDenied:
        # Someone else's process: alive, but never one we started.
        return None if create_time else proc
    return proc


def _create_time(pid: int) -> float:
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return 0.0


def _alive(pid: int) -> bool:
    return _process(pid) is not None


def _still_running(procs: Iterable[psutil.Process]) -> list[psutil.Process]:
    """The processes of ``procs`` that have not exited (zombies count as exited)."""
    running = []
    for proc in procs:
        try:
            if proc.is_running() and proc.status() not in _GONE:
                running.append(proc)
        except psutil.NoSuchProcess:
            continue
        except psutil.AccessDenied:
            running.append(proc)
    return running


def _reap(pid: int) -> None:
    """Collect the exit status of a child of ours that exited, so it does not linger as a zombie."""
    try:
        psutil.Process(pid).wait(timeout=0)
    except psutil.Error:  # gone, or still running (TimeoutExpired)
        pass


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _signal(procs: Iterable[psutil.Process], sig: int) -> None:
    for proc in procs:
        try:
            proc.send_signal(sig)  # psutil checks the pid still is this very process
        except psutil.Error:
            pass


def spark_home() -> Path:
    """``$SPARK_HOME``, or the pip-installed pyspark package (it ships bin/, jars/)."""
    env = os.environ.get("SPARK_HOME")
    if env:
        return Path(env)
    import pyspark

    return Path(pyspark.__file__).resolve().parent


def normalize_memory(value: str | int) -> str:
    """``2048`` (MiB) or ``"2g"``/``"512m"`` -> a Spark memory string."""
    if isinstance(value, int) or str(value).isdigit():
        return f"{int(value)}m"
    text = str(value).strip()
    if not _MEMORY_RE.match(text):
        raise ValueError(f"invalid memory size {value!r}: use MiB as an integer or e.g. '2g', '512m'")
    return text.lower()


def _utcnow() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


# --------------------------------------------------------------------------- the hook
class LocalSparkClusterHook(BaseHook):
    """Create, inspect and delete Spark standalone clusters on this machine.

    :param home: folder holding one sub-folder per cluster (default ``$SPINDLE_HOME/clusters``).
    :param host: address the daemons bind to and advertise.
    :param spark_home: the Spark the daemons run (default: :func:`spark_home`, i.e. ``$SPARK_HOME``
        or the pip-installed pyspark). The cloud fakes pass a separate "managed image" Spark.
    :param base_env: the environment the daemons start from instead of this process's (the cloud
        fakes pass a scrubbed node environment that shares nothing with the Airflow venv).
    :param spark_defaults: Spark properties written to the cluster's own ``conf/spark-defaults.conf``
        (its ``SPARK_CONF_DIR``, see :meth:`conf_dir`), as a managed image preconfigures them.
    """

    hook_name = "Spindle local Spark cluster"

    def __init__(
        self,
        home: str | os.PathLike | None = None,
        host: str = "127.0.0.1",
        spark_home: str | os.PathLike | None = None,
        base_env: dict[str, str] | None = None,
        spark_defaults: dict[str, str] | None = None,
    ) -> None:
        super().__init__()
        self.home = Path(home) if home else spindle_home() / "clusters"
        self.host = host
        self._spark_home = Path(spark_home) if spark_home else None
        self.base_env = dict(base_env) if base_env is not None else None
        self.spark_defaults = dict(spark_defaults or {})

    @property
    def spark_home(self) -> Path:
        """The Spark installation this hook's daemons run."""
        return self._spark_home or spark_home()

    def conf_dir(self, cluster_id: str) -> Path:
        """The cluster's ``SPARK_CONF_DIR`` (exists only when ``spark_defaults`` were given)."""
        return self.cluster_folder(cluster_id) / "conf"

    def _write_spark_defaults(self, cluster_id: str) -> Path | None:
        if not self.spark_defaults:
            return None
        conf = self.conf_dir(cluster_id)
        conf.mkdir(parents=True, exist_ok=True)
        lines = [f"{key} {value}" for key, value in sorted(self.spark_defaults.items())]
        (conf / "spark-defaults.conf").write_text("\n".join(lines) + "\n")
        return conf

    # ----------------------------------------------------------------- state
    def cluster_folder(self, cluster_id: str) -> Path:
        if not _CLUSTER_ID_RE.match(cluster_id or ""):
            raise ValueError(f"invalid cluster id {cluster_id!r}")
        return self.home / cluster_id

    def _write_state(self, cluster: LocalSparkCluster) -> None:
        folder = Path(cluster.folder)
        tmp = folder / "state.json.tmp"
        tmp.write_text(cluster.to_json())
        tmp.replace(folder / "state.json")

    def get_cluster(self, cluster_id: str) -> LocalSparkCluster:
        """The recorded state of a cluster; raises :class:`ClusterNotFound`."""
        state = self.cluster_folder(cluster_id) / "state.json"
        try:
            return LocalSparkCluster.from_dict(json.loads(state.read_text()))
        except FileNotFoundError:
            raise ClusterNotFound(f"no local Spark cluster {cluster_id!r} under {self.home}") from None

    def get_running_cluster(self, cluster_id: str) -> LocalSparkCluster:
        """Like :meth:`get_cluster`, but raises :class:`ClusterError` unless the master answers."""
        cluster = self.get_cluster(cluster_id)
        if cluster.status != "RUNNING":
            raise ClusterError(f"local Spark cluster {cluster_id!r} is {cluster.status}, not RUNNING")
        status = self._master_status(cluster.ui_url)
        if not status or status.get("status") != "ALIVE":
            raise ClusterError(f"the master of local Spark cluster {cluster_id!r} does not answer on {cluster.ui_url}")
        return cluster

    def master_status(self, cluster_id: str) -> dict[str, Any] | None:
        """The master's ``/json`` document (workers, active and completed apps), None if down."""
        return self._master_status(self.get_cluster(cluster_id).ui_url)

    @staticmethod
    def _master_status(ui_url: str, timeout: float = 2.0) -> dict[str, Any] | None:
        try:
            with urllib.request.urlopen(f"{ui_url}/json/", timeout=timeout) as response:
                return json.load(response)
        except (OSError, ValueError):
            return None

    def cluster_processes(self, cluster_id: str) -> list[int]:
        """Live pids that belong to the cluster: its daemons (tagged on their command line) and
        anything running inside its folder (executors, their Python workers)."""
        return sorted(proc.pid for proc in self._cluster_procs(cluster_id))

    def _cluster_procs(self, cluster_id: str) -> list[psutil.Process]:
        folder = str(self.cluster_folder(cluster_id).resolve())
        tag = f"{CLUSTER_TAG}{cluster_id} "
        me = os.getpid()
        found = []
        for proc in psutil.process_iter(["cmdline", "status"], ad_value=None):
            cmdline = " ".join(proc.info["cmdline"] or [])
            if proc.pid == me or not cmdline or proc.info["status"] in _GONE:
                continue
            ours = tag in cmdline + " "
            if not ours:
                try:
                    cwd = proc.cwd()
                except psutil.Error:
                    continue
                ours = cwd == folder or cwd.startswith(folder + os.sep)
            if ours:
                found.append(proc)
        return found

    # ----------------------------------------------------------------- create
    def _daemon_env(self, cluster_id: str, folder: Path) -> dict[str, str]:
        env = dict(os.environ) if self.base_env is None else dict(self.base_env)
        # The workers' executors must import spark_apps from the package shipped with each job,
        # never from the checkout: drop the repository from the inherited PYTHONPATH.
        repo = str(repo_root())
        kept = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and os.path.realpath(p) != repo]
        if kept:
            env["PYTHONPATH"] = os.pathsep.join(kept)
        else:
            env.pop("PYTHONPATH", None)
        env.update(
            {
                "SPARK_HOME": str(self.spark_home),
                "SPARK_LOCAL_IP": self.host,
                "SPARK_LOG_DIR": str(folder / "logs"),
                "SPARK_PID_DIR": str(folder),
                "SPARK_WORKER_DIR": str(folder / "work"),
                "SPARK_LOCAL_DIRS": str(folder / "tmp"),
                "SPARK_DAEMON_JAVA_OPTS": f"{CLUSTER_TAG}{cluster_id} {_DAEMON_JAVA_OPTS}",
                # No fixed-port REST submission server (6066): two clusters would clash.
                "SPARK_MASTER_OPTS": "-Dspark.master.rest.enabled=false",
                "PYSPARK_PYTHON": env.get("PYSPARK_PYTHON") or sys.executable,
            }
        )
        conf = self._write_spark_defaults(cluster_id)
        if conf is not None:
            env["SPARK_CONF_DIR"] = str(conf)
        return env

    def _spawn(
        self, role: str, args: list[str], folder: Path, env: dict[str, str], port: int, webui_port: int
    ) -> DaemonProcess:
        log = folder / "logs" / f"{role}.out"
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                [str(self.spark_home / "bin" / "spark-class"), *args],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=folder,
                start_new_session=True,  # its own process group: delete stops it and its children
                close_fds=True,
            )
        self.log.info("Started %s of the local Spark cluster: pid %s, log %s", role, proc.pid, log)
        return DaemonProcess(
            role=role,
            pid=proc.pid,
            port=port,
            webui_port=webui_port,
            log=str(log),
            create_time=_create_time(proc.pid),
        )

    def _check_alive(self, cluster: LocalSparkCluster) -> None:
        for daemon in [cluster.master, *cluster.workers]:
            if daemon and not _alive(daemon.pid):
                _reap(daemon.pid)
                tail = ""
                try:
                    tail = "\n".join(Path(daemon.log).read_text(errors="replace").splitlines()[-20:])
                except OSError:
                    pass
                raise ClusterError(f"the {daemon.role} of local Spark cluster {cluster.cluster_id} died:\n{tail}")

    def _wait(self, cluster: LocalSparkCluster, what: str, ready, deadline: float) -> dict[str, Any]:
        while True:
            self._check_alive(cluster)
            status = self._master_status(cluster.ui_url, timeout=1.0)
            if status is not None and ready(status):
                return status
            if time.monotonic() > deadline:
                raise ClusterError(f"local Spark cluster {cluster.cluster_id}: timed out waiting for {what}")
            time.sleep(0.1)

    def create_cluster(
        self,
        num_workers: int = 1,
        worker_cores: int = 1,
        worker_memory: str | int = "1g",
        cluster_id: str | None = None,
        cluster_id_prefix: str = "spindle-local",
        timeout: float = 120.0,
        labels: dict[str, str] | None = None,
        event_log_dir: str | os.PathLike | None = None,
    ) -> LocalSparkCluster:
        """Start a master and ``num_workers`` workers; return once all workers are registered.

        On any failure the processes started so far are stopped before the error is raised.
        ``labels`` (e.g. ``dag``, ``run``) are recorded in ``state.json``. ``event_log_dir``: a
        folder outside the cluster where its applications keep their event logs
        (:meth:`LocalSparkCluster.submit_conf`), for a History Server after the cluster is gone.
        """
        num_workers, worker_cores = int(num_workers), int(worker_cores)
        if num_workers < 1 or worker_cores < 1:
            raise ValueError("num_workers and worker_cores must be >= 1")
        memory = normalize_memory(worker_memory)
        if cluster_id is None:
            stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
            cluster_id = f"{cluster_id_prefix}-{stamp}-{uuid.uuid4().hex[:6]}"
        folder = self.cluster_folder(cluster_id)
        folder.mkdir(parents=True, exist_ok=False)
        for sub in ("logs", "work", "tmp"):
            (folder / sub).mkdir()
        master_port, ui_port = _free_port(self.host), _free_port(self.host)
        cluster = LocalSparkCluster(
            cluster_id=cluster_id,
            folder=str(folder.resolve()),
            host=self.host,
            master_url=f"spark://{self.host}:{master_port}",
            ui_url=f"http://{self.host}:{ui_port}",
            num_workers=num_workers,
            worker_cores=worker_cores,
            worker_memory=memory,
            created_at=_utcnow(),
            labels={str(k): str(v) for k, v in (labels or {}).items()},
            event_log_dir=str(Path(event_log_dir).resolve()) if event_log_dir else None,
        )
        if event_log_dir:
            Path(event_log_dir).mkdir(parents=True, exist_ok=True)
        self._write_state(cluster)
        env = self._daemon_env(cluster_id, folder)
        started = time.monotonic()
        deadline = started + timeout
        try:
            cluster.master = self._spawn(
                "master",
                [MASTER_CLASS, "--host", self.host, "--port", str(master_port), "--webui-port", str(ui_port)],
                folder,
                env,
                master_port,
                ui_port,
            )
            self._write_state(cluster)
            # Workers that knock before the master is elected leader get ignored and retry
            # only ~10 s later: start them once the master says ALIVE.
            self._wait(cluster, "the master", lambda s: s.get("status") == "ALIVE", deadline)
            for index in range(1, num_workers + 1):
                port, webui = _free_port(self.host), _free_port(self.host)
                args = [
                    WORKER_CLASS,
                    "--host",
                    self.host,
                    "--port",
                    str(port),
                    "--webui-port",
                    str(webui),
                    "--cores",
                    str(worker_cores),
                    "--memory",
                    memory,
                    "--work-dir",
                    str(folder / "work"),
                    cluster.master_url,
                ]
                cluster.workers.append(self._spawn(f"worker-{index}", args, folder, env, port, webui))
            self._write_state(cluster)
            worker_ports = {w.port for w in cluster.workers}

            def all_registered(status: dict[str, Any]) -> bool:
                alive = {w.get("port") for w in status.get("workers", []) if w.get("state") == "ALIVE"}
                return worker_ports <= alive

            self._wait(cluster, f"{num_workers} worker(s) to register", all_registered, deadline)
        except BaseException:
            self.log.error("Local Spark cluster %s failed to start; stopping what was started", cluster_id)
            cluster.status = "FAILED"
            self._write_state(cluster)
            self.delete_cluster(cluster_id)
            raise
        cluster.status = "RUNNING"
        self._write_state(cluster)
        self.log.info(
            "Local Spark cluster %s is up in %.1f s: master %s, UI %s, %d worker(s) x %d core(s) x %s",
            cluster_id,
            time.monotonic() - started,
            cluster.master_url,
            cluster.ui_url,
            num_workers,
            worker_cores,
            memory,
        )
        return cluster

    # ----------------------------------------------------------------- delete
    def _own_daemons(self, cluster: LocalSparkCluster | None) -> list[tuple[DaemonProcess, psutil.Process]]:
        """The recorded daemons that are still the very processes we started (pid not reused)."""
        if cluster is None:
            return []
        owned = []
        for daemon in [cluster.master, *cluster.workers]:
            proc = _process(daemon.pid, daemon.create_time) if daemon else None
            if proc is not None:
                owned.append((daemon, proc))
        return owned

    def delete_cluster(self, cluster_id: str, timeout: float = 30.0) -> bool:
        """Stop every process of the cluster and verify they are gone. Idempotent.

        Workers first (they kill their executors on SIGTERM), then the master; whatever is
        still alive after ``timeout`` / 2 s gets SIGKILL. Returns True when something was
        stopped, False when the cluster was already gone. Raises :class:`ClusterError` if a
        process survives SIGKILL.
        """
        folder = self.cluster_folder(cluster_id)
        try:
            cluster: LocalSparkCluster | None = self.get_cluster(cluster_id)
        except ClusterNotFound:
            cluster = None
        started = time.monotonic()
        daemons = self._own_daemons(cluster)
        leftovers = self._cluster_procs(cluster_id) if folder.exists() or daemons else []
        if not daemons and not leftovers:
            self.log.info("Local Spark cluster %s is already gone", cluster_id)
            if cluster is not None and cluster.status != "DELETED":
                self._mark_deleted(cluster)
            return False

        procs = list(dict.fromkeys([proc for _, proc in daemons] + leftovers))
        self.log.info("Stopping local Spark cluster %s: pids %s", cluster_id, sorted(p.pid for p in procs))
        workers = [d for d, _ in daemons if d.role != "master"]
        masters = [d for d, _ in daemons if d.role == "master"]
        for daemon in workers + masters:
            _signal_group(daemon.pid, signal.SIGTERM)
        _signal(leftovers, signal.SIGTERM)

        soft_deadline = time.monotonic() + max(timeout / 2, 2.0)
        remaining = self._wait_gone(cluster_id, procs, soft_deadline)
        if remaining:
            self.log.warning(
                "Local Spark cluster %s: SIGKILL to pids %s that ignored SIGTERM",
                cluster_id,
                sorted(p.pid for p in remaining),
            )
            for daemon, proc in daemons:
                if _still_running([proc]):
                    _signal_group(daemon.pid, signal.SIGKILL)
            _signal(remaining, signal.SIGKILL)
            remaining = self._wait_gone(cluster_id, remaining, time.monotonic() + max(timeout / 2, 2.0))
        if remaining:
            pids = sorted(p.pid for p in remaining)
            raise ClusterError(f"local Spark cluster {cluster_id}: processes {pids} survived SIGKILL")

        shutil.rmtree(folder / "tmp", ignore_errors=True)
        if cluster is not None:
            self._mark_deleted(cluster)
        self.log.info(
            "Local Spark cluster %s deleted in %.1f s; logs kept in %s",
            cluster_id,
            time.monotonic() - started,
            folder / "logs",
        )
        return True

    def _wait_gone(self, cluster_id: str, procs: list[psutil.Process], deadline: float) -> list[psutil.Process]:
        """Wait until ``procs`` and any other process of the cluster have exited (``wait_procs``
        also reaps those that are our children); what is still running at ``deadline``."""
        while True:
            step = max(0.0, min(0.5, deadline - time.monotonic()))
            _, alive = psutil.wait_procs(procs, timeout=step)
            procs = list(dict.fromkeys(_still_running(alive) + self._cluster_procs(cluster_id)))
            if not procs or time.monotonic() > deadline:
                return procs
            if not alive:
                time.sleep(0.1)  # only newcomers from the scan: wait_procs has not waited at all

    def _mark_deleted(self, cluster: LocalSparkCluster) -> None:
        cluster.status = "DELETED"
        cluster.deleted_at = _utcnow()
        try:
            self._write_state(cluster)
        except OSError:
            pass

    def list_clusters(self) -> list[LocalSparkCluster]:
        """Every cluster that has a folder here, running or not."""
        if not self.home.exists():
            return []
        clusters = []
        for state in sorted(self.home.glob("*/state.json")):
            try:
                clusters.append(LocalSparkCluster.from_dict(json.loads(state.read_text())))
            except (OSError, ValueError, TypeError):
                continue
        return clusters
