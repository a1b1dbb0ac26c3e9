"""Airflow plugin: registers Spindle's "Spark UI" and "Spark History" extra links for
SparkAppJobOperator tasks.

The API server resolves plugin-registered links itself (REST ``.../links``, the UI's button);
see ``spindle/links/spark_ui.py`` for how the link is computed on the worker and read back.
"""

from __future__ import annotations

from typing import ClassVar

from airflow.plugins_manager import AirflowPlugin
from spindle.links.spark_history import SparkHistoryLink
from spindle.links.spark_ui import SparkUILink


class SpindlePlugin(AirflowPlugin):
    name = "spindle"
    operator_extra_links: ClassVar[list] = [SparkUILink(), SparkHistoryLink()]
