"""The Yandex Data Proc backend: its settings, its lane, its reaper (see :mod:`spindle.backends.registry`).

Lane: ``stage`` → ``create_cluster`` (the provider's ``DataprocCreateClusterOperator``, or the
start/stop and shared strategies) → one ``DataprocCreatePysparkJobOperator`` per job →
``delete_cluster`` (teardown). Data Proc reads object storage as ``s3a://`` (Object Storage).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from spindle.backends.registry import REQUIRED, Backend
from spindle.yandex import shared

#: Data Proc cluster strategies (setting ``strategy``), see docs/CLOUD_BACKENDS.md.
STRATEGIES = ("create_delete", "start_stop", "shared")

SETTINGS: dict[str, tuple[Any, Any, str]] = {
    "connection_id": (str, "yandexcloud_default", "Yandex Cloud connection (credentials, endpoint)"),
    "s3_conn_id": (
        str,
        "yandex_object_storage",
        "AWS-type connection for Object Storage (endpoint_url https://storage.yandexcloud.net in its extra)",
    ),
    "folder_id": (str, REQUIRED, "folder the cluster is created in"),
    "zone": (str, "ru-central1-a", "availability zone"),
    "subnet_id": (str, REQUIRED, "subnet of every cluster host"),
    "service_account_id": (str, REQUIRED, "service account of the cluster (bucket and Lockbox access)"),
    "ssh_public_keys": (list, [], "SSH keys put on the hosts (or oslogin_enabled: true)"),
    "oslogin_enabled": (bool, False, "OS Login instead of SSH keys"),
    "image_version": (str, "2.1", "Data Proc image version"),
    "masternode_resource_preset": (str, "s3-c2-m8", "host class of the master"),
    "datanode_resource_preset": (str, "s3-c4-m16", "host class of the data nodes"),
    "datanode_count": (int, 1, "data nodes"),
    "computenode_resource_preset": ((str, type(None)), None, "host class of the compute nodes"),
    "computenode_count": (int, 0, "compute nodes"),
    "disk_size_gb": (int, 64, "disk size of every host, GiB"),
    "ui_proxy": (bool, True, "enable UI Proxy (the Spark UI link uses it)"),
    "security_group_ids": (list, [], "security groups"),
    "log_group_id": ((str, type(None)), None, "Cloud Logging group"),
    "cluster_properties": (dict, {}, "cluster properties, e.g. spark:spark.sql.shuffle.partitions"),
    "pip_packages": (
        dict,
        {},
        "pip packages installed on every host, name -> version spec (with environment: provided)",
    ),
    "services": (
        list,
        ["HDFS", "YARN", "SPARK"],
        "Data Proc services: what Spark on YARN needs, not the provider's default HIVE and MAPREDUCE",
    ),
    "strategy": (
        str,
        "create_delete",
        "create_delete (a cluster per run), start_stop (start the persistent cluster "
        "cluster_id, stop it afterwards) or shared (use the cluster DAG "
        "spindle_shared_cluster_open published, release it afterwards)",
    ),
    "cluster_id": ((str, type(None)), None, "the persistent cluster (strategy start_stop only)"),
    "master_ui_port": (int, 8088, "master UI port for the Spark UI link when UI Proxy is off"),
    "deferrable": (
        (bool, type(None)),
        None,
        "job tasks wait in the triggerer, freeing their worker slot (null: [operators] default_deferrable)",
    ),
    "poll_interval": ((int, float), 5, "seconds between job status polls of a deferred job task"),
}


def validate(settings: Mapping[str, Any]) -> list[str]:
    errors = []
    if not settings["ssh_public_keys"] and not settings["oslogin_enabled"]:
        errors.append("setting 'ssh_public_keys' is missing (or set 'oslogin_enabled': true)")
    if settings["strategy"] not in STRATEGIES:
        errors.append(f"setting 'strategy' must be one of {', '.join(STRATEGIES)}, not {settings['strategy']!r}")
    elif settings["strategy"] == "start_stop" and not settings["cluster_id"]:
        errors.append("setting 'cluster_id' is missing (required by strategy start_stop)")
    elif settings["strategy"] == "shared" and settings["cluster_id"]:
        errors.append(
            "setting 'cluster_id' must not be set with strategy shared: the cluster is the one "
            "DAG spindle_shared_cluster_open published (asset spindle_shared_cluster)"
        )
    return errors


def acquire_shared_cluster(context: Any, settings: dict[str, Any]) -> None:
    """``strategy: shared``: the cluster DAG ``spindle_shared_cluster_open`` published becomes
    the run's ``cluster_id``; fails here, before anything runs, when it is missing or stale."""
    if settings.get("strategy") != "shared":
        return
    acquired = shared.acquire(context["inlet_events"], settings, context["ti"].dag_id)
    settings["cluster_id"] = acquired["cluster_id"]
    print(
        f"Shared Data Proc cluster {acquired['cluster_id']} (opened by {acquired.get('opened_by')}, "
        f"models {acquired['models']})"
    )


def build_lane(
    check: Any, jobs: Sequence[Any], model: Any, inputs: Any, job_kwargs: Callable[[Any], dict[str, Any]]
) -> tuple[Any, Any, Any]:
    """stage → create_cluster → one PySpark job per job → delete_cluster (teardown)."""
    from spindle.backends.lanes import single_task_lane
    from spindle.yandex.operators import (
        SpindleDataprocCreateClusterOperator,
        SpindleDataprocDeleteClusterOperator,
        SpindleDataprocPysparkJobOperator,
    )

    operators = (
        SpindleDataprocCreateClusterOperator,
        SpindleDataprocPysparkJobOperator,
        SpindleDataprocDeleteClusterOperator,
    )
    return single_task_lane(check, jobs, model, inputs, job_kwargs, operators=operators)


def reap(settings: Mapping[str, Any], dry_run: bool, ttl_override: float | None, now: float) -> list[Any]:
    """Delete the Spindle-labelled Data Proc clusters of the folder past their TTL."""
    import yandex.cloud.dataproc.v1.cluster_pb2 as cluster_pb

    from spindle.backends.reaper import act_on, finding
    from spindle.yandex.hooks import SpindleDataprocHook

    hook = SpindleDataprocHook(yandex_conn_id=settings["connection_id"])
    findings = []
    for cluster in hook.list_clusters(settings["folder_id"]):
        if cluster.status == cluster_pb.Cluster.STATUS_UNKNOWN:
            continue
        found = finding("yandex", cluster.id, cluster.name, dict(cluster.labels), now, ttl_override)
        if found is None:
            continue
        act_on(found, dry_run, hook.dataproc_client.delete_cluster, cluster.id)
        findings.append(found)
    return findings


DATAPROC = Backend(
    name="yandex",
    title="Yandex Data Proc",
    settings=SETTINGS,
    build_lane=build_lane,
    reap=reap,
    validate=validate,
    on_check=acquire_shared_cluster,
    check_inlets=(shared.SHARED_CLUSTER,),
)
