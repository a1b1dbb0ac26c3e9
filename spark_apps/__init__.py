"""Spindle's PySpark applications: the code that runs on the cluster.

Rules for this package (checked by tests/test_spark_apps_py38.py): no Airflow imports and no
syntax newer than Python 3.8, because managed clusters (Data Proc image 2.1) run Spark 3.3+
on Python 3.8. Each job in ``spark_apps.jobs`` is a CLI: ``python -m spark_apps.jobs.<job>``
or ``spark-submit spark_apps/jobs/<job>.py``.
"""
