"""The "Spark UI" extra link of Spindle's job tasks.

How it resolves (Airflow 3):

- On the worker, when a job task ends (success or failure), the task runner calls
  :meth:`SparkUILink.get_link` with the live operator and stores the URL in XCom under
  ``_link_SparkUILink``. The URL is the application's page on the cluster's UI, or the cluster's
  UI when the application id never appeared.
- In the API server (REST ``.../taskInstances/{task_id}/links``, the UI's link button) the
  operator is a deserialized one. The link is registered by ``plugins/spindle_plugin.py`` for
  :class:`~spindle.operators.spark_app.SparkAppJobOperator`, so the API server calls this same
  class, which then reads the stored XCom. Without the plugin, Airflow's generic
  ``XComOperatorLink`` reads the same XCom key, so the link works either way.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator, BaseOperatorLink

if TYPE_CHECKING:
    from airflow.sdk.types import TaskInstanceKey

#: XCom keys the job operator pushes (besides its return value, the job's metrics).
XCOM_SPARK_UI_URL = "spark_ui_url"
XCOM_SPARK_APP_ID = "spark_app_id"


class SparkUILink(BaseOperatorLink):
    """Link to the Spark application's page on the cluster UI (the master UI for local clusters)."""

    name = "Spark UI"

    @property
    def operators(self) -> list[type[Any]]:  # type: ignore[override]
        # Read by Airflow's plugins manager; imported lazily (the operator imports this module).
        from spindle.operators.spark_app import SparkAppJobOperator

        return [SparkAppJobOperator]

    def get_link(self, operator: Any, *, ti_key: TaskInstanceKey) -> str:
        if isinstance(operator, BaseOperator):
            # Worker side, task end: the operator that just ran knows the URL.
            url = getattr(operator, "spark_ui_url", None)
            if url:
                return url
            # XCom must come from the execution-time module: `from airflow.sdk import XCom`
            # does not exist, and a failing import here silently drops the link.
            from airflow.sdk.execution_time.xcom import XCom

            return XCom.get_value(ti_key=ti_key, key=XCOM_SPARK_UI_URL) or ""
        # API server side: read what the worker stored when the task ended.
        from airflow.serialization.definitions.operatorlink import XComOperatorLink

        return XComOperatorLink(name=self.name, xcom_key=self.xcom_key).get_link(operator, ti_key=ti_key)
