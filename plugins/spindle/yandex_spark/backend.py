"""The Yandex Managed Service for Apache Spark backend: settings, lane, reaper (see
:mod:`spindle.backends.registry`).

Lane: ``stage`` → ``create_cluster`` → one :class:`ManagedSparkPysparkJobOperator` per job →
``delete_cluster`` (teardown). Jobs read Object Storage as ``s3a://``; the cluster environment
and models go along as the jobs' ``archive_uris`` (the same archive as the Data Proc lane), or
the cluster installs ``pip_packages`` (with ``environment: provided``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from spindle.backends.registry import REQUIRED, Backend

#: Cluster strategies (setting ``strategy``): a cluster per run, or a persistent one started and
#: stopped by each run. Data Proc's ``shared`` strategy is not offered here (docs/CLOUD_BACKENDS.md).
STRATEGIES = ("create_delete", "start_stop")

SETTINGS: dict[str, tuple[Any, Any, str]] = {
    "connection_id": (str, "yandexcloud_default", "Yandex Cloud connection (the Data Proc lane's)"),
    "s3_conn_id": (
        str,
        "yandex_object_storage",
        "AWS-type connection for Object Storage (endpoint_url https://storage.yandexcloud.net in its extra)",
    ),
    "folder_id": (str, REQUIRED, "folder the cluster is created in"),
    "subnet_ids": (list, REQUIRED, "subnets of the cluster's network"),
    "security_group_ids": (list, [], "security groups"),
    "service_account_id": (str, REQUIRED, "service account of the cluster (bucket and Lockbox access)"),
    "spark_version": ((str, type(None)), None, "Spark version of the cluster (null: the service's default)"),
    "driver_resource_preset": (str, "c2-m8", "resource preset of the driver pool"),
    "driver_count": (int, 1, "hosts in the driver pool"),
    "executor_resource_preset": (str, "c4-m16", "resource preset of the executor pool"),
    "executor_count": (int, 1, "hosts in the executor pool (the minimum, may be 0, when executor_max_count is set)"),
    "executor_max_count": ((int, type(None)), None, "auto scale the executor pool up to this many hosts"),
    "preemptible_executors": (bool, False, "preemptible executor hosts (cheaper, may be taken back)"),
    "history_server": (bool, True, "run the Spark History Server (the 'Spark History' link)"),
    "pip_packages": (list, [], "pip requirements the cluster installs, e.g. 'torch==2.3.1' (environment: provided)"),
    "deb_packages": (list, [], "deb packages the cluster installs"),
    "environment_id": ((str, type(None)), None, "a prebuilt environment of the service (environment: provided)"),
    "log_group_id": ((str, type(None)), None, "Cloud Logging group of the cluster"),
    "strategy": (str, "create_delete", "create_delete (a cluster per run) or start_stop (start cluster_id, stop it)"),
    "cluster_id": ((str, type(None)), None, "the persistent cluster (strategy start_stop only)"),
    "create_timeout_minutes": ((int, float), 30, "how long create_cluster waits for the cluster"),
    "deferrable": (
        (bool, type(None)),
        None,
        "job tasks wait in the triggerer, freeing their worker slot (null: [operators] default_deferrable)",
    ),
    "poll_interval": ((int, float), 5, "seconds between job status (and driver log) polls"),
}


def validate(settings: Mapping[str, Any]) -> list[str]:
    errors = []
    if not settings["subnet_ids"]:
        errors.append("setting 'subnet_ids' is empty (the cluster needs a subnet)")
    if settings["strategy"] not in STRATEGIES:
        errors.append(f"setting 'strategy' must be one of {', '.join(STRATEGIES)}, not {settings['strategy']!r}")
    elif settings["strategy"] == "start_stop" and not settings["cluster_id"]:
        errors.append("setting 'cluster_id' is missing (required by strategy start_stop)")
    if settings["executor_max_count"] is not None and settings["executor_max_count"] < settings["executor_count"]:
        errors.append("setting 'executor_max_count' must be at least 'executor_count'")
    elif settings["executor_max_count"] is None and settings["executor_count"] < 1:
        errors.append("setting 'executor_count' must be at least 1 (0 only as the minimum of an auto scale)")
    return errors


def build_lane(
    check: Any, jobs: Sequence[Any], model: Any, inputs: Any, job_kwargs: Callable[[Any], dict[str, Any]]
) -> tuple[Any, Any, Any]:
    """stage → create_cluster → one PySpark job per job → delete_cluster (teardown)."""
    from spindle.backends.lanes import single_task_lane
    from spindle.yandex_spark.operators import (
        ManagedSparkCreateClusterOperator,
        ManagedSparkDeleteClusterOperator,
        ManagedSparkPysparkJobOperator,
    )

    operators = (ManagedSparkCreateClusterOperator, ManagedSparkPysparkJobOperator, ManagedSparkDeleteClusterOperator)
    return single_task_lane(check, jobs, model, inputs, job_kwargs, operators=operators)


def reap(settings: Mapping[str, Any], dry_run: bool, ttl_override: float | None, now: float) -> list[Any]:
    """Delete the Spindle-labelled Managed Spark clusters of the folder past their TTL."""
    from spindle.backends.reaper import act_on, finding
    from spindle.yandex_spark.hooks import ManagedSparkHook

    hook = ManagedSparkHook(yandex_conn_id=settings["connection_id"])
    findings = []
    for cluster in hook.list_clusters(settings["folder_id"]):
        found = finding("yandex_spark", cluster.id, cluster.name, dict(cluster.labels), now, ttl_override)
        if found is None:
            continue
        act_on(found, dry_run, hook.delete_cluster, cluster.id)
        findings.append(found)
    return findings


MANAGED_SPARK = Backend(
    name="yandex_spark",
    title="Yandex Managed Service for Apache Spark",
    settings=SETTINGS,
    build_lane=build_lane,
    reap=reap,
    validate=validate,
)
