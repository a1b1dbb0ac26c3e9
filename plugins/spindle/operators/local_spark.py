"""Create and delete a local Spark standalone cluster (thin operators over LocalSparkClusterHook)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from airflow.sdk import BaseOperator

from spindle.history import local_event_log_dir
from spindle.hooks.local_spark import LocalSparkClusterHook

#: XCom keys pushed by the create operator besides its return value (the cluster id).
XCOM_MASTER_URL = "master_url"
XCOM_UI_URL = "ui_url"


class LocalSparkCreateClusterOperator(BaseOperator):
    """Start a Spark master and ``num_workers`` workers on this machine; wait until all workers
    are registered. Returns the ``cluster_id`` (pass ``create.output`` to the job and delete
    operators) and pushes XCom ``master_url`` and ``ui_url``.

    :param num_workers: workers to start (templated).
    :param worker_cores: cores each worker offers (templated).
    :param worker_memory: memory each worker offers: MiB as an integer or ``"2g"`` (templated).
    :param cluster_id_prefix: the id is ``<prefix>-<UTC time>-<random>``.
    :param startup_timeout: seconds to wait for the master and workers.
    :param cluster_home: folder of the per-cluster folders (default ``$SPINDLE_HOME/clusters``).
    :param event_log_dir: where the cluster's applications keep their Spark event logs, for the
        History Server after the cluster is gone (default: the warehouse's ``_spark-events``,
        :func:`spindle.history.local_event_log_dir`).
    :param keep_event_logs: False: no event logs (no "Spark History" link).
    """

    template_fields: Sequence[str] = ("num_workers", "worker_cores", "worker_memory")
    ui_color = "#e4f0e8"

    def __init__(
        self,
        *,
        num_workers: int | str = 1,
        worker_cores: int | str = 1,
        worker_memory: int | str = "1g",
        cluster_id_prefix: str = "spindle-local",
        startup_timeout: float = 120.0,
        cluster_home: str | None = None,
        event_log_dir: str | None = None,
        keep_event_logs: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.event_log_dir = event_log_dir
        self.keep_event_logs = keep_event_logs
        self.num_workers = num_workers
        self.worker_cores = worker_cores
        self.worker_memory = worker_memory
        self.cluster_id_prefix = cluster_id_prefix
        self.startup_timeout = startup_timeout
        self.cluster_home = cluster_home
        self._hook: LocalSparkClusterHook | None = None

    @property
    def hook(self) -> LocalSparkClusterHook:
        if self._hook is None:
            self._hook = LocalSparkClusterHook(home=self.cluster_home)
        return self._hook

    def execute(self, context: Any) -> str:
        ti = context["ti"]
        cluster = self.hook.create_cluster(
            num_workers=int(self.num_workers),
            worker_cores=int(self.worker_cores),
            worker_memory=int(self.worker_memory) if str(self.worker_memory).isdigit() else self.worker_memory,
            cluster_id_prefix=self.cluster_id_prefix,
            timeout=self.startup_timeout,
            labels={"dag": ti.dag_id, "run": ti.run_id, "task": ti.task_id, "try": str(ti.try_number)},
            event_log_dir=self._event_log_dir(),
        )
        self._cluster_id = cluster.cluster_id
        try:
            ti.xcom_push(key=XCOM_MASTER_URL, value=cluster.master_url)
            ti.xcom_push(key=XCOM_UI_URL, value=cluster.ui_url)
        except BaseException:
            # The id would never reach the teardown, and a retry creates a new cluster.
            self.log.error("Could not publish local Spark cluster %s; deleting it", cluster.cluster_id)
            self.hook.delete_cluster(cluster.cluster_id)
            raise
        return cluster.cluster_id

    def _event_log_dir(self) -> str | None:
        if not self.keep_event_logs:
            return None
        return self.event_log_dir or str(local_event_log_dir())

    def on_kill(self) -> None:
        # create_cluster stops what it started when it fails; a kill after it returned leaves
        # a running cluster whose id may never reach XCom: stop it here.
        cluster_id = getattr(self, "_cluster_id", None)
        if cluster_id:
            self.hook.delete_cluster(cluster_id)


class LocalSparkDeleteClusterOperator(BaseOperator):
    """Stop every process of a local cluster and verify they are gone; a cluster that is already
    gone is fine. Wire it as the teardown of the create task::

        delete = LocalSparkDeleteClusterOperator(task_id="delete_cluster", cluster_id=create.output)
        delete.as_teardown(setups=create)

    :param cluster_id: the id returned by :class:`LocalSparkCreateClusterOperator` (templated).
    """

    template_fields: Sequence[str] = ("cluster_id",)
    ui_color = "#f3e4e4"

    def __init__(
        self, *, cluster_id: str, timeout: float = 30.0, cluster_home: str | None = None, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.cluster_id = cluster_id
        self.timeout = timeout
        self.cluster_home = cluster_home

    def execute(self, context: Any) -> bool:
        if not self.cluster_id:
            raise ValueError("cluster_id is required: pass cluster_id=create.output")
        return LocalSparkClusterHook(home=self.cluster_home).delete_cluster(str(self.cluster_id), timeout=self.timeout)
