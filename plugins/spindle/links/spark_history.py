"""The "Spark History" extra link of Spindle's local job tasks: the finished application on the
Spark History Server (``spindle.history``), which replays the kept event log after the cluster
is gone, unlike the "Spark UI" link (the live cluster's page).

Resolved like :class:`~spindle.links.spark_ui.SparkUILink`: computed on the worker when the
task ends and stored in XCom (``_link_SparkHistoryLink``), read back in the API server.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator, BaseOperatorLink

if TYPE_CHECKING:
    from airflow.sdk.types import TaskInstanceKey

#: XCom key the job operator pushes: the application's History Server URL.
XCOM_SPARK_HISTORY_URL = "spark_history_url"


class SparkHistoryLink(BaseOperatorLink):
    """Link to the finished Spark application on the History Server."""

    name = "Spark History"

    @property
    def operators(self) -> list[type[Any]]:  # type: ignore[override]
        from spindle.operators.spark_app import SparkAppJobOperator

        return [SparkAppJobOperator]

    def get_link(self, operator: Any, *, ti_key: TaskInstanceKey) -> str:
        if isinstance(operator, BaseOperator):  # worker side, task end
            url = getattr(operator, "spark_history_url", None)
            if url:
                return url
            from airflow.sdk.execution_time.xcom import XCom

            return XCom.get_value(ti_key=ti_key, key=XCOM_SPARK_HISTORY_URL) or ""
        from airflow.serialization.definitions.operatorlink import XComOperatorLink

        return XComOperatorLink(name=self.name, xcom_key=self.xcom_key).get_link(operator, ti_key=ti_key)
