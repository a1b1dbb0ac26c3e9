"""What a managed Spark service does with a submitted job, done on this machine.

Both cloud fakes hand a job here: its files are fetched from object storage (``s3://``,
``s3a://``, ``s3n://`` through boto3 against the configured S3 endpoint, e.g. moto) into the
job's folder, then ``spark-submit`` runs against a local Spark standalone cluster (the
airflow side's :class:`spindle.hooks.local_spark.LocalSparkClusterHook`) and the driver's
output goes to ``driver.log``. Nothing is simulated: the job runs, and its exit code decides
its state.

Cluster deploy mode is emulated in client mode: ``spark.yarn.appMasterEnv.X=V`` properties
become the driver's environment, as YARN would give them to a driver in the application master.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

REPO = Path(__file__).resolve().parents[2]
_S3_SCHEMES = ("s3", "s3a", "s3n")
_APP_MASTER_ENV = "spark.yarn.appMasterEnv."
# Properties that only mean something on YARN/the real service; dropped in client mode here.
_DROP_PROPERTIES = ("spark.submit.deployMode", "spark.yarn.")


def spark_submit_binary() -> str:
    import pyspark

    return str(Path(pyspark.__file__).parent / "bin" / "spark-submit")


@dataclass
class S3Settings:
    """Where ``s3://`` URIs are read from (and logs written to)."""

    endpoint_url: str
    access_key: str = "testing"
    secret_key: str = "testing"
    region: str = "us-east-1"

    def client(self):
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name=self.region,
        )


@dataclass
class SparkJob:
    """A PySpark job as a managed service receives it."""

    main: str
    args: Sequence[str] = ()
    py_files: Sequence[str] = ()
    files: Sequence[str] = ()
    archives: Sequence[str] = ()
    jars: Sequence[str] = ()
    properties: Mapping[str, str] = field(default_factory=dict)
    name: str = "spark-job"


class JobFailed(RuntimeError):
    pass


def split_fragment(uri: str) -> tuple[str, str | None]:
    if "#" in uri:
        base, alias = uri.split("#", 1)
        return base, alias
    return uri, None


def fetch(uri: str, folder: Path, s3: S3Settings | None) -> str:
    """A local path for ``uri`` (downloaded into ``folder`` when it is in object storage)."""
    parsed = urlparse(uri)
    if parsed.scheme in _S3_SCHEMES:
        if s3 is None:
            raise JobFailed(f"cannot fetch {uri}: no object storage endpoint configured")
        key = parsed.path.lstrip("/")
        target = folder / parsed.netloc / key
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            s3.client().download_file(parsed.netloc, key, str(target))
        except Exception as err:  # botocore's errors: the job fails like on the service
            raise JobFailed(f"cannot fetch {uri}: {err}") from None
        return str(target)
    if parsed.scheme == "file":
        return parsed.path
    if parsed.scheme in ("", None):
        return uri
    raise JobFailed(f"unsupported URI scheme in {uri} (this fake reads s3://, s3a://, file:// and local paths)")


def _fetch_all(uris: Iterable[str], folder: Path, s3: S3Settings | None, keep_alias: bool) -> list[str]:
    out = []
    for uri in uris:
        base, alias = split_fragment(uri)
        local = fetch(base, folder, s3)
        out.append(f"{local}#{alias}" if keep_alias and alias else local)
    return out


def build_command(job: SparkJob, master: str, folder: Path, s3: S3Settings | None) -> tuple[list[str], dict[str, str]]:
    """spark-submit command line and extra driver environment for ``job``."""
    env: dict[str, str] = {}
    cmd = [spark_submit_binary(), "--master", master, "--deploy-mode", "client", "--name", job.name]
    python = os.environ.get("PYSPARK_PYTHON") or sys.executable
    conf = {
        "spark.pyspark.python": python,
        "spark.pyspark.driver.python": python,
        "spark.ui.showConsoleProgress": "false",
        "spark.driver.host": "127.0.0.1",
        "spark.driver.bindAddress": "127.0.0.1",
    }
    for key, value in job.properties.items():
        if key.startswith(_APP_MASTER_ENV):
            env[key[len(_APP_MASTER_ENV) :]] = str(value)
        elif key.startswith(_DROP_PROPERTIES) or ":" in key:  # "pip:pkg" style cluster props
            continue
        else:
            conf[key] = str(value)
    for key, value in conf.items():
        cmd += ["--conf", f"{key}={value}"]
    if job.py_files:
        cmd += ["--py-files", ",".join(_fetch_all(job.py_files, folder, s3, keep_alias=False))]
    if job.files:
        cmd += ["--files", ",".join(_fetch_all(job.files, folder, s3, keep_alias=True))]
    if job.archives:
        cmd += ["--archives", ",".join(_fetch_all(job.archives, folder, s3, keep_alias=True))]
    if job.jars:
        cmd += ["--jars", ",".join(_fetch_all(job.jars, folder, s3, keep_alias=False))]
    cmd.append(fetch(job.main, folder, s3))
    cmd += [str(a) for a in job.args]
    return cmd, env


def driver_env(extra: Mapping[str, str]) -> dict[str, str]:
    """The driver's environment: this process's, minus the repository on PYTHONPATH (the job
    must import ``spark_apps`` from what was shipped, as on a real cluster), plus ``extra``."""
    env = dict(os.environ)
    repo = os.path.realpath(REPO)
    paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and os.path.realpath(p) != repo]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env.setdefault("PYSPARK_PYTHON", sys.executable)
    env.update(extra)
    return env


class RunningJob:
    """One spark-submit process; ``wait()`` returns its exit code."""

    def __init__(self, job: SparkJob, master: str, folder: Path, s3: S3Settings | None,
                 env: Mapping[str, str] | None = None) -> None:  # fmt: skip
        self.folder = folder
        self.log_path = folder / "driver.log"
        folder.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._cancelled = False
        self.proc: subprocess.Popen | None = None
        with open(self.log_path, "ab") as log:
            try:
                cmd, driver_extra = build_command(job, master, folder / "fetched", s3)
            except JobFailed as err:
                log.write(f"ERROR {err}\n".encode())
                self.early_exit = 1
                return
            self.early_exit = None
            log.write(("+ " + shlex.join(cmd) + "\n").encode())
            log.flush()
            self.proc = subprocess.Popen(
                cmd, cwd=folder, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=driver_env({**driver_extra, **(env or {})}), start_new_session=True,
            )  # fmt: skip

    def wait(self, timeout: float | None = None) -> int:
        if self.proc is None:
            return int(self.early_exit or 1)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.cancel()
            with open(self.log_path, "ab") as log:
                log.write(f"ERROR job timed out after {timeout} s\n".encode())
            return 124

    def cancel(self) -> None:
        with self._lock:
            self._cancelled = True
            if self.proc is not None and self.proc.poll() is None:
                for sig in (signal.SIGTERM, signal.SIGKILL):
                    try:
                        os.killpg(self.proc.pid, sig)
                    except ProcessLookupError:
                        break
                    try:
                        self.proc.wait(timeout=10)
                        break
                    except subprocess.TimeoutExpired:
                        continue

    @property
    def cancelled(self) -> bool:
        return self._cancelled

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""


class LocalClusters:
    """Local Spark standalone clusters standing in for the service's clusters (the airflow
    side's hook, so clusters look and are cleaned up exactly like the local backend's)."""

    def __init__(self, home: Path, worker_cores: int = 2, worker_memory: str = "2g") -> None:
        if str(REPO / "plugins") not in sys.path:
            sys.path.insert(0, str(REPO / "plugins"))
        from spindle.hooks.local_spark import LocalSparkClusterHook

        self.hook = LocalSparkClusterHook(home=str(home))
        self.worker_cores = worker_cores
        self.worker_memory = worker_memory
        self._ids: set[str] = set()
        self._lock = threading.Lock()

    def start(self, prefix: str, num_workers: int = 1):
        cluster = self.hook.create_cluster(
            num_workers=max(1, num_workers), worker_cores=self.worker_cores,
            worker_memory=self.worker_memory, cluster_id_prefix=prefix, timeout=120,
        )  # fmt: skip
        with self._lock:
            self._ids.add(cluster.cluster_id)
        return cluster

    def stop(self, local_id: str) -> None:
        self.hook.delete_cluster(local_id, timeout=30)
        with self._lock:
            self._ids.discard(local_id)

    def stop_all(self) -> None:
        with self._lock:
            ids = list(self._ids)
        for local_id in ids:
            try:
                self.stop(local_id)
            except Exception:  # best effort at shutdown; the test's process check reports leftovers
                pass

    @property
    def running(self) -> list[str]:
        with self._lock:
            return sorted(self._ids)
