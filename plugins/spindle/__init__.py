"""Spindle's Airflow side: ephemeral Spark cluster hooks, operators, the Spark UI link and the
shared DAG-building helpers. Laid out like an Airflow provider (hooks/, operators/, links/).

Airflow puts ``plugins/`` on ``sys.path``, so DAG files import ``spindle.*`` directly. Nothing
here is shipped to a Spark cluster: the cluster side is the ``spark_apps`` package, which
Airflow code only runs as a CLI (see docs/CONTRACTS.md).
"""
