"""What every cloud backend shares: job command lines, Spark properties, labels, the log
copier, the "Spark UI"/console links, and the run's staged artifacts.

A cloud job task is described exactly like a local one (:class:`SparkAppJobOperator`): a job
name under ``spark_apps/jobs/``, ``job_args`` turned into ``--key value``, sizing. On a managed
cluster the job also gets the *staged* artifacts (XCom of the stage task, see
:mod:`spindle.backends.staging`): the job file's URI, the ``spark_apps`` wheel as a py-file, the
model archive, and ``rewrites``: local paths the stage task uploaded, replaced in the job's
arguments by their remote URI or archive alias.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping, Sequence
from typing import Any

from airflow.sdk import BaseOperatorLink

from spindle.hooks.spark_app import parse_metrics_line
from spindle.operators.spark_app import DEFAULT_CONF, job_args_to_cli

#: Label/tag keys put on everything Spindle creates, so leaks are findable (see the reaper).
LABEL_MANAGED = "spindle-managed"
LABEL_DAG = "spindle-dag"
LABEL_RUN = "spindle-run"
LABEL_TTL = "spindle-ttl-hours"
LABEL_CREATED = "spindle-created"
LABEL_BACKEND = "spindle-backend"

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
    }


def memory(value: int | str | None) -> str | None:
    if value in (None, ""):
        return None
    return f"{int(value)}m" if str(value).isdigit() else str(value)


def rewrite_args(args: Sequence[str], rewrites: Mapping[str, str]) -> list[str]:
    """Replace arguments that are local paths the stage task uploaded."""
    return [rewrites.get(str(a), str(a)) for a in args]


class JobSpec:
    """The cluster-independent part of a job task (mixin for the backends' job operators)."""

    spec_template_fields: Sequence[str] = (
        "job_args", "application_args", "executor_cores", "executor_memory", "task_cpus",
        "driver_memory", "staged", "settings",
    )  # fmt: skip

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
    ) -> None:
        """``settings``: the backend's settings (``check_backend``'s XCom): warehouse
        connection, secrets source, executor count and extra Spark properties come from it."""
        self.job = job
        self.staged = staged
        self.settings = settings
        self.job_args = job_args
        self.application_args = application_args
        self.executor_cores = executor_cores
        self.executor_memory = executor_memory
        self.task_cpus = task_cpus
        self.driver_memory = driver_memory
        self.metrics: dict[str, Any] | None = None

    def setting(self, key: str, default: Any = None) -> Any:
        value = (self.settings or {}).get(key)
        return default if value is None else value

    # ------------------------------------------------------------------ derived
    def job_uri(self) -> str:
        try:
            return self.staged["jobs"][self.job]
        except (KeyError, TypeError):
            raise ValueError(f"the stage task uploaded no job file for {self.job!r}") from None

    def cli_args(self) -> list[str]:
        args = [str(a) for a in (self.application_args or [])] + job_args_to_cli(self.job_args)
        args = rewrite_args(args, (self.staged or {}).get("rewrites", {}))
        warehouse_conn_id = self.setting("warehouse_conn_id")
        if warehouse_conn_id:
            args += ["--warehouse-conn-id", warehouse_conn_id]
        return args

    def spark_properties(self) -> dict[str, str]:
        """Sizing and defaults as Spark properties; the secrets *reference* reaches the driver
        (cluster mode: the application master's env) and the executors as an env variable."""
        props: dict[str, str] = {k: v for k, v in DEFAULT_CONF.items() if k != "spark.ui.showConsoleProgress"}
        sizing = {
            "spark.executor.cores": self.executor_cores,
            "spark.executor.memory": memory(self.executor_memory),
            "spark.executor.instances": self.setting("num_executors"),
            "spark.task.cpus": self.task_cpus,
            "spark.driver.memory": memory(self.driver_memory),
        }
        props.update({k: str(v) for k, v in sizing.items() if v not in (None, "")})
        secrets_source = self.setting("secrets_source")
        if secrets_source:
            props["spark.yarn.appMasterEnv.SPINDLE_SECRETS_SOURCE"] = secrets_source
            props["spark.executorEnv.SPINDLE_SECRETS_SOURCE"] = secrets_source
        for key in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
            props[f"spark.yarn.appMasterEnv.{key}"] = "1"
        props.update({str(k): str(v) for k, v in self.setting("spark_properties", {}).items()})
        return props

    def py_files(self) -> list[str]:
        return list((self.staged or {}).get("py_files", []))

    def archives(self) -> list[str]:
        return list((self.staged or {}).get("archives", []))

    def read_metrics(self, log_text: str) -> dict[str, Any] | None:
        for line in log_text.splitlines():
            found = parse_metrics_line(line)
            if found is not None:
                self.metrics = found
        return self.metrics


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
