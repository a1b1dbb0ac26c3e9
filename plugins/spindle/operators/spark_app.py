"""Run a ``spark_apps`` job (``spark_apps/jobs/<job>.py``) on a cluster created earlier in the DAG."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

from airflow.sdk import BaseHook, BaseOperator

from spindle.config import DEFAULT_WAREHOUSE_CONN_ID, repo_root, secrets_source
from spindle.hooks.local_spark import LocalSparkClusterHook
from spindle.hooks.spark_app import SparkAppSubmitHook
from spindle.history import app_history_url
from spindle.links.spark_history import XCOM_SPARK_HISTORY_URL, SparkHistoryLink
from spindle.links.spark_ui import XCOM_SPARK_APP_ID, XCOM_SPARK_UI_URL, SparkUILink
from spindle.spark_package import build_spark_apps_package
from spindle.spark_progress import SparkProgressPoller, default_interval

# Defaults every job gets; a key in ``conf`` wins.
DEFAULT_CONF: dict[str, str] = {
    "spark.ui.showConsoleProgress": "false",  # progress bars are noise in a task log
    # No model hub on clusters: models come from local dirs or shipped archives.
    "spark.executorEnv.HF_HUB_OFFLINE": "1",
    "spark.executorEnv.TRANSFORMERS_OFFLINE": "1",
    "spark.executorEnv.TOKENIZERS_PARALLELISM": "false",
}


def _conf_value(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def spark_conf_mapping(conf: Mapping[str, Any] | str | None) -> dict[str, str]:
    """Extra Spark properties given as a mapping or as its JSON string (a rendered
    ``"{{ params.spark_conf | tojson }}"``), as ``{key: value}`` strings."""
    extra = json.loads(conf) if isinstance(conf, str) and conf.strip() else conf
    if extra and not isinstance(extra, Mapping):
        raise ValueError(f"conf must be a mapping of Spark properties, got {type(extra).__name__}")
    return {str(k): _conf_value(v) for k, v in (extra or {}).items()}


def job_args_to_cli(job_args: Mapping[str, Any] | None) -> list[str]:
    """``{"input": "a", "min_pages": 100, "languages": ["eng", "fre"], "dry_run": True}`` ->
    ``--input a --min-pages 100 --languages eng fre --dry-run``. ``None``, ``False`` and ``""``
    values are left out (the job's default applies)."""
    args: list[str] = []
    for key, value in (job_args or {}).items():
        if value is None or value is False or value == "":
            continue
        flag = "--" + str(key).replace("_", "-")
        if value is True:
            args.append(flag)
        elif isinstance(value, (list, tuple)):
            if value:
                args += [flag, *[str(v) for v in value]]
        else:
            args += [flag, str(value)]
    return args


class SparkAppJobOperator(BaseOperator):
    """Submit ``spark_apps/jobs/<job>.py`` to the cluster ``cluster_id`` (client mode).

    The ``spark_apps`` package is built into a wheel from ``setup.py`` (cached by source hash)
    and shipped with ``--py-files``; the driver's output is streamed into the task log; killing
    the task kills the application. The job gets ``--warehouse-conn-id`` and env
    ``SPINDLE_SECRETS_SOURCE`` (a reference to the secrets store, never a secret value).

    Returns the job's ``SPINDLE_METRICS`` JSON (the task's XCom return value); pushes XCom
    ``spark_app_id`` and ``spark_ui_url``; the "Spark UI" extra link points at the application.

    :param job: module name under ``spark_apps/jobs/``, e.g. ``"embed_text"``.
    :param cluster_id: the id returned by the create-cluster task: ``create.output`` (templated).
    :param job_args: job options as a mapping, turned into ``--key value`` (templated).
    :param application_args: raw job arguments, placed before ``job_args`` (templated).
    :param warehouse_conn_id: connection id passed as ``--warehouse-conn-id``; None to omit.
    :param executor_cores: ``spark.executor.cores`` (templated).
    :param executor_memory: ``spark.executor.memory``: MiB as an integer or ``"2g"`` (templated).
    :param total_executor_cores: ``spark.cores.max``; default: all cores of the cluster (templated).
    :param task_cpus: ``spark.task.cpus`` (templated).
    :param driver_memory: ``spark.driver.memory`` (templated).
    :param conf: extra Spark properties: a mapping, or a JSON object string such as a rendered
        ``"{{ params.spark_conf | tojson }}"`` (templated).
    :param require_metrics: fail the task when the job printed no ``SPINDLE_METRICS`` line.
    :param progress_interval: seconds between the task log's ``Spark progress`` lines (stage,
        tasks done/total, rows/s, read from the driver UI's REST API); default
        ``$SPINDLE_PROGRESS_INTERVAL`` or 15; 0: no lines.
    """

    template_fields: Sequence[str] = (
        "cluster_id",
        "job_args",
        "application_args",
        "executor_cores",
        "executor_memory",
        "total_executor_cores",
        "task_cpus",
        "driver_memory",
        "conf",
    )
    template_fields_renderers: ClassVar[dict[str, str]] = {
        "job_args": "json",
        "conf": "json",
        "application_args": "json",
    }
    operator_extra_links = (SparkUILink(), SparkHistoryLink())
    ui_color = "#fbe9d0"

    def __init__(
        self,
        *,
        job: str,
        cluster_id: str,
        job_args: Mapping[str, Any] | None = None,
        application_args: list[Any] | None = None,
        warehouse_conn_id: str | None = DEFAULT_WAREHOUSE_CONN_ID,
        executor_cores: int | str | None = None,
        executor_memory: int | str | None = None,
        total_executor_cores: int | str | None = None,
        task_cpus: int | str | None = None,
        driver_memory: str | None = None,
        conf: Mapping[str, Any] | str | None = None,
        require_metrics: bool = True,
        progress_interval: float | None = None,
        spark_apps_root: str | None = None,
        cluster_home: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.job = job
        self.cluster_id = cluster_id
        self.job_args = job_args
        self.application_args = application_args
        self.warehouse_conn_id = warehouse_conn_id
        self.executor_cores = executor_cores
        self.executor_memory = executor_memory
        self.total_executor_cores = total_executor_cores
        self.task_cpus = task_cpus
        self.driver_memory = driver_memory
        self.conf = conf
        self.require_metrics = require_metrics
        self.progress_interval = progress_interval
        self.spark_apps_root = spark_apps_root
        self.cluster_home = cluster_home
        self.spark_ui_url: str | None = None
        self.spark_app_id: str | None = None
        self.spark_history_url: str | None = None
        self._hook: SparkAppSubmitHook | None = None

    # ------------------------------------------------------------------ building blocks
    def application_path(self) -> Path:
        root = Path(self.spark_apps_root) if self.spark_apps_root else repo_root()
        path = root / "spark_apps" / "jobs" / f"{self.job}.py"
        if not path.is_file():
            raise FileNotFoundError(f"no job {self.job!r}: {path} does not exist")
        return path

    def build_arguments(self) -> list[str]:
        args = [str(a) for a in (self.application_args or [])] + job_args_to_cli(self.job_args)
        if self.warehouse_conn_id:
            args += ["--warehouse-conn-id", self.warehouse_conn_id]
        return args

    def build_env(self) -> dict[str, str]:
        env: dict[str, str] = {}
        if self.warehouse_conn_id:
            source = secrets_source()
            if not source:
                raise ValueError(
                    f"cannot tell the job where to resolve connection {self.warehouse_conn_id!r}: set "
                    "SPINDLE_SECRETS_SOURCE or use Airflow's LocalFilesystemBackend secrets backend"
                )
            env["SPINDLE_SECRETS_SOURCE"] = source
        # The driver imports spark_apps from the shipped package, never from the checkout.
        repo = os.path.realpath(repo_root())
        paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and os.path.realpath(p) != repo]
        env["PYTHONPATH"] = os.pathsep.join(paths)
        return env

    def build_conf(self, cluster_conf: Mapping[str, str]) -> dict[str, str]:
        python = os.environ.get("PYSPARK_PYTHON") or sys.executable
        conf: dict[str, str] = {
            **DEFAULT_CONF,
            "spark.pyspark.python": python,
            "spark.pyspark.driver.python": python,
        }
        conf.update(cluster_conf)
        if self.task_cpus not in (None, ""):
            conf["spark.task.cpus"] = str(int(self.task_cpus))
        conf.update(spark_conf_mapping(self.conf))
        return conf

    @staticmethod
    def _memory(value: int | str | None) -> str | None:
        if value in (None, ""):
            return None
        return f"{int(value)}m" if str(value).isdigit() else str(value)

    @staticmethod
    def _int(value: int | str | None) -> int | None:
        return None if value in (None, "") else int(value)

    def _register_secret_masks(self) -> None:
        """Fetch the warehouse connection once so Airflow's secrets masker redacts its password
        in this task's log should a job ever print it. Also fails fast on a missing connection."""
        if self.warehouse_conn_id:
            BaseHook.get_connection(self.warehouse_conn_id)

    # ------------------------------------------------------------------ execution
    def execute(self, context: Any) -> dict[str, Any] | None:
        if not self.cluster_id:
            raise ValueError("cluster_id is required: pass cluster_id=create.output")
        cluster = LocalSparkClusterHook(home=self.cluster_home).get_running_cluster(str(self.cluster_id))
        self._register_secret_masks()
        application = self.application_path()
        package = build_spark_apps_package(Path(self.spark_apps_root) if self.spark_apps_root else None, log=self.log)
        ti = context["ti"]
        app_name = f"spindle.{ti.dag_id}.{ti.task_id}"
        self.spark_ui_url = cluster.ui_url
        self._hook = SparkAppSubmitHook(
            master=cluster.master_url,
            master_ui_url=cluster.ui_url,
            conf=self.build_conf(cluster.submit_conf()),
            py_files=str(package),
            executor_cores=self._int(self.executor_cores),
            executor_memory=self._memory(self.executor_memory),
            total_executor_cores=self._int(self.total_executor_cores) or cluster.total_cores,
            driver_memory=self._memory(self.driver_memory),
            name=app_name,
            application_args=self.build_arguments(),
            env_vars=self.build_env(),
        )
        self.log.info("Submitting %s to cluster %s (%s)", application.name, cluster.cluster_id, cluster.master_url)
        interval = default_interval() if self.progress_interval is None else float(self.progress_interval)
        try:
            if interval > 0:
                with SparkProgressPoller(
                    self.log,
                    app_id=lambda: self._hook.spark_app_id,
                    app_name=app_name,
                    host=cluster.host,
                    base_port=int(self._hook._conf.get("spark.ui.port", 4040)),
                    interval=interval,
                ):
                    self._hook.submit(str(application))
            else:
                self._hook.submit(str(application))
        finally:
            self._publish_app(ti, cluster, app_name)
        metrics = self._hook.metrics
        if metrics is None and self.require_metrics:
            raise RuntimeError(f"job {self.job!r} finished without printing a SPINDLE_METRICS line")
        return metrics

    def _publish_app(self, ti: Any, cluster: Any, app_name: str) -> None:
        assert self._hook is not None
        self.spark_app_id = self._hook.find_application_id(app_name)
        self.spark_ui_url = cluster.app_ui_url(self.spark_app_id)
        self.log.info("Spark application %s: %s", self.spark_app_id or "(id unknown)", self.spark_ui_url)
        ti.xcom_push(key=XCOM_SPARK_APP_ID, value=self.spark_app_id)
        ti.xcom_push(key=XCOM_SPARK_UI_URL, value=self.spark_ui_url)
        if cluster.event_log_dir:  # the event log outlives the cluster: the History Server replays it
            self.spark_history_url = app_history_url(self.spark_app_id)
            self.log.info("Spark history (after teardown): %s", self.spark_history_url)
            ti.xcom_push(key=XCOM_SPARK_HISTORY_URL, value=self.spark_history_url)

    def on_kill(self) -> None:
        if self._hook is not None:
            self._hook.on_kill()

    # ------------------------------------------------------------------ OpenLineage
    def get_openlineage_facets_on_start(self) -> Any:
        """The job's input and output datasets and model (``spindle.lineage``), from its args."""
        from spindle.lineage import job_lineage
        from spindle.warehouse import warehouse_root

        root = warehouse_root(self.warehouse_conn_id) if self.warehouse_conn_id else None
        metrics = self._hook.metrics if self._hook is not None else None
        return job_lineage(self.job, self.job_args, root, metrics=metrics)

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> Any:
        return self.get_openlineage_facets_on_start()

    def get_openlineage_facets_on_failure(self, task_instance: Any) -> Any:
        return self.get_openlineage_facets_on_start()
