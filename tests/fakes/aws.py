"""moto in server mode on 127.0.0.1 (EMR, EMR Serverless, S3, Secrets Manager), plus the part
moto leaves out: running the Spark work.

moto accepts EMR steps and EMR Serverless job runs but never runs them (steps stay RUNNING,
job runs are SUCCESS at once). :class:`SparkWorkRunner` watches moto's own backends (this
process hosts the server thread) and, like the services do:

- keeps a fake cluster per live EMR job flow / started Serverless application (stopped when the
  job flow terminates or the application stops): a local Spark standalone cluster on the fake
  managed image (:mod:`tests.fakes.cluster_image`), whose ``spark-defaults.conf`` points S3A at
  moto (``s3://`` and ``s3n://`` too, EMRFS's stand-in; plus the job flow's own ``spark-defaults``
  configurations) and whose nodes carry ``AWS_ENDPOINT_URL`` and credentials (the instance
  profile's stand-in, so boto3 on a node reaches moto);
- runs each ``command-runner.jar spark-submit ...`` step (in order, per job flow; YARN rules:
  ``--deploy-mode`` decides, ``spark.yarn.appMasterEnv.*`` is the cluster-mode driver's
  environment) and each job run's ``sparkSubmit`` driver (``spark.emr-serverless.driverEnv.*``)
  with :mod:`tests.fakes.spark_runner`;
- sets the state from the exit code (step COMPLETED/FAILED, ``ActionOnFailure`` honoured; job
  run SUCCESS/FAILED with ``stateDetails``) and writes the logs where the services put them in
  the log bucket. EMR step, cluster mode: ``<LogUri>/<cluster>/steps/<step>/stderr.gz`` is the
  spark-submit client's output (``Submitted application application_<ts>_<NNNN>``, final state)
  at once, ``stdout.gz`` is empty, and the driver's streams go to
  ``<LogUri>/<cluster>/containers/<app>/<container>/stdout.gz``/``stderr.gz``; client mode: the
  driver's streams are the step's. Serverless:
  ``<logUri>/applications/<app>/jobs/<run>/SPARK_DRIVER/stdout.gz``/``stderr.gz``. Container and
  driver logs are uploaded late, ``log_upload_delay`` seconds after the final state (the
  services take minutes).

The changes to moto: the module constants it gives new objects: a job run starts
``SUBMITTED`` (so a poller cannot see SUCCESS before anything ran) and an application
``CREATED`` (what the service reports before StartApplication); and three EMR API parts moto
5.2 lacks (:func:`extend_moto_emr`): ``RunJobFlow`` keeps ``AutoTerminationPolicy``, which
``GetAutoTerminationPolicy`` returns; ``CancelSteps`` cancels a PENDING step at once and marks a
RUNNING one ``CANCEL_PENDING`` (the runner then kills its spark-submit and sets ``CANCELLED``).
The runner starts a job flow's steps only once it is ready (WAITING / RUNNING), as EMR does; a
Serverless job run cancelled in moto (``CancelJobRun``) has its driver killed and stays
``CANCELLED``. As the services do (and moto does not): terminating a job flow interrupts its
running step (its spark-submit is killed, the step ends ``INTERRUPTED``), and ``StopApplication``
is refused (``ValidationException``) while the application has unfinished job runs.

Fault knobs: a job flow whose name starts with one of :data:`STUCK_JOB_FLOW_PREFIXES` never
becomes ready (it stays ``STARTING``, as one whose instances never come up, until terminated); a
Serverless application whose name starts with one of :data:`FAILED_START_APPLICATION_PREFIXES`
fails to start (``StartApplication`` leaves it ``STOPPED`` with ``stateDetails`` saying why, as
the service does when it cannot provision the pre-initialized capacity), and one whose name starts
with one of :data:`STUCK_APPLICATION_PREFIXES` stays ``STARTING`` until stopped.
"""

from __future__ import annotations

import contextlib

import gzip
import logging
import shlex
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from tests.fakes.cluster_image import ClusterImage
from tests.fakes.spark_runner import (
    EMR_SERVERLESS,
    S3A_FILESYSTEM,
    YARN,
    LocalClusters,
    LocalizationCache,
    NodeProfile,
    RunningJob,
    S3Settings,
    SparkJob,
)

log = logging.getLogger("spindle.fakes.aws")

ACCOUNT = "123456789012"
REGION = "us-east-1"


#: Fault knob: job flows whose name starts with one of these stay STARTING (see the module doc).
STUCK_JOB_FLOW_PREFIXES: set[str] = set()
#: Fault knob: Serverless applications whose name starts with one of these fail to start.
FAILED_START_APPLICATION_PREFIXES: set[str] = set()
#: Fault knob: Serverless applications whose name starts with one of these stay STARTING.
STUCK_APPLICATION_PREFIXES: set[str] = set()
#: Job run states in which EMR Serverless refuses StopApplication.
SERVERLESS_UNFINISHED_RUNS = ("SUBMITTED", "PENDING", "SCHEDULED", "RUNNING", "CANCELLING", "QUEUED")


def extend_moto_emr() -> None:
    """Add AutoTerminationPolicy, GetAutoTerminationPolicy and CancelSteps to moto's EMR (its
    in-process response class; idempotent) and apply :data:`STUCK_JOB_FLOW_PREFIXES`."""
    from moto.core.responses import ActionResult
    from moto.emr.responses import ElasticMapReduceResponse as Emr

    if getattr(Emr, "_spindle_extended", False):
        return
    run_job_flow = Emr.run_job_flow

    def run_job_flow_kept(self):
        result = run_job_flow(self)
        cluster = self.backend.clusters[result.result["JobFlowId"]]
        cluster.auto_termination_policy = self._get_param("AutoTerminationPolicy")
        if any(cluster.name.startswith(prefix) for prefix in STUCK_JOB_FLOW_PREFIXES):
            cluster.state = "STARTING"
        return result

    def get_auto_termination_policy(self):
        policy = getattr(self.backend.clusters[self._get_param("ClusterId")], "auto_termination_policy", None)
        return ActionResult({"AutoTerminationPolicy": policy} if policy else {})

    def cancel_steps(self):
        cluster = self.backend.clusters[self._get_param("ClusterId")]
        steps = {step.id: step for step in cluster.steps}
        infos = []
        for step_id in self._get_param("StepIds", []):
            step = steps.get(step_id)
            if step is None or step.state not in ("PENDING", "RUNNING"):
                why = "step not found" if step is None else f"step is {step.state}"
                infos.append({"StepId": step_id, "Status": "FAILED", "Reason": why})
                continue
            step.state = "CANCELLED" if step.state == "PENDING" else "CANCEL_PENDING"
            infos.append({"StepId": step_id, "Status": "SUBMITTED", "Reason": ""})
        return ActionResult({"CancelStepsInfoList": infos})

    Emr.run_job_flow = run_job_flow_kept
    Emr.get_auto_termination_policy = get_auto_termination_policy
    Emr.cancel_steps = cancel_steps
    Emr._spindle_extended = True
    _fail_starts_on_request()


def _fail_starts_on_request() -> None:
    """Apply :data:`FAILED_START_APPLICATION_PREFIXES` to moto's ``StartApplication``."""
    from moto.emrserverless.models import EMRServerlessBackend

    start_application = EMRServerlessBackend.start_application

    def start_or_fail(self, application_id: str) -> None:
        start_application(self, application_id)
        app = self.applications[application_id]
        if any(app.name.startswith(prefix) for prefix in FAILED_START_APPLICATION_PREFIXES):
            app.state = "STOPPED"
            app.state_details = "injected failure: the pre-initialized capacity could not be provisioned"
        elif any(app.name.startswith(prefix) for prefix in STUCK_APPLICATION_PREFIXES):
            app.state = "STARTING"  # until stopped

    EMRServerlessBackend.start_application = start_or_fail
    stop_application = EMRServerlessBackend.stop_application

    def stop_if_no_jobs(self, application_id: str) -> None:
        from moto.emrserverless.exceptions import ValidationException

        busy = [r.id for r in self.job_runs.get(application_id, []) if r.state in SERVERLESS_UNFINISHED_RUNS]
        if busy:  # the service: "All scheduled and running jobs must be completed or cancelled"
            raise ValidationException(f"Application {application_id} has unfinished job runs: {busy}")
        stop_application(self, application_id)

    EMRServerlessBackend.stop_application = stop_if_no_jobs


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class MotoServer:
    """moto's threaded server on 127.0.0.1:<free port>; ``endpoint_url`` for connections."""

    def __init__(self) -> None:
        from moto.moto_server.threaded_moto_server import ThreadedMotoServer

        self.port = _free_port()
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> MotoServer:
        import moto.emrserverless.models as serverless_models

        serverless_models.JOB_STATUS = "SUBMITTED"
        serverless_models.APPLICATION_STATUS = "CREATED"  # the service's state after creation
        extend_moto_emr()
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop()

    def client(self, service: str):
        import boto3

        return boto3.client(
            service,
            endpoint_url=self.endpoint_url,
            region_name=REGION,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )

    def s3_settings(self) -> S3Settings:
        return S3Settings(self.endpoint_url, region=REGION)


@contextlib.contextmanager
def moto_bucket(bucket: str) -> Iterator[MotoServer]:
    """A moto server with one bucket, stopped on exit (tests that need S3 and nothing else)."""
    server = MotoServer().start()
    try:
        server.client("s3").create_bucket(Bucket=bucket)
        yield server
    finally:
        server.stop()


# --------------------------------------------------------------------------- spark-submit parsing
_LIST_OPTIONS = {"--py-files": "py_files", "--files": "files", "--archives": "archives", "--jars": "jars"}
_CONF_LISTS = {
    "spark.submit.pyFiles": "py_files",
    "spark.files": "files",
    "spark.archives": "archives",
    "spark.jars": "jars",
}
#: spark-submit options that are shorthands for Spark properties.
_OPTION_PROPERTIES = {
    "--deploy-mode": "spark.submit.deployMode",
    "--driver-memory": "spark.driver.memory",
    "--driver-cores": "spark.driver.cores",
    "--executor-memory": "spark.executor.memory",
    "--executor-cores": "spark.executor.cores",
    "--num-executors": "spark.executor.instances",
    "--total-executor-cores": "spark.cores.max",
    "--queue": "spark.yarn.queue",
    "--packages": "spark.jars.packages",
}
_IGNORED_OPTIONS = ("--master", "--class", "--properties-file", "--repositories", "--exclude-packages")


def parse_spark_submit(argv: list[str], name: str) -> SparkJob:
    """A :class:`SparkJob` from ``spark-submit`` options + application + its arguments."""
    lists: dict[str, list[str]] = {v: [] for v in _LIST_OPTIONS.values()}
    props: dict[str, str] = {}
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--conf":
            key, _, value = argv[i + 1].partition("=")
            if key in _CONF_LISTS:
                lists[_CONF_LISTS[key]] += [v for v in value.split(",") if v]
            else:
                props[key] = value
            i += 2
        elif arg in _LIST_OPTIONS:
            lists[_LIST_OPTIONS[arg]] += [v for v in argv[i + 1].split(",") if v]
            i += 2
        elif arg == "--name":
            name = argv[i + 1]
            i += 2
        elif arg in _OPTION_PROPERTIES:
            props[_OPTION_PROPERTIES[arg]] = argv[i + 1]
            i += 2
        elif arg in _IGNORED_OPTIONS:
            i += 2
        elif arg.startswith("--"):
            i += 1
        else:
            return SparkJob(main=arg, args=argv[i + 1 :], properties=props, name=name, **lists)
    raise ValueError("spark-submit arguments name no application")


def aws_node_profile(s3: S3Settings, spark_defaults: dict[str, str] | None = None) -> NodeProfile:
    """What EMR / EMR Serverless nodes come with: S3A (and EMRFS's ``s3://``, ``s3n://``) on the
    object store, and the instance profile's credentials for boto3 (``AWS_ENDPOINT_URL``)."""
    defaults = {
        **s3.s3a_defaults(),
        "spark.hadoop.fs.s3.impl": S3A_FILESYSTEM,
        "spark.hadoop.fs.s3n.impl": S3A_FILESYSTEM,
        "spark.hadoop.fs.AbstractFileSystem.s3.impl": "org.apache.hadoop.fs.s3a.S3A",
        **(spark_defaults or {}),
    }
    env = {
        "AWS_ENDPOINT_URL": s3.endpoint_url,
        "AWS_ACCESS_KEY_ID": s3.access_key,
        "AWS_SECRET_ACCESS_KEY": s3.secret_key,
        "AWS_DEFAULT_REGION": s3.region,
    }
    return NodeProfile(spark_defaults=defaults, env=env)


def _original(mapping: Any) -> dict[str, Any]:
    """moto keeps request dicts as case-insensitive ``XFormedDict``s whose keys are snake_cased
    (``spark.submit.deploy_mode``): the keys as the client sent them."""
    return mapping.original_dict() if hasattr(mapping, "original_dict") else dict(mapping or {})


def emr_spark_defaults(configurations: list[Any] | None) -> dict[str, str]:
    """The ``spark-defaults`` classification of a job flow's ``Configurations``."""
    found: dict[str, str] = {}
    for config in configurations or []:
        config = _original(config)
        if config.get("Classification") == "spark-defaults":
            found.update({str(k): str(v) for k, v in _original(config.get("Properties")).items()})
    return found


def serverless_spark_defaults(overrides: Any) -> dict[str, str]:
    """The ``spark-defaults`` classification of a job run's ``applicationConfiguration``."""
    found: dict[str, str] = {}
    for config in _original(overrides).get("applicationConfiguration") or []:
        config = _original(config)
        if config.get("classification") == "spark-defaults":
            found.update({str(k): str(v) for k, v in _original(config.get("properties")).items()})
    return found


def _location(uri_prefix: str, name: str) -> tuple[str, str]:
    """(bucket, key) of ``name`` under an ``s3://``/``s3n://`` prefix."""
    parsed = urlparse(uri_prefix)
    return parsed.netloc, f"{parsed.path.strip('/')}/{name}".lstrip("/")


class LogUploads:
    """Log objects to put into the log bucket, each when it is due (the services upload late)."""

    def __init__(self, s3: S3Settings) -> None:
        self.s3 = s3
        self._due: list[tuple[float, str, bytes]] = []
        self._lock = threading.Lock()

    def add(self, uri_prefix: str, texts: dict[str, str], delay: float = 0.0) -> None:
        """Put ``{name: text}`` gzipped under ``uri_prefix``, ``delay`` seconds from now."""
        when = time.monotonic() + delay
        with self._lock:
            for name, text in texts.items():
                self._due.append((when, f"{uri_prefix.rstrip('/')}|{name}", gzip.compress(text.encode())))

    def flush(self, force: bool = False) -> None:
        now = time.monotonic()
        with self._lock:
            ready = [item for item in self._due if force or item[0] <= now]
            self._due = [item for item in self._due if item not in ready]
        client = self.s3.client() if ready else None
        for _, target, data in ready:
            prefix, name = target.split("|", 1)
            bucket, key = _location(prefix, name)
            try:
                client.put_object(Bucket=bucket, Key=key, Body=data)
            except Exception:
                log.exception("fake aws: could not upload log %s", target)

    @property
    def pending(self) -> int:
        with self._lock:
            return len(self._due)


class SparkWorkRunner(threading.Thread):
    """Runs moto's EMR steps and EMR Serverless job runs for real (see the module doc).

    :param log_upload_delay: seconds between a step's / job run's final state and the upload
        of its container / driver logs.
    :param image: the fake managed image (default: built or found by ``ensure_cluster_image``).
    :param node_cache: the node-level resource cache (default: ``<workdir>/node-cache``). Keyed
        by bucket, key and ETag, so fakes on one object store may share one: the tests do, to
        unpack the ~500 MiB cluster environment once rather than once per cloud.
    """

    def __init__(
        self,
        moto: MotoServer,
        workdir: Path,
        worker_cores: int = 2,
        worker_memory: str = "2g",
        poll: float = 0.5,
        job_timeout: float = 600,
        job_env: dict[str, str] | None = None,
        log_upload_delay: float = 5.0,
        image: ClusterImage | None = None,
        node_cache: Path | None = None,
    ) -> None:
        super().__init__(name="fake-aws-runner", daemon=True)
        self.moto = moto
        self.workdir = Path(workdir)
        self.s3 = moto.s3_settings()
        self.clusters = LocalClusters(self.workdir / "clusters", worker_cores, worker_memory, image=image)
        self.cache = LocalizationCache(node_cache or self.workdir / "node-cache", self.s3)
        self.uploads = LogUploads(self.s3)
        self.poll = poll
        self.job_timeout = job_timeout
        self.job_env = dict(job_env or {})
        self.log_upload_delay = log_upload_delay
        self._halt = threading.Event()
        self._local: dict[str, Any] = {}  # job flow / application id -> fake cluster nodes
        self._busy: dict[str, threading.Thread] = {}
        self._running: dict[str, RunningJob] = {}
        self.events: list[tuple[str, str, str]] = []  # (kind, id, what)
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ moto's state
    @staticmethod
    def _emr():
        from moto.emr.models import emr_backends

        return emr_backends[ACCOUNT][REGION]

    @staticmethod
    def _serverless():
        from moto.emrserverless.models import emrserverless_backends

        return emrserverless_backends[ACCOUNT][REGION]

    def _event(self, kind: str, ident: str, what: str) -> None:
        with self._lock:
            self.events.append((kind, ident, what))
        log.info("fake aws: %s %s %s", kind, ident, what)

    def _ensure_cluster(self, ident: str, spark_defaults: dict[str, str] | None = None):
        if ident not in self._local:
            profile = aws_node_profile(self.s3, spark_defaults)
            self._local[ident] = self.clusters.start(f"fake-{ident.lower()}", profile=profile)
            self._event("cluster", ident, "local spark started")
        return self._local[ident]

    def _drop_cluster(self, ident: str) -> None:
        local = self._local.get(ident)
        if local is not None:
            for key, job in list(self._running.items()):
                if key.startswith(ident + "/"):
                    job.cancel()
            self.clusters.stop(local.cluster_id)
            del self._local[ident]  # only once stopped: settled() must not see it gone early
            self._event("cluster", ident, "local spark stopped")

    # ------------------------------------------------------------------ EMR on EC2
    def _tick_emr(self) -> None:
        backend = self._emr()
        for cluster in list(backend.clusters.values()):
            if cluster.state in ("TERMINATING", "TERMINATED", "TERMINATED_WITH_ERRORS"):
                for key, job in list(self._running.items()):  # EMR interrupts the running step
                    if key.startswith(cluster.id + "/") and not job.cancelled:
                        job.cancel()
                step_thread = self._busy.get(cluster.id)
                if cluster.id in self._local and not (step_thread and step_thread.is_alive()):
                    self._drop_cluster(cluster.id)
                continue
            for step in cluster.steps:  # CancelSteps on a running step: kill its spark-submit
                running = self._running.get(f"{cluster.id}/{step.id}")
                if step.state == "CANCEL_PENDING" and running is not None and not running.cancelled:
                    running.cancel()
            if cluster.state not in ("WAITING", "RUNNING"):  # EMR runs steps once the cluster is ready
                continue
            if cluster.id in self._busy and self._busy[cluster.id].is_alive():
                continue
            todo = [s for s in cluster.steps if s.state in ("PENDING", "RUNNING")]
            if not todo:
                continue
            thread = threading.Thread(target=self._run_step, args=(cluster, todo[0]), daemon=True)
            self._busy[cluster.id] = thread
            thread.start()

    def _run_step(self, cluster: Any, step: Any) -> None:
        from moto.core.utils import utcnow

        if step.state not in ("PENDING", "RUNNING"):  # cancelled since the tick picked it
            return
        step.state = "RUNNING"
        step.start_date_time = utcnow()
        cluster.state = "RUNNING"
        self._event("step", step.id, "running")
        code, running, error = 1, None, ""
        try:
            args = list(step.args)
            if step.jar != "command-runner.jar" or not args or args[0] != "spark-submit":
                raise ValueError(
                    f"this fake runs command-runner.jar spark-submit steps only, not {step.jar} {args[:1]}"
                )
            nodes = self._ensure_cluster(cluster.id, emr_spark_defaults(getattr(cluster, "configurations", None)))
            job = parse_spark_submit(args[1:], step.name)
            running = RunningJob(
                job, nodes, self.workdir / "emr" / cluster.id / step.id, self.cache, YARN, self.job_env
            )
            self._running[f"{cluster.id}/{step.id}"] = running
            code = running.wait(self.job_timeout)
        except Exception as err:
            log.exception("fake aws: step %s could not run", step.id)
            error = f"ERROR {err}\n"
        if cluster.log_uri:  # before the final state: a poller that sees it finds the step's logs
            self._publish_step_logs(cluster, step, running, error)
        if step.state == "CANCEL_PENDING":  # CancelSteps while it ran: no ActionOnFailure
            step.state, code = "CANCELLED", 0
        elif running is not None and running.cancelled:  # its job flow was terminated under it
            step.state, code = "INTERRUPTED", 0
        else:
            step.state = "COMPLETED" if code == 0 else "FAILED"
        step.end_date_time = utcnow()
        if code != 0:
            step.last_state_change_reason = f"Step failed: spark-submit exited with code {code}"
        self._event("step", step.id, step.state)
        if code != 0 and step.action_on_failure in ("TERMINATE_CLUSTER", "TERMINATE_JOB_FLOW"):
            cluster.terminate()
        elif code != 0 and step.action_on_failure == "CANCEL_AND_WAIT":
            for other in cluster.steps:
                if other.state == "PENDING":
                    other.state = "CANCELLED"
        if not any(s.state in ("PENDING", "RUNNING") for s in cluster.steps) and cluster.state == "RUNNING":
            cluster.state = "WAITING"

    def _publish_step_logs(self, cluster: Any, step: Any, running: RunningJob | None, error: str) -> None:
        """Step logs at once; in cluster mode the driver's own logs late, in its container."""
        root = f"{cluster.log_uri.rstrip('/')}/{cluster.id}"
        step_prefix = f"{root}/steps/{step.id}"
        if running is None:
            self.uploads.add(step_prefix, {"stdout.gz": "", "stderr.gz": error})
        elif running.cluster_mode:
            self.uploads.add(step_prefix, {"stdout.gz": "", "stderr.gz": running.submit_log_text()})
            container = f"{root}/containers/{running.app_id}/{running.container_id}"
            self.uploads.add(
                container,
                {"stdout.gz": running.stdout_text(), "stderr.gz": running.stderr_text()},
                delay=self.log_upload_delay,
            )
        else:
            self.uploads.add(step_prefix, {"stdout.gz": running.stdout_text(), "stderr.gz": running.stderr_text()})
        self.uploads.flush()

    # ------------------------------------------------------------------ EMR Serverless
    def _tick_serverless(self) -> None:
        backend = self._serverless()
        for app_id, app in list(backend.applications.items()):
            if app.state in ("STOPPED", "TERMINATED"):
                if app_id in self._local and not any(
                    t.is_alive() for k, t in self._busy.items() if k.startswith(app_id + "/")
                ):
                    self._drop_cluster(app_id)
                continue
            for run in backend.job_runs.get(app_id, []):
                key = f"{app_id}/{run.id}"
                running = self._running.get(key)
                if run.state == "CANCELLED" and running is not None and not running.cancelled:
                    running.cancel()  # CancelJobRun: moto set CANCELLED, the driver must stop
                if run.state == "SUBMITTED" and key not in self._busy:
                    thread = threading.Thread(target=self._run_job_run, args=(app, run), daemon=True)
                    self._busy[key] = thread
                    thread.start()

    def _run_job_run(self, app: Any, run: Any) -> None:
        from moto.core.utils import utcnow

        if run.state != "SUBMITTED":  # cancelled since the tick picked it
            return
        run.state = "RUNNING"
        run.updated_at = utcnow()
        self._event("job_run", run.id, "running")
        code, texts = 1, {}
        try:
            nodes = self._ensure_cluster(app.id)
            driver = (run.job_driver or {}).get("sparkSubmit") or {}
            argv = shlex.split(driver.get("sparkSubmitParameters", ""))
            argv += [driver["entryPoint"], *driver.get("entryPointArguments", [])]
            job = parse_spark_submit(argv, run.name or run.id)
            job.properties = {**serverless_spark_defaults(run.configuration_overrides), **job.properties}
            running = RunningJob(
                job, nodes, self.workdir / "serverless" / app.id / run.id, self.cache, EMR_SERVERLESS, self.job_env
            )
            self._running[f"{app.id}/{run.id}"] = running
            code = running.wait(self.job_timeout)
            texts = {"stdout.gz": running.stdout_text(), "stderr.gz": running.stderr_text()}
        except Exception as err:
            texts = {"stdout.gz": "", "stderr.gz": f"ERROR {err}\n"}
            log.exception("fake aws: job run %s could not run", run.id)
        if run.state == "CANCELLED":  # CancelJobRun while it ran
            code = 0
        else:
            run.state = "SUCCESS" if code == 0 else "FAILED"
        if code != 0:
            run.state_details = f"Job failed: spark-submit exited with code {code}"
        run.updated_at = utcnow()
        overrides = run.configuration_overrides or {}
        log_uri = ((overrides.get("monitoringConfiguration") or {}).get("s3MonitoringConfiguration") or {}).get(
            "logUri"
        )
        if log_uri:
            prefix = f"{log_uri.rstrip('/')}/applications/{app.id}/jobs/{run.id}/SPARK_DRIVER"
            self.uploads.add(prefix, texts, delay=self.log_upload_delay)
        self._event("job_run", run.id, run.state)

    def settled(self) -> bool:
        if any(t.is_alive() for t in list(self._busy.values())):
            return False
        ended = {
            c.id
            for c in self._emr().clusters.values()
            if c.state in ("TERMINATING", "TERMINATED", "TERMINATED_WITH_ERRORS")
        }
        ended |= {i for i, a in self._serverless().applications.items() if a.state in ("STOPPED", "TERMINATED")}
        return not (ended & set(self._local))

    # ------------------------------------------------------------------ loop
    def run(self) -> None:
        while not self._halt.wait(self.poll):
            for tick in (self._tick_emr, self._tick_serverless, self.uploads.flush):
                try:
                    tick()
                except Exception:
                    log.exception("fake aws runner tick failed")

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=10)
        for job in list(self._running.values()):
            job.cancel()
        for thread in list(self._busy.values()):
            thread.join(timeout=30)
        self.uploads.flush(force=True)
        for ident in list(self._local):
            try:
                self._drop_cluster(ident)
            except Exception:
                log.exception("fake aws: could not stop the local cluster of %s", ident)
        self.clusters.stop_all()


class FakeAws:
    """moto server + runner; ``with FakeAws(workdir) as aws: ...``."""

    def __init__(self, workdir: Path, **runner_kwargs: Any) -> None:
        self.moto = MotoServer()
        self.runner = SparkWorkRunner(self.moto, workdir, **runner_kwargs)

    @property
    def endpoint_url(self) -> str:
        return self.moto.endpoint_url

    def start(self) -> FakeAws:
        self.moto.start()
        self.runner.start()
        return self

    def stop(self) -> None:
        self.runner.stop()
        self.moto.stop()

    def __enter__(self) -> FakeAws:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def wait_logs(self, timeout: float = 60) -> None:
        """Until every late log upload (container / driver logs) has been made."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.runner.uploads.pending:
            time.sleep(0.2)

    def wait_idle(self, timeout: float = 60) -> None:
        """Until no step or job run is running and every local cluster whose job flow terminated
        or whose application stopped is gone (the runner notices on its next poll)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not self.runner.settled():
            time.sleep(0.2)
