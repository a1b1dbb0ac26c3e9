"""Find what Spindle created in the clouds and outlived its TTL, and delete it.

Every create is labelled (Data Proc labels, EMR / EMR Serverless tags) with
``spindle-managed=true``, ``spindle-dag``, ``spindle-run``, ``spindle-created`` (epoch seconds)
and ``spindle-ttl-hours``. A resource is *expired* when it is older than its own TTL label (or
than ``ttl_hours`` when the reaper is given one). Only live resources are considered (Data Proc
clusters not being deleted, EMR job flows not terminated, Serverless applications not
terminated). Dry run by default: the report says what *would* be deleted.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

from spindle.backends.common import LABEL_CREATED, LABEL_DAG, LABEL_MANAGED, LABEL_RUN, LABEL_TTL

EMR_LIVE = ["STARTING", "BOOTSTRAPPING", "RUNNING", "WAITING"]
SERVERLESS_LIVE = ["CREATING", "CREATED", "STARTING", "STARTED", "STOPPING", "STOPPED"]


@dataclass
class Finding:
    backend: str
    resource_id: str
    name: str
    dag: str
    run: str
    age_hours: float
    ttl_hours: float
    expired: bool
    action: str = "keep"
    error: str | None = None


def _finding(backend: str, resource_id: str, name: str, labels: dict[str, str], now: float,
             ttl_override: float | None) -> Finding | None:  # fmt: skip
    if labels.get(LABEL_MANAGED) != "true":
        return None
    try:
        created = float(labels.get(LABEL_CREATED, "0"))
    except ValueError:
        created = 0.0
    try:
        ttl = float(ttl_override if ttl_override is not None else labels.get(LABEL_TTL, "6"))
    except ValueError:
        ttl = 6.0
    age = (now - created) / 3600 if created else float("inf")
    return Finding(backend, resource_id, name, labels.get(LABEL_DAG, ""), labels.get(LABEL_RUN, ""),
                   round(age, 2), ttl, age > ttl)  # fmt: skip


def reap_yandex(settings: dict[str, Any], dry_run: bool, ttl_override: float | None, now: float) -> list[Finding]:
    import yandex.cloud.dataproc.v1.cluster_pb2 as cluster_pb

    from spindle.yandex.hooks import SpindleDataprocHook

    hook = SpindleDataprocHook(yandex_conn_id=settings["connection_id"])
    findings = []
    for cluster in hook.list_clusters(settings["folder_id"]):
        if cluster.status == cluster_pb.Cluster.STATUS_UNKNOWN:
            continue
        found = _finding("yandex", cluster.id, cluster.name, dict(cluster.labels), now, ttl_override)
        if found is None:
            continue
        if found.expired:
            found.action = "would delete" if dry_run else "deleted"
            if not dry_run:
                try:
                    hook.dataproc_client.delete_cluster(cluster.id)
                except Exception as err:
                    found.action, found.error = "delete failed", str(err)
        findings.append(found)
    return findings


def _aws_client(settings: dict[str, Any], service: str):
    from airflow.providers.amazon.aws.hooks.base_aws import AwsBaseHook

    return AwsBaseHook(aws_conn_id=settings["aws_conn_id"], client_type=service,
                       region_name=settings.get("region_name")).get_conn()  # fmt: skip


def reap_emr(settings: dict[str, Any], dry_run: bool, ttl_override: float | None, now: float) -> list[Finding]:
    emr = _aws_client(settings, "emr")
    findings = []
    for page in emr.get_paginator("list_clusters").paginate(ClusterStates=EMR_LIVE):
        for summary in page["Clusters"]:
            cluster = emr.describe_cluster(ClusterId=summary["Id"])["Cluster"]
            tags = {t["Key"]: t["Value"] for t in cluster.get("Tags", [])}
            found = _finding("emr", cluster["Id"], cluster.get("Name", ""), tags, now, ttl_override)
            if found is None:
                continue
            if found.expired:
                found.action = "would terminate" if dry_run else "terminated"
                if not dry_run:
                    try:
                        emr.terminate_job_flows(JobFlowIds=[cluster["Id"]])
                    except Exception as err:
                        found.action, found.error = "terminate failed", str(err)
            findings.append(found)
    return findings


def reap_emr_serverless(settings: dict[str, Any], dry_run: bool, ttl_override: float | None,
                        now: float) -> list[Finding]:  # fmt: skip
    client = _aws_client(settings, "emr-serverless")
    findings = []
    for page in client.get_paginator("list_applications").paginate(states=SERVERLESS_LIVE):
        for summary in page["applications"]:
            app = client.get_application(applicationId=summary["id"])["application"]
            found = _finding("emr_serverless", app["applicationId"], app.get("name", ""), app.get("tags", {}),
                             now, ttl_override)  # fmt: skip
            if found is None:
                continue
            if found.expired:
                found.action = "would delete" if dry_run else "deleted"
                if not dry_run:
                    try:
                        if app["state"] not in ("CREATED", "STOPPED"):
                            client.stop_application(applicationId=app["applicationId"])
                            for _ in range(120):
                                state = client.get_application(applicationId=app["applicationId"])
                                if state["application"]["state"] == "STOPPED":
                                    break
                                time.sleep(5)
                        client.delete_application(applicationId=app["applicationId"])
                    except Exception as err:
                        found.action, found.error = "delete failed", str(err)
            findings.append(found)
    return findings


REAPERS = {"yandex": reap_yandex, "emr": reap_emr, "emr_serverless": reap_emr_serverless}


def reap(backends: list[str], dry_run: bool = True, ttl_hours: float | None = None,
         now: float | None = None) -> dict[str, Any]:  # fmt: skip
    """Run the reapers of ``backends`` whose settings exist; return the report (and print it)."""
    from airflow.sdk import Variable

    from spindle.backends.config import settings_variable, validate_settings

    now = time.time() if now is None else now
    report: dict[str, Any] = {"dry_run": dry_run, "findings": [], "skipped": {}}
    for backend in backends:
        variable = settings_variable(backend)
        raw = Variable.get(variable, default=None)
        if raw is None:
            report["skipped"][backend] = f"Airflow Variable {variable!r} is not set"
            continue
        settings = validate_settings(backend, raw, f"Airflow Variable {variable!r}")
        report["findings"] += [asdict(f) for f in REAPERS[backend](settings, dry_run, ttl_hours, now)]
    print(format_report(report))
    return report


def format_report(report: dict[str, Any]) -> str:
    mode = "DRY RUN: nothing deleted" if report["dry_run"] else "deleting expired resources"
    lines = [f"Spindle reaper ({mode})"]
    rows = report["findings"]
    if rows:
        lines.append(f"{'backend':<15} {'id':<24} {'age h':>8} {'ttl h':>6}  {'action':<16} dag / run")
        for f in rows:
            lines.append(f"{f['backend']:<15} {f['resource_id']:<24} {f['age_hours']:>8} {f['ttl_hours']:>6}  "
                         f"{f['action']:<16} {f['dag']} / {f['run']}" + (f"  ERROR {f['error']}" if f["error"] else ""))  # fmt: skip
    expired = sum(1 for f in rows if f["expired"])
    lines.append(f"{len(rows)} Spindle resource(s) found, {expired} past their TTL.")
    for backend, why in report["skipped"].items():
        lines.append(f"{backend}: skipped ({why})")
    return "\n".join(lines)
