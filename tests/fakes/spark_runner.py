"""What a managed Spark service does with a submitted job, done on this machine, on clusters that
share nothing with the Airflow machine.

Both cloud fakes hand a job here. The job runs for real, with ``spark-submit`` of the fake
"managed image" (:mod:`tests.fakes.cluster_image`: its own Python and Spark 3.5, no torch, no
Airflow) against a local Spark standalone cluster started from that image with a scrubbed node
environment. A job reaches the cluster only the way it would on the real service:

- **Object storage only.** Its files come from ``s3://``/``s3a://``/``s3n://`` (localized through
  a node-level cache keyed by the object's ETag, as YARN NodeManagers cache public resources); an
  absolute local path or ``file://`` URI anywhere in the job fails it (the cluster cannot read the
  Airflow machine's disk). Spark on the nodes reads and writes ``s3a://`` (and ``s3://`` on
  EMR) itself: the cluster's ``spark-defaults.conf`` points S3A at the fake's object storage.
- **Only the service's own knobs.** :class:`ServiceRules` say which properties set the driver's
  environment (``spark.yarn.appMasterEnv.*`` in YARN cluster mode,
  ``spark.emr-serverless.driverEnv.*`` on EMR Serverless) and which deploy mode applies. In
  cluster mode the driver runs in a "container" folder where the archives are linked under their
  ``#alias`` (YARN localization); in client mode it runs on the master node with the image's
  environment. Executors get archives and ``spark.executorEnv.*`` from Spark itself; the PySpark
  worker executable is the driver's ``PYSPARK_PYTHON`` (a relative ``./environment/bin/python``
  resolves in the executor's work dir). Nothing sets ``spark.pyspark.python`` for the job.
- **Logs as the services keep them.** The driver's stdout and stderr are separate files (plus one
  merged in arrival order); :meth:`RunningJob.submit_log_text` is what the ``spark-submit`` client
  printed (in cluster mode: YARN's submission and application reports).

Executors receive each archive as a tiny "pointer" tarball of symlinks into the node cache (what
a YARN container's localized resources are: links into the NodeManager's cache), so a ~1 GB
packed environment is unpacked once per node, not once per driver and executor.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tarfile
import threading
import time
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from tests.fakes.cluster_image import ClusterImage, ensure_cluster_image

REPO = Path(__file__).resolve().parents[2]
_S3_SCHEMES = ("s3", "s3a", "s3n")
S3A_FILESYSTEM = "org.apache.hadoop.fs.s3a.S3AFileSystem"
#: Properties that would break (or mean nothing on) the local standalone cluster: dropped after
#: the service rules have read what they need from them.
_STANDALONE_DROPS = ("spark.submit.deployMode", "spark.master", "spark.yarn.", "spark.emr-serverless.")
_LIST_PROPERTIES = {
    "spark.submit.pyFiles": "py_files",
    "spark.files": "files",
    "spark.archives": "archives",
    "spark.jars": "jars",
}
_YARN_LIST_PROPERTIES = {
    **_LIST_PROPERTIES,
    "spark.yarn.dist.pyFiles": "py_files",
    "spark.yarn.dist.files": "files",
    "spark.yarn.dist.archives": "archives",
    "spark.yarn.dist.jars": "jars",
}
LOCAL_PATH_ERROR = (
    "local path {path} in {where}: a managed cluster cannot read the Airflow machine's files; "
    "stage it to object storage"
)


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

    def s3a_defaults(self) -> dict[str, str]:
        """Cluster-level S3A settings (what the image + instance role / service account give)."""
        return {
            "spark.hadoop.fs.s3a.endpoint": self.endpoint_url,
            "spark.hadoop.fs.s3a.path.style.access": "true",
            "spark.hadoop.fs.s3a.connection.ssl.enabled": "false",
            "spark.hadoop.fs.s3a.access.key": self.access_key,
            "spark.hadoop.fs.s3a.secret.key": self.secret_key,
        }


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
    """The job fails (as it would on the service) before its driver starts."""


def split_fragment(uri: str) -> tuple[str, str | None]:
    if "#" in uri:
        base, alias = uri.split("#", 1)
        return base, alias
    return uri, None


# --------------------------------------------------------------------------- service rules
@dataclass(frozen=True)
class ServiceRules:
    """The knobs one managed service honours.

    :param driver_env_prefix: properties ``<prefix>X=V`` that become the driver's environment
        (in cluster mode only: on YARN client mode they set the AM's, not the driver's).
    :param list_properties: properties that carry resource lists (py-files, archives...).
    :param always_cluster_mode: the driver always runs in a container (EMR Serverless);
        otherwise ``spark.submit.deployMode`` / ``--deploy-mode`` decides, client by default.
    """

    name: str
    driver_env_prefix: str
    list_properties: Mapping[str, str]
    always_cluster_mode: bool = False

    def cluster_mode(self, properties: Mapping[str, str]) -> bool:
        return self.always_cluster_mode or properties.get("spark.submit.deployMode") == "cluster"


YARN = ServiceRules("yarn", "spark.yarn.appMasterEnv.", _YARN_LIST_PROPERTIES)
EMR_SERVERLESS = ServiceRules(
    "emr-serverless", "spark.emr-serverless.driverEnv.", _LIST_PROPERTIES, always_cluster_mode=True
)


@dataclass
class EffectiveJob:
    """A job as the service understands it: resource lists, Spark properties for the cluster,
    the driver's extra environment and its deploy mode."""

    lists: dict[str, list[str]]
    properties: dict[str, str]
    driver_env: dict[str, str]
    cluster_mode: bool


def interpret(job: SparkJob, rules: ServiceRules, cluster_defaults: Mapping[str, str] | None = None) -> EffectiveJob:
    """Read ``job`` with the service's rules; drop what would break standalone mode.

    ``cluster_defaults`` (the cluster's ``spark-defaults.conf``) count for the deploy mode and the
    driver's environment as on the service; the job's own properties win.
    """
    lists = {name: list(getattr(job, name)) for name in ("py_files", "files", "archives", "jars")}
    props: dict[str, str] = {}
    defaults = dict(cluster_defaults or {})
    prefix = rules.driver_env_prefix
    driver_env = {k[len(prefix) :]: v for k, v in defaults.items() if k.startswith(prefix)}
    for key, value in job.properties.items():
        value = str(value)
        if key in rules.list_properties:
            lists[rules.list_properties[key]] += [v for v in value.split(",") if v]
        elif key.startswith(prefix):
            driver_env[key[len(prefix) :]] = value
        elif ":" not in key:  # "pip:pkg" / "spark:x" are cluster properties, not job properties
            props[key] = value
    cluster_mode = rules.cluster_mode({**defaults, **props})
    props = {k: v for k, v in props.items() if not k.startswith(_STANDALONE_DROPS)}
    return EffectiveJob(lists, props, driver_env if cluster_mode else {}, cluster_mode)


def _is_local_path(value: str) -> bool:
    return value.startswith(("/", "file:"))


def refuse_local_paths(job: SparkJob, lists: Mapping[str, Sequence[str]]) -> None:
    """Raise :class:`JobFailed` for any absolute local path / ``file:`` URI in the job."""
    candidates = [("main python file", job.main)]
    for arg in job.args:
        arg = str(arg)
        value = arg.split("=", 1)[1] if arg.startswith("-") and "=" in arg else arg
        candidates.append(("job arguments", value))
    for name, values in lists.items():
        candidates += [(name.replace("_", "-"), split_fragment(v)[0]) for v in values]
    for where, value in candidates:
        if _is_local_path(value):
            raise JobFailed(LOCAL_PATH_ERROR.format(path=value, where=where))


# --------------------------------------------------------------------------- node cache
class LocalizationCache:
    """Node-level cache of resources localized from object storage, keyed by the object's ETag
    (a YARN NodeManager keeps public resources the same way): an environment archive is
    downloaded and unpacked once, then linked into every container that asks for it."""

    # Per process, not per instance: two fakes may share one cache folder.
    _locks: dict[str, threading.Lock] = {}
    _guard = threading.Lock()

    def __init__(self, root: Path, s3: S3Settings | None) -> None:
        self.root = Path(root)
        self.s3 = s3

    def _lock(self, key: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(f"{self.root.resolve()}:{key}", threading.Lock())

    def _object(self, uri: str) -> tuple[str, str, str]:
        """(bucket, key, cache key) of an object-storage URI; JobFailed if it cannot be read."""
        parsed = urlparse(uri)
        if parsed.scheme not in _S3_SCHEMES:
            raise JobFailed(f"unsupported URI scheme in {uri} (this fake reads s3://, s3a://, s3n://)")
        if self.s3 is None:
            raise JobFailed(f"cannot fetch {uri}: no object storage endpoint configured")
        bucket, key = parsed.netloc, parsed.path.lstrip("/")
        try:
            etag = self.s3.client().head_object(Bucket=bucket, Key=key)["ETag"].strip('"')
        except Exception as err:  # botocore's errors: the job fails like on the service
            raise JobFailed(f"cannot fetch {uri}: {err}") from None
        digest = hashlib.sha256(f"{bucket}/{key}".encode()).hexdigest()[:16]
        return bucket, key, f"{digest}-{etag[:32]}"

    def file(self, uri: str) -> Path:
        """A local copy of the object at ``uri``."""
        bucket, key, cache_key = self._object(uri)
        target = self.root / "files" / cache_key / (key.rsplit("/", 1)[-1] or "object")
        with self._lock(cache_key):
            if not target.exists():
                target.parent.mkdir(parents=True, exist_ok=True)
                partial = target.with_name(target.name + ".part")
                try:
                    self.s3.client().download_file(bucket, key, str(partial))
                except Exception as err:
                    raise JobFailed(f"cannot fetch {uri}: {err}") from None
                partial.rename(target)
        return target

    def archive(self, uri: str) -> Path:
        """The unpacked contents of the archive at ``uri`` (zip, jar, tar, tar.gz, tgz)."""
        source = self.file(uri)
        target = self.root / "archives" / source.parent.name
        with self._lock("unpack:" + target.name):
            if not target.exists():
                partial = target.with_name(target.name + ".part")
                shutil.rmtree(partial, ignore_errors=True)
                partial.mkdir(parents=True)
                _unpack(source, partial, uri)
                partial.rename(target)
        return target

    def pointer(self, unpacked: Path) -> Path:
        """A ``.tar.gz`` of symlinks to the top-level entries of ``unpacked``: what executors
        "unpack" instead of the real archive (Spark unpacks ``.tar.gz`` with the system tar,
        which keeps links)."""
        target = self.root / "pointers" / f"{unpacked.name}.tar.gz"
        with self._lock("pointer:" + unpacked.name):
            if not target.exists():
                target.parent.mkdir(parents=True, exist_ok=True)
                partial = target.with_name(target.name + ".part")
                with tarfile.open(partial, "w:gz") as tar:
                    for entry in sorted(unpacked.iterdir()):
                        link = tarfile.TarInfo(entry.name)
                        link.type, link.linkname = tarfile.SYMTYPE, str(entry.resolve())
                        tar.addfile(link)
                partial.rename(target)
        return target


def _unpack(source: Path, dest: Path, uri: str) -> None:
    """Unpack like Spark/YARN do, by the file name's extension."""
    name = source.name.lower()
    if name.endswith((".tar.gz", ".tgz", ".tar")):
        done = subprocess.run(["tar", "-xf", str(source), "-C", str(dest)], capture_output=True, text=True)
        if done.returncode != 0:
            raise JobFailed(f"cannot unpack {uri}: {done.stderr.strip()}")
    elif name.endswith((".zip", ".jar")):
        with zipfile.ZipFile(source) as archive:
            for info in archive.infolist():
                path = archive.extract(info, dest)
                mode = info.external_attr >> 16
                if mode & 0o777:
                    os.chmod(path, mode & 0o777)
    else:
        raise JobFailed(f"cannot unpack {uri}: not a .zip, .jar, .tar, .tar.gz or .tgz archive")


# --------------------------------------------------------------------------- clusters
@dataclass
class NodeProfile:
    """What a service puts on every node of its clusters: cluster-level Spark defaults (the
    image's ``spark-defaults.conf``) and the node environment (instance role, metadata...)."""

    spark_defaults: dict[str, str] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)


@dataclass
class FakeClusterNodes:
    """A running fake cluster as its nodes see it: the local standalone cluster, its
    ``SPARK_CONF_DIR``, the node environment drivers start from, and YARN-style app ids."""

    local: Any  # spindle.hooks.local_spark.LocalSparkCluster
    conf_dir: Path | None
    env: dict[str, str]
    image: ClusterImage
    spark_defaults: dict[str, str] = field(default_factory=dict)
    started_ms: int = field(default_factory=lambda: int(time.time() * 1000))
    _apps: Any = field(default_factory=lambda: itertools.count(1))

    @property
    def cluster_id(self) -> str:
        return self.local.cluster_id

    @property
    def master_url(self) -> str:
        return self.local.master_url

    @property
    def ui_url(self) -> str:
        return self.local.ui_url

    def next_application_id(self) -> str:
        """``application_<cluster timestamp>_<NNNN>``, as YARN's ResourceManager numbers them."""
        return f"application_{self.started_ms}_{next(self._apps):04d}"


class LocalClusters:
    """Local Spark standalone clusters standing in for the service's clusters: the Airflow
    side's hook (so clusters are found and cleaned up like the local backend's), but started
    from the fake managed image with a node environment built from scratch.

    :param image: the managed image (default: :func:`ensure_cluster_image`, built if missing).
    """

    def __init__(
        self, home: Path, worker_cores: int = 2, worker_memory: str = "2g", image: ClusterImage | None = None
    ) -> None:
        if str(REPO / "plugins") not in sys.path:
            sys.path.insert(0, str(REPO / "plugins"))
        from spindle.hooks.local_spark import LocalSparkClusterHook

        self.home = Path(home)
        self.image = image or ensure_cluster_image()
        self.node_home = self.home / ".node-home"  # never a cluster id: those start alphanumeric
        self.hook = LocalSparkClusterHook(
            home=str(self.home), spark_home=self.image.spark_home, base_env=self.image.env(self.node_home)
        )
        self.worker_cores = worker_cores
        self.worker_memory = worker_memory
        self._nodes: dict[str, FakeClusterNodes] = {}
        self._lock = threading.Lock()

    def start(self, prefix: str, num_workers: int = 1, profile: NodeProfile | None = None) -> FakeClusterNodes:
        from spindle.hooks.local_spark import LocalSparkClusterHook

        profile = profile or NodeProfile()
        self.node_home.mkdir(parents=True, exist_ok=True)
        env = self.image.env(self.node_home, profile.env)
        hook = LocalSparkClusterHook(
            home=str(self.home), spark_home=self.image.spark_home, base_env=env, spark_defaults=profile.spark_defaults
        )
        local = hook.create_cluster(
            num_workers=max(1, num_workers),
            worker_cores=self.worker_cores,
            worker_memory=self.worker_memory,
            cluster_id_prefix=prefix,
            timeout=120,
        )
        conf_dir = hook.conf_dir(local.cluster_id) if profile.spark_defaults else None
        nodes = FakeClusterNodes(local, conf_dir, env, self.image, dict(profile.spark_defaults))
        with self._lock:
            self._nodes[local.cluster_id] = nodes
        return nodes

    def stop(self, local_id: str) -> None:
        self.hook.delete_cluster(local_id, timeout=30)
        with self._lock:
            self._nodes.pop(local_id, None)

    def stop_all(self) -> None:
        with self._lock:
            ids = list(self._nodes)
        for local_id in ids:
            try:
                self.stop(local_id)
            except Exception:  # best effort at shutdown; the test's process check reports leftovers
                pass

    @property
    def running(self) -> list[str]:
        with self._lock:
            return sorted(self._nodes)


# --------------------------------------------------------------------------- one driver
@dataclass
class DriverLaunch:
    """How the driver process starts: command, environment, working directory."""

    cmd: list[str]
    env: dict[str, str]
    cwd: Path


def _link(target: Path, link: Path) -> None:
    if link.is_symlink() or link.exists():
        return
    link.symlink_to(target)


def plan_driver(
    job: SparkJob,
    effective: EffectiveJob,
    nodes: FakeClusterNodes,
    folder: Path,
    cache: LocalizationCache,
    extra_env: Mapping[str, str] | None = None,
) -> DriverLaunch:
    """Localize the job's resources and work out the driver's command, environment and cwd.

    Cluster mode: the cwd is a "container" with the archives (and files) linked under their
    alias; the environment gets the service's driver-env properties. Client mode: a plain
    folder on the master node and the node's environment as it is.
    """
    cwd = folder / ("container" if effective.cluster_mode else "master-node")
    cwd.mkdir(parents=True, exist_ok=True)
    cmd = [str(nodes.image.spark_submit), "--master", nodes.master_url, "--deploy-mode", "client", "--name", job.name]
    conf = {**effective.properties, "spark.ui.showConsoleProgress": "false", **nodes.local.submit_conf()}
    for key, value in conf.items():
        cmd += ["--conf", f"{key}={value}"]
    cmd += _resource_options(effective.lists, cache, cwd, effective.cluster_mode)
    cmd.append(_fetch(job.main, cache))
    cmd += [str(a) for a in job.args]
    env = {**nodes.env, **(extra_env or {}), **effective.driver_env, "SPARK_LOCAL_DIRS": str(folder / "tmp")}
    if nodes.conf_dir is not None:
        env["SPARK_CONF_DIR"] = str(nodes.conf_dir)
    return DriverLaunch(cmd, env, cwd)


def _resource_options(
    lists: Mapping[str, Sequence[str]], cache: LocalizationCache, cwd: Path, in_container: bool
) -> list[str]:
    """``--py-files``/``--files``/``--archives``/``--jars`` with node-local copies."""
    options = []
    if lists["py_files"]:
        options += ["--py-files", ",".join(_fetch(u, cache) for u in lists["py_files"])]
    if lists["files"]:
        options += ["--files", ",".join(_localize_files(lists["files"], cache, cwd, in_container))]
    if lists["archives"]:
        options += ["--archives", ",".join(_localize_archives(lists["archives"], cache, cwd, in_container))]
    if lists["jars"]:
        options += ["--jars", ",".join(_fetch(u, cache) for u in lists["jars"])]
    return options


def _fetch(uri: str, cache: LocalizationCache) -> str:
    """A local copy of an object-storage URI; a relative path stays as it is (the driver's
    cwd resolves it, or spark-submit fails on it, as on the service)."""
    return str(cache.file(uri)) if urlparse(uri).scheme else uri


def _localize_files(uris: Sequence[str], cache: LocalizationCache, cwd: Path, in_container: bool) -> list[str]:
    out = []
    for uri in uris:
        base, alias = split_fragment(uri)
        if not urlparse(base).scheme:
            out.append(uri)
            continue
        local = cache.file(base)
        if in_container:
            _link(local, cwd / (alias or local.name))
        out.append(f"{local}#{alias}" if alias else str(local))
    return out


def _localize_archives(uris: Sequence[str], cache: LocalizationCache, cwd: Path, in_container: bool) -> list[str]:
    out = []
    for uri in uris:
        base, alias = split_fragment(uri)
        if not urlparse(base).scheme:
            out.append(uri)
            continue
        unpacked = cache.archive(base)
        name = alias or base.rsplit("/", 1)[-1]
        if in_container:
            _link(unpacked, cwd / name)
        out.append(f"{cache.pointer(unpacked)}#{name}")
    return out


class _Tee:
    """Copies the driver's stdout and stderr into their own files and one merged file."""

    def __init__(self, proc: subprocess.Popen, stdout: Path, stderr: Path, merged: Path) -> None:
        self._lock = threading.Lock()
        self._merged = open(merged, "ab")
        self._threads = [
            threading.Thread(target=self._pump, args=(proc.stdout, stdout), daemon=True),
            threading.Thread(target=self._pump, args=(proc.stderr, stderr), daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def _pump(self, stream, path: Path) -> None:
        with open(path, "ab") as own:
            for line in iter(stream.readline, b""):
                own.write(line)
                own.flush()
                with self._lock:
                    self._merged.write(line)
                    self._merged.flush()
        stream.close()

    def join(self, timeout: float = 10) -> None:
        for thread in self._threads:
            thread.join(timeout)
        with self._lock:
            self._merged.close()


def _log_time() -> str:
    return time.strftime("%y/%m/%d %H:%M:%S")


class RunningJob:
    """One job's driver; ``wait()`` returns its exit code.

    Files in ``folder``: ``driver.stdout``, ``driver.stderr``, ``driver.log`` (both, merged),
    ``client.log`` (cluster mode: the spark-submit client's YARN reports), ``command.txt``.
    """

    def __init__(
        self,
        job: SparkJob,
        nodes: FakeClusterNodes,
        folder: Path,
        cache: LocalizationCache,
        rules: ServiceRules = YARN,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.stdout_path, self.stderr_path = self.folder / "driver.stdout", self.folder / "driver.stderr"
        self.log_path, self.client_path = self.folder / "driver.log", self.folder / "client.log"
        for path in (self.stdout_path, self.stderr_path, self.log_path, self.client_path):
            path.touch()
        self.app_id = nodes.next_application_id()
        self.container_id = self.app_id.replace("application_", "container_", 1) + "_01_000001"
        self.proc: subprocess.Popen | None = None
        self.exit_code: int | None = None
        self._tee: _Tee | None = None
        self._lock = threading.Lock()
        self._cancelled = False
        effective = interpret(job, rules, nodes.spark_defaults)
        self.cluster_mode = effective.cluster_mode
        self._client(f"INFO Client: Submitting application {self.app_id} to ResourceManager")
        self._client(f"INFO YarnClientImpl: Submitted application {self.app_id}")
        try:
            refuse_local_paths(job, effective.lists)
            launch = plan_driver(job, effective, nodes, self.folder, cache, env)
        except JobFailed as err:
            self._driver_error(f"ERROR {err}")
            self._finish(1, diagnostics=str(err))
            return
        self._start(launch)

    # ---------------------------------------------------------------- output
    def _client(self, line: str) -> None:
        if self.cluster_mode:
            with open(self.client_path, "a") as out:
                out.write(f"{_log_time()} {line}\n")

    def _driver_error(self, line: str) -> None:
        for path in (self.stderr_path, self.log_path):
            with open(path, "a") as out:
                out.write(line + "\n")

    def _start(self, launch: DriverLaunch) -> None:
        (self.folder / "command.txt").write_text(
            f"cd {shlex.quote(str(launch.cwd))}\n"
            + "".join(f"{k}={shlex.quote(v)}\n" for k, v in launch.env.items())
            + shlex.join(launch.cmd)
            + "\n"
        )
        self.proc = subprocess.Popen(
            launch.cmd,
            cwd=launch.cwd,
            env=launch.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        self._tee = _Tee(self.proc, self.stdout_path, self.stderr_path, self.log_path)
        self._client(f"INFO Client: Application report for {self.app_id} (state: RUNNING)")

    def _finish(self, code: int, diagnostics: str | None = None) -> None:
        """Record the exit code once; in cluster mode, the client's final report."""
        with self._lock:
            if self.exit_code is not None:
                return
            self.exit_code = code
        if self._tee is not None:
            self._tee.join()
        state, final = ("FINISHED", "SUCCEEDED") if code == 0 else ("FINISHED", "FAILED")
        if self._cancelled:
            state, final = "KILLED", "KILLED"
        reason = diagnostics or ("N/A" if code == 0 else f"User application exited with status {code}")
        self._client(f"INFO Client: Application report for {self.app_id} (state: {state})")
        self._client(f"INFO Client: \n\t diagnostics: {reason}\n\t final status: {final}\n\t user: hadoop")
        if code != 0 and self.cluster_mode:
            with open(self.client_path, "a") as out:
                out.write(
                    f'Exception in thread "main" org.apache.spark.SparkException: '
                    f"Application {self.app_id} finished with failed status\n"
                )

    # ---------------------------------------------------------------- control
    def wait(self, timeout: float | None = None) -> int:
        if self.proc is None:
            return int(self.exit_code if self.exit_code is not None else 1)
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.cancel()
            self._driver_error(f"ERROR job timed out after {timeout} s")
            code = 124
        self._finish(code)
        return int(self.exit_code)

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

    # ---------------------------------------------------------------- logs
    @staticmethod
    def _read(path: Path) -> str:
        try:
            return path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_text(self) -> str:
        """The driver's stdout and stderr, merged in arrival order."""
        return self._read(self.log_path)

    def stdout_text(self) -> str:
        return self._read(self.stdout_path)

    def stderr_text(self) -> str:
        return self._read(self.stderr_path)

    def submit_log_text(self) -> str:
        """What the ``spark-submit`` client printed: the YARN reports in cluster mode, the
        driver's own output in client mode (the driver runs inside spark-submit)."""
        return self._read(self.client_path) if self.cluster_mode else self.log_text()
