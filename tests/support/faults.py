"""Fault injection: find a Spark job mid-flight from the outside (a cluster master's REST API and
the process table), kill what the fault kills with a real signal, and count what survived.

Used by ``tests/faults/`` and, through it, by ``scripts/faults.py``. Nothing here patches the code
under test: a fault is a signal to a real process (the task runner, an executor's Python worker,
the vector loader) at a moment observed from outside.

Every fault test records one :class:`FaultRecord`; with ``SPINDLE_FAULTS_RESULTS=<file>`` set, the
records are appended to that file as JSON lines (``scripts/faults.py`` prints them as a table).
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil

#: Which backends the fault tests run on: ``local`` unless the env var names more (comma list).
BACKENDS_ENV = "SPINDLE_FAULTS_BACKENDS"
#: Where fault records are appended (JSON lines); unset: not written.
RESULTS_ENV = "SPINDLE_FAULTS_RESULTS"
ALL_BACKENDS = ("local", "yandex", "yandex_spark", "emr", "emr_serverless")


def selected_backends() -> list[str]:
    names = [b.strip() for b in os.environ.get(BACKENDS_ENV, "local").split(",") if b.strip()]
    unknown = sorted(set(names) - set(ALL_BACKENDS))
    if unknown:
        raise ValueError(f"{BACKENDS_ENV}: unknown backend(s) {unknown}; known: {', '.join(ALL_BACKENDS)}")
    return names


@dataclass
class FaultRecord:
    """What one fault left behind, as the table in docs/reliability.md shows it."""

    fault: str
    backend: str
    run_state: str = ""
    clusters_left: int | None = None
    rows_expected: int | None = None
    rows: int | None = None
    rows_lost: int | None = None
    rows_duplicated: int | None = None
    cleanup_seconds: float | None = None
    notes: list[str] = field(default_factory=list)
    outcome: str = "error"  # "pass", "fail" or "error": set by the test's recorder fixture

    def count_rows(self, expected: int, ids: Iterable[Any]) -> None:
        ids = list(ids)
        distinct = len(set(ids))
        self.rows_expected, self.rows = expected, len(ids)
        self.rows_lost = expected - distinct
        self.rows_duplicated = len(ids) - distinct

    def note(self, text: str) -> None:
        self.notes.append(text)

    def write(self) -> None:
        path = os.environ.get(RESULTS_ENV)
        if path:
            with open(path, "a", encoding="utf-8") as out:
                out.write(json.dumps(asdict(self)) + "\n")


# --------------------------------------------------------------------------- the process table
def _cwd(proc: psutil.Process) -> str:
    try:
        return proc.cwd()
    except psutil.Error:
        return ""


def _cmdline(proc: psutil.Process) -> str:
    try:
        return " ".join(proc.cmdline())
    except psutil.Error:
        return ""


def _under(path: str, folder: Path) -> bool:
    root = str(folder.resolve())
    return path == root or path.startswith(root + os.sep)


def python_workers(folder: Path) -> list[psutil.Process]:
    """PySpark Python workers running in ``folder`` (a cluster's): the children that
    ``pyspark.daemon`` forks per task (same command line as their parent), not the daemon."""
    found = []
    for proc in psutil.process_iter():
        cmdline = _cmdline(proc)
        if "pyspark.daemon" not in cmdline and "pyspark/daemon.py" not in cmdline:
            continue
        try:
            parent = proc.parent()
        except psutil.Error:
            continue
        parent_cmdline = _cmdline(parent) if parent is not None else ""
        forked = "pyspark.daemon" in parent_cmdline or "pyspark/daemon.py" in parent_cmdline
        if forked and _under(_cwd(proc), folder):
            found.append(proc)
    return found


def executor_jvms(folder: Path) -> list[psutil.Process]:
    """Executor JVMs (``CoarseGrainedExecutorBackend``) running in ``folder``."""
    return [
        proc
        for proc in psutil.process_iter()
        if "CoarseGrainedExecutorBackend" in _cmdline(proc) and _under(_cwd(proc), folder)
    ]


def busiest(procs: list[psutil.Process], sample: float = 0.3) -> tuple[psutil.Process | None, float]:
    """The process of ``procs`` that used the most CPU over ``sample`` seconds, and its CPU %."""
    for proc in procs:
        try:
            proc.cpu_percent(None)
        except psutil.Error:
            pass
    time.sleep(sample)
    best, best_cpu = None, -1.0
    for proc in procs:
        try:
            cpu = proc.cpu_percent(None)
        except psutil.Error:
            continue
        if cpu > best_cpu:
            best, best_cpu = proc, cpu
    return best, best_cpu


# --------------------------------------------------------------------------- clusters
@dataclass
class RunningApp:
    """A Spark application seen active on a standalone master."""

    cluster_id: str
    folder: Path
    app_id: str
    name: str
    stages: list[str] = field(default_factory=list)  # the driver's active stages, where seen


def running_clusters(home: Path) -> list[dict[str, Any]]:
    """``state.json`` of every cluster under ``home`` that is RUNNING."""
    clusters = []
    for state in home.glob("*/state.json") if home.exists() else []:
        try:
            data = json.loads(state.read_text())
        except (OSError, ValueError):
            continue
        if data.get("status") == "RUNNING":
            clusters.append(data)
    return clusters


def active_app(homes: Iterable[Path], name_part: str) -> RunningApp | None:
    """The active application whose name contains ``name_part`` on any cluster under ``homes``."""
    for home in homes:
        for cluster in running_clusters(home):
            try:
                with urllib.request.urlopen(cluster["ui_url"] + "/json/", timeout=1) as response:
                    status = json.load(response)
            except (OSError, ValueError):
                continue
            for app in status.get("activeapps", []):
                if name_part in app.get("name", "") and app.get("state") == "RUNNING":
                    return RunningApp(cluster["cluster_id"], Path(cluster["folder"]), app["id"], app["name"])
    return None


def cluster_pids(home: Path, cluster_id: str) -> list[int]:
    """Live processes of one cluster (the hook's own census: daemons, executors, workers)."""
    from spindle.hooks.local_spark import LocalSparkClusterHook

    return LocalSparkClusterHook(home=str(home)).cluster_processes(cluster_id)


def driver_stages(host: str = "127.0.0.1", ports: Iterable[int] = range(4040, 4048)) -> dict[str, list[str]]:
    """{application name: names of its active stages} of every driver UI answering on this
    host (best effort: a driver whose UI is elsewhere is not seen)."""
    stages: dict[str, list[str]] = {}
    for port in ports:
        base = f"http://{host}:{port}/api/v1/applications"
        try:
            with urllib.request.urlopen(base, timeout=0.5) as response:
                apps = json.load(response)
            for app in apps:
                with urllib.request.urlopen(f"{base}/{app['id']}/stages?status=active", timeout=0.5) as response:
                    stages.setdefault(app.get("name", ""), []).extend(s.get("name", "?") for s in json.load(response))
        except (OSError, ValueError, KeyError):
            continue
    return stages


def sample_copies(source: Path, target: Path, copies: int) -> Path:
    """The Open Library sample ``copies`` times over, each copy's edition keys made unique
    (``/books/OL123M`` -> ``/books/OL9<copy>123M``): more rows for a job to be hit in the middle of."""
    lines = source.read_text().splitlines(keepends=True)
    with open(target, "w") as out:
        for copy in range(copies):
            for line in lines:
                out.write(line if copy == 0 else line.replace("/books/OL", f"/books/OL9{copy}"))
    return target


# --------------------------------------------------------------------------- injecting
class Injector:
    """A thread that polls ``find`` (every ``interval`` s, at most ``timeout`` s) until it returns
    a target, then calls ``act(target)`` once and records when. Then, if ``gone`` is given, polls
    it until it says True: the seconds from the fault to that moment are ``cleanup_seconds``.

    Use as a context manager around the run that the fault hits."""

    def __init__(
        self,
        find: Callable[[], Any],
        act: Callable[[Any], Any],
        gone: Callable[[Any], bool] | None = None,
        interval: float = 0.2,
        timeout: float = 600.0,
    ) -> None:
        self.find, self.act, self.gone = find, act, gone
        self.interval, self.timeout = interval, timeout
        self.target: Any = None
        self.acted: Any = None
        self.fired_at: float | None = None
        self.cleanup_seconds: float | None = None
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fault-injector", daemon=True)

    @property
    def fired(self) -> bool:
        return self.fired_at is not None

    def _run(self) -> None:
        try:
            deadline = time.monotonic() + self.timeout
            while not self._stop.is_set() and time.monotonic() < deadline:
                target = self.find()
                if target is not None:
                    self.target = target
                    self.fired_at = time.monotonic()
                    self.acted = self.act(target)
                    break
                self._stop.wait(self.interval)
            if self.fired and self.gone is not None:
                while time.monotonic() < deadline:
                    if self.gone(self.target):
                        self.cleanup_seconds = round(time.monotonic() - self.fired_at, 1)
                        return
                    if self._stop.is_set():  # the run is over: one last look, then give up
                        self._stop.clear()
                        deadline = min(deadline, time.monotonic() + 60)
                    time.sleep(0.25)
        except BaseException as err:  # noqa: BLE001 - reported by the test, not lost in a thread
            self.error = err

    def __enter__(self) -> Injector:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=90)


class SigtermGuard:
    """Keeps this process's SIGTERM handler as it was around a ``dag.test()`` run that a fault
    signals: the task runner installs its own handler (it calls the running task's ``on_kill``)
    and leaves it installed after the task. Until the first task installs it, a SIGTERM is only
    logged (a fault that fires too early must not end the test session)."""

    def __enter__(self) -> SigtermGuard:
        self.early: list[float] = []
        self._previous = signal.signal(signal.SIGTERM, lambda signum, frame: self.early.append(time.time()))
        return self

    def __exit__(self, *exc: object) -> None:
        signal.signal(signal.SIGTERM, self._previous)


def sigterm_self(_target: Any = None) -> int:
    """What the Airflow supervisor does to a task process it stops (marked failed or cleared in
    the UI, the worker shutting down): SIGTERM. Under ``dag.test()`` the task process is this one."""
    os.kill(os.getpid(), signal.SIGTERM)
    return os.getpid()


def kill(proc: psutil.Process, sig: int = signal.SIGKILL) -> dict[str, Any]:
    """Send ``sig`` to ``proc``; what was killed, for the record."""
    info = {"pid": proc.pid, "cmdline": _cmdline(proc)[:200], "signal": signal.Signals(sig).name}
    try:
        proc.send_signal(sig)
    except psutil.Error as err:
        info["error"] = repr(err)
    return info


# --------------------------------------------------------------------------- lanes
NIGHTLY = "spindle_nightly_books"
POINTER = "runs/spindle_nightly_books/latest.json"

#: Whole outputs of successful runs per backend (run id, books, embeddings): a later test reuses
#: them instead of running the DAG again; the row count is the clean count to compare with.
FINISHED: dict[str, dict[str, Any]] = {}


@dataclass
class Lane:
    """One backend's lane as the faults see it: where its clusters live on this machine, and
    the run conf (every English edition of > 100 pages of the first ``limit``, no carry-over)."""

    backend: str
    homes: list[Path]
    fakes: dict[str, Any] = field(default_factory=dict)
    input_path: str | None = None  # default: the DAG's (the bundled sample)

    def conf(self, **extra: Any) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "limit": None,
            "subject": "*",
            "max_age_years": None,
            "incremental": False,  # every row is embedded: no carry-over from an earlier run
            "embed_covers": False,
            "batch_size": 4,  # many small model calls: the job runs long enough to be hit mid-way
            **({"input_path": self.input_path} if self.input_path else {}),
            **extra,
        }

    def task(self, name: str) -> str:
        return name if self.backend == "local" else f"{self.backend}.{name}"

    def clusters(self) -> set[tuple[Path, str]]:
        return {(home, state.parent.name) for home in self.homes for state in home.glob("*/state.json")}

    def settle(self) -> None:
        """Until the fakes have acted on what the run asked (the AWS fake stops a terminated job
        flow's or a stopped application's cluster on its next poll)."""
        if "aws" in self.fakes:
            self.fakes["aws"].wait_idle(60)

    def clusters_left(self, before: set[tuple[Path, str]]) -> list[str]:
        """Clusters created since ``before`` that still have a live process (once settled)."""
        self.settle()
        return sorted(cid for home, cid in self.clusters() - before if cluster_pids(home, cid))

    def service_clusters(self) -> set[str]:
        """Ids of the clusters the backend's service still lists as live (the fakes' own APIs):
        what a cloud bill counts, whether or not a Spark process runs for it. Local: the clusters
        with a live process."""
        if self.backend == "local":
            return {cid for home, cid in self.clusters() if cluster_pids(home, cid)}
        if self.backend == "yandex":
            return set(self.fakes["yandex"].live_clusters)
        if self.backend == "yandex_spark":
            return set(self.fakes["yandex"].spark.live_clusters)
        self.settle()
        if self.backend == "emr":
            emr = self.fakes["aws"].moto.client("emr")
            live = ["STARTING", "BOOTSTRAPPING", "RUNNING", "WAITING", "TERMINATING"]
            return {c["Id"] for c in emr.list_clusters(ClusterStates=live)["Clusters"]}
        serverless = self.fakes["aws"].moto.client("emr-serverless")
        return {a["id"] for a in serverless.list_applications()["applications"] if a["state"] != "TERMINATED"}

    def pointer(self) -> bytes | None:
        from tests.support.airflow_env import WAREHOUSE
        from tests.support.cloud import WAREHOUSES, read_bytes

        root = str(WAREHOUSE) if self.backend == "local" else WAREHOUSES[self.backend][1]
        return read_bytes(f"{root}/{POINTER}")
