"""What every cloud backend shares: job command lines, Spark properties, labels, the log
copier, the "Spark UI"/console links, and the run's staged artifacts.

A cloud job task is described exactly like a local one (:class:`SparkAppJobOperator`): a job
name under ``spark_apps/jobs/``, ``job_args`` turned into ``--key value``, sizing, extra Spark
properties. On a managed cluster the job also gets the *staged* artifacts (XCom of the stage
task, see :mod:`spindle.backends.staging`): the job file's URI, the ``spark_apps`` wheel as a
py-file, the cluster environment and the model archives its arguments name, and ``rewrites``:
local paths the stage task uploaded, replaced in the job's arguments by their remote URI or
archive alias. The job writes its metrics to the bucket (``--metrics-output``), where the task
reads them, and, while it runs, its progress (``--progress-output``), which the task's wait logs
(:class:`spindle.spark_progress.BucketProgressPoller`).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Mapping, Sequence
from typing import Any

from airflow.sdk import BaseOperatorLink

from spindle.backends import environment
from spindle.operators.spark_app import DEFAULT_CONF, job_args_to_cli, spark_conf_mapping
from spindle.spark_progress import bucket_progress, default_interval

#: Label/tag keys put on everything Spindle creates, so leaks are findable (see the reaper).
LABEL_MANAGED = "spindle-managed"
LABEL_DAG = "spindle-dag"
LABEL_RUN = "spindle-run"
LABEL_TTL = "spindle-ttl-hours"
LABEL_CREATED = "spindle-created"
LABEL_BACKEND = "spindle-backend"
#: "run": the cluster serves one DAG run, which deletes it (the reaper may delete it as soon as
#: its DAG has no active run); "shared": it outlives the run that created it.
LABEL_SCOPE = "spindle-scope"
#: The DAG that creates a cluster for other DAGs' runs (Data Proc strategy ``shared``).
SHARED_CLUSTER_DAG = "spindle_shared_cluster_open"

XCOM_SPARK_UI_URL = "spark_ui_url"
XCOM_CONSOLE_URL = "console_url"

_LABEL_VALUE_RE = re.compile(r"[^-_0-9a-z]+")


def label_value(value: str, limit: int = 63) -> str:
    """A value valid as a Yandex Cloud label (``[-_0-9a-z]*``, at most 63) and an AWS tag."""
    return _LABEL_VALUE_RE.sub("-", str(value).lower()).strip("-")[:limit]


def spindle_labels(context: Mapping[str, Any], backend: str, ttl_hours: float) -> dict[str, str]:
    """Labels for a cluster/application created by this task instance."""
    ti = context["ti"]
    return {
        LABEL_MANAGED: "true",
        LABEL_BACKEND: label_value(backend),
        LABEL_DAG: label_value(ti.dag_id),
        LABEL_RUN: label_value(ti.run_id),
        LABEL_TTL: str(int(ttl_hours)),
        LABEL_CREATED: str(int(time.time())),
        LABEL_SCOPE: "shared" if ti.dag_id == SHARED_CLUSTER_DAG else "run",
    }


def memory(value: int | str | None) -> str | None:
    if value in (None, ""):
        return None
    return f"{int(value)}m" if str(value).isdigit() else str(value)


def rewrite_args(args: Sequence[str], rewrites: Mapping[str, str]) -> list[str]:
    """Replace arguments that are local paths the stage task uploaded."""
    return [rewrites.get(str(a), str(a)) for a in args]


def _split_list(value: str) -> list[str]:
    return [item.strip() for item in str(value).split(",") if item.strip()]


def _merged(*lists: Sequence[str]) -> list[str]:
    """Concatenation without repeats, first occurrence kept."""
    return list(dict.fromkeys(item for items in lists for item in items))


class JobSpec:
    """The cluster-independent part of a job task (mixin for the backends' job operators).

    A backend's job operator sets :attr:`driver_env_prefix` to the property its service reads
    the driver's environment from (YARN: ``spark.yarn.appMasterEnv.``, EMR Serverless:
    ``spark.emr-serverless.driverEnv.``); executors always get ``spark.executorEnv.``.
    """

    spec_template_fields: Sequence[str] = (
        "job_args",
        "application_args",
        "executor_cores",
        "executor_memory",
        "task_cpus",
        "driver_memory",
        "staged",
        "settings",
        "conf",
    )
    driver_env_prefix = "spark.yarn.appMasterEnv."

    def init_spec(
        self,
        *,
        job: str,
        staged: Any,
        settings: Any,
        job_args: Mapping[str, Any] | None = None,
        application_args: list[Any] | None = None,
        executor_cores: int | str | None = None,
        executor_memory: int | str | None = None,
        task_cpus: int | str | None = None,
        driver_memory: int | str | None = None,
        conf: Mapping[str, Any] | str | None = None,
    ) -> None:
        """``settings``: the backend's settings (``check_backend``'s XCom): warehouse
        connection, secrets source, executor count and extra Spark properties come from it.
        ``conf``: the run's Spark properties (param ``spark_conf``), applied after the settings'."""
        self.job = job
        self.staged = staged
        self.settings = settings
        self.job_args = job_args
        self.application_args = application_args
        self.executor_cores = executor_cores
        self.executor_memory = executor_memory
        self.task_cpus = task_cpus
        self.driver_memory = driver_memory
        self.conf = conf
        self.metrics: dict[str, Any] | None = None
        self.metrics_uri: str | None = None
        self.progress_uri: str | None = None

    def setting(self, key: str, default: Any = None) -> Any:
        value = (self.settings or {}).get(key)
        return default if value is None else value

    def _deferrable(self) -> bool:
        """Whether a Yandex job task waits in the triggerer: its ``deferrable`` argument, else the
        backend's ``deferrable`` setting, else ``[operators] default_deferrable`` as it runs.
        (The AWS operators resolve theirs as the provider does, when they are built.)"""
        if getattr(self, "deferrable", None) is not None:
            return bool(self.deferrable)
        if self.setting("deferrable") is not None:
            return bool(self.setting("deferrable"))
        from airflow.sdk.configuration import conf

        return conf.getboolean("operators", "default_deferrable", fallback=False)

    # ------------------------------------------------------------------ derived
    def job_uri(self) -> str:
        try:
            return self.staged["jobs"][self.job]
        except (KeyError, TypeError):
            raise ValueError(f"the stage task uploaded no job file for {self.job!r}") from None

    def _raw_args(self) -> list[str]:
        return [str(a) for a in (self.application_args or [])] + job_args_to_cli(self.job_args)

    def cli_args(self, context: Mapping[str, Any] | None = None) -> list[str]:
        """The job's arguments with uploaded local paths replaced by their remote URI or archive
        alias, plus the warehouse connection and, given the task's ``context``, where the job
        writes its metrics (:meth:`metrics_location`) and its progress (:meth:`progress_location`,
        every ``$SPINDLE_PROGRESS_INTERVAL`` seconds; none when that is 0)."""
        args = rewrite_args(self._raw_args(), (self.staged or {}).get("rewrites", {}))
        warehouse_conn_id = self.setting("warehouse_conn_id")
        if warehouse_conn_id:
            args += ["--warehouse-conn-id", warehouse_conn_id]
        if context is not None:
            self.metrics_uri = self.metrics_location(context)
            args += ["--metrics-output", self.metrics_uri]
            interval = default_interval()
            if interval > 0:
                self.progress_uri = progress_location(self.metrics_uri)
                args += ["--progress-output", self.progress_uri, "--progress-interval", f"{interval:g}"]
        return args

    def metrics_location(self, context: Mapping[str, Any]) -> str:
        """``<scheme>://<bucket>/<prefix>/metrics/<dag>/<run>/<task>.try<n>.json``: one object per
        try, so a retry never reads the metrics of the try before."""
        from spindle.pipelines import run_key

        staged, ti = self.staged or {}, context["ti"]
        return (
            f"{staged.get('scheme', 's3')}://{staged['bucket']}/{staged['prefix']}/metrics/{ti.dag_id}/"
            f"{run_key(ti.run_id)}/{ti.task_id}.try{ti.try_number}.json"
        )

    def progress(self, s3_conn_id: str | None) -> Any:
        """A context manager that logs the job's progress from the bucket while a task waits."""
        return bucket_progress(self.log, self.progress_uri, s3_conn_id)

    def model_archives(self) -> list[str]:
        """``uri#alias`` of the staged models this job's arguments name: a job ships only the
        models it uses."""
        models = (self.staged or {}).get("models", {})
        used = set(self._raw_args())
        return [archive for local, archive in models.items() if local in used]

    def environment_archive(self) -> str | None:
        """The cluster environment (``uri#environment``) for jobs that run a model; a job without
        one (prepare_books) runs on the image's own Python and ships nothing."""
        shipped = (self.staged or {}).get("environment")
        return shipped if shipped and self.model_archives() else None

    def job_env(self) -> dict[str, str]:
        """Environment of the driver and the executors: the secrets *reference* (never a value),
        no model hub, and the shipped interpreter when the environment goes along."""
        env = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
        secrets_source = self.setting("secrets_source")
        if secrets_source:
            env["SPINDLE_SECRETS_SOURCE"] = secrets_source
        if self.environment_archive():
            env["PYSPARK_PYTHON"] = environment.PYTHON
        return env

    def _user_properties(self) -> dict[str, str]:
        props = {str(k): str(v) for k, v in self.setting("spark_properties", {}).items()}
        props.update(spark_conf_mapping(self.conf))
        return props

    def spark_properties(self) -> dict[str, str]:
        """Sizing, the job's environment through this service's knobs, then the settings' and
        the run's properties. Archive and py-file lists are not here: :meth:`archives` and
        :meth:`py_files` merge the user's into Spindle's, so a user's ``spark.archives`` never
        replaces the environment or a model."""
        props: dict[str, str] = {k: v for k, v in DEFAULT_CONF.items() if k != "spark.ui.showConsoleProgress"}
        sizing = {
            "spark.executor.cores": self.executor_cores,
            "spark.executor.memory": memory(self.executor_memory),
            "spark.executor.instances": self.setting("num_executors"),
            "spark.task.cpus": self.task_cpus,
            "spark.driver.memory": memory(self.driver_memory),
        }
        props.update({k: str(v) for k, v in sizing.items() if v not in (None, "")})
        for key, value in self.job_env().items():
            props[self.driver_env_prefix + key] = value
            props["spark.executorEnv." + key] = value
        props.update({k: v for k, v in self._user_properties().items() if k not in LIST_PROPERTIES})
        return props

    def py_files(self) -> list[str]:
        user = _split_list(self._user_properties().get("spark.submit.pyFiles", ""))
        return _merged((self.staged or {}).get("py_files", []), user)

    def archives(self) -> list[str]:
        """The environment, this job's models, then the user's ``spark.archives`` /
        ``spark.yarn.dist.archives``: merged, never overwritten."""
        user = self._user_properties()
        own = [self.environment_archive()] if self.environment_archive() else []
        return _merged(
            own,
            self.model_archives(),
            _split_list(user.get("spark.archives", "")),
            _split_list(user.get("spark.yarn.dist.archives", "")),
        )

    def fetch_metrics(self, s3_conn_id: str) -> dict[str, Any]:
        self.metrics = fetch_metrics(s3_conn_id, self.metrics_uri, f"job {self.job!r}")
        return self.metrics

    # ------------------------------------------------------------------ OpenLineage
    def get_openlineage_facets_on_start(self) -> Any:
        """Input and output datasets (uploaded inputs under their bucket URI, relative paths under
        the warehouse root) and the model as shipped to the cluster (``spindle.lineage``)."""
        from spindle.lineage import job_lineage
        from spindle.warehouse import warehouse_root

        conn_id = self.setting("warehouse_conn_id")
        models = (self.staged or {}).get("models", {})
        model = (self.job_args or {}).get("model")
        shipped = str(models.get(model, "")).split("#")[0] if isinstance(model, str) else ""
        return job_lineage(
            self.job,
            self.job_args,
            warehouse_root(conn_id) if conn_id else None,
            rewrites={k: v for k, v in (self.staged or {}).get("rewrites", {}).items() if "://" in str(v)},
            model_location=shipped or None,
            metrics=getattr(self, "metrics", None),
        )

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> Any:
        return self.get_openlineage_facets_on_start()

    def get_openlineage_facets_on_failure(self, task_instance: Any) -> Any:
        return self.get_openlineage_facets_on_start()


def progress_location(metrics_uri: str) -> str:
    """Where a job writes its progress: its metrics' place with ``progress`` for ``metrics``
    (``<scheme>://<bucket>/<prefix>/progress/<dag>/<run>/<task>.try<n>.json``), so a task that
    knows only the metrics URI (the EMR step sensor) finds it too."""
    head, sep, tail = metrics_uri.rpartition("/metrics/")
    return f"{head}/progress/{tail}" if sep else metrics_uri.removesuffix(".json") + ".progress.json"


def fetch_metrics(s3_conn_id: str, metrics_uri: str | None, what: str) -> dict[str, Any]:
    """The metrics a job wrote to ``metrics_uri`` (``--metrics-output``), read with the amazon
    provider's S3 hook; fails naming the object when there is none (the job died before its end)."""
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

    if not metrics_uri:
        raise RuntimeError(f"{what}: no metrics location (the job was submitted without --metrics-output)")
    bucket, key = S3Hook.parse_s3_url(metrics_uri.replace("s3a://", "s3://", 1))
    hook = S3Hook(aws_conn_id=s3_conn_id)
    if not hook.check_for_key(key, bucket_name=bucket):
        raise RuntimeError(f"{what} ended without writing its metrics to {metrics_uri}")
    return json.loads(hook.read_key(key, bucket_name=bucket))


#: Spark properties holding comma-separated lists Spindle fills too (merged, see JobSpec).
LIST_PROPERTIES = ("spark.archives", "spark.yarn.dist.archives", "spark.submit.pyFiles")


def copy_log_to_task_log(log, text: str, title: str) -> None:
    """The driver's log into the Airflow task log, between two markers."""
    log.info("----- %s: begin -----", title)
    for line in text.splitlines():
        log.info("| %s", line)
    log.info("----- %s: end -----", title)


class XComUrlLink(BaseOperatorLink):
    """An extra link whose URL the task pushed to XCom under ``xcom_key`` (computed on the worker
    at task end; read back by the API server through the stored ``_link_<class>`` XCom)."""

    name = "link"
    xcom_key = ""

    def get_link(self, operator: Any, *, ti_key: Any) -> str:
        url = getattr(operator, self.xcom_key, None)
        if isinstance(url, str) and url:
            return url
        from airflow.sdk.execution_time.xcom import XCom

        return XCom.get_value(ti_key=ti_key, key=self.xcom_key) or ""


class CloudSparkUILink(XComUrlLink):
    """ "Spark UI" of a managed cluster (Data Proc UI Proxy / master; EMR's persistent UI)."""

    name = "Spark UI"
    xcom_key = XCOM_SPARK_UI_URL


class CloudConsoleLink(XComUrlLink):
    """The cluster/application page in the cloud console."""

    name = "Cloud console"
    xcom_key = XCOM_CONSOLE_URL
