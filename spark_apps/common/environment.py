"""Fail at once, and by name, when the cluster's Python lacks what a job imports.

A managed cluster's own Python has no torch or transformers: they reach it in the cluster
environment archive the Airflow side ships (``--archives env.tar.gz#environment`` with
``PYSPARK_PYTHON=./environment/bin/python``) or in a custom image. Without either, a model job
would die deep in a UDF with a bare ``ModuleNotFoundError``; this check names every missing
package and the way to ship them before any Spark work starts.
"""

import importlib.util
import sys


class MissingPackagesError(RuntimeError):
    pass


def missing(modules):
    """The top-level modules of ``modules`` that this interpreter cannot import."""
    return [name for name in modules if importlib.util.find_spec(name) is None]


def require(job, modules):
    absent = missing(modules)
    if absent:
        raise MissingPackagesError(
            "{}: the cluster's Python ({}, {}) has no {}. Ship the Spindle cluster environment "
            "(backend setting 'environment': 'build' or the s3:// URI of a packed archive) or run on "
            "an image that has them; see docs/CLOUD_BACKENDS.md, 'The cluster environment'".format(
                job, sys.executable, sys.version.split()[0], ", ".join(absent)
            )
        )
