"""Packages ``spark_apps``: the code that runs on the Spark cluster.

The wheel built from this file is what every job ships (``--py-files`` locally,
``python_file_uris`` on Data Proc, S3 on EMR). Airflow-side code lives in ``plugins/`` and is
deliberately not part of it: clusters run old Spark and Python (3.8) without Airflow.
"""

from setuptools import find_packages, setup

setup(
    name="spindle-spark-apps",
    version="0.1.0",
    description="Spindle's PySpark jobs: book preparation, text and cover embeddings, LLM transforms",
    packages=find_packages(include=["spark_apps", "spark_apps.*"]),
    python_requires=">=3.8",
    # Cluster images bring pyspark, pandas and pyarrow; models need these on the executors.
    extras_require={"models": ["sentence-transformers", "transformers", "torch", "pillow"]},
)
