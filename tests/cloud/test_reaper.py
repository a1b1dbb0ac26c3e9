"""The reaper finds Spindle-labelled clusters/applications past their TTL; dry run by default."""

from __future__ import annotations

import time

from conftest import set_backend_settings

from spindle.backends.reaper import reap

OLD = str(int(time.time()) - 10 * 3600)  # created 10 h ago
NEW = str(int(time.time()) - 60)


def _labels(created: str, dag: str = "spindle_nightly_books") -> dict[str, str]:
    return {"spindle-managed": "true", "spindle-dag": dag, "spindle-run": "manual__x",
            "spindle-created": created, "spindle-ttl-hours": "6"}  # fmt: skip


def test_reaper_dry_run_then_delete(fake_aws, capsys):
    set_backend_settings("emr")
    set_backend_settings("emr_serverless")
    emr = fake_aws.moto.client("emr")
    spec = {"ReleaseLabel": "emr-7.5.0", "JobFlowRole": "EMR_EC2_DefaultRole", "ServiceRole": "EMR_DefaultRole",
            "Instances": {"MasterInstanceType": "m5.xlarge", "InstanceCount": 1, "KeepJobFlowAliveWhenNoSteps": True}}  # fmt: skip
    old = emr.run_job_flow(Name="old", Tags=[{"Key": k, "Value": v} for k, v in _labels(OLD).items()], **spec)
    new = emr.run_job_flow(Name="new", Tags=[{"Key": k, "Value": v} for k, v in _labels(NEW).items()], **spec)
    foreign = emr.run_job_flow(Name="not-ours", Tags=[{"Key": "team", "Value": "x"}], **spec)
    sl = fake_aws.moto.client("emr-serverless")
    app = sl.create_application(name="old-app", releaseLabel="emr-7.5.0", type="SPARK", tags=_labels(OLD))

    report = reap(["emr", "emr_serverless", "yandex"], dry_run=True)
    by_id = {f["resource_id"]: f for f in report["findings"]}
    assert by_id[old["JobFlowId"]]["action"] == "would terminate"
    assert by_id[new["JobFlowId"]]["action"] == "keep"
    assert foreign["JobFlowId"] not in by_id
    assert by_id[app["applicationId"]]["action"] == "would delete"
    out = capsys.readouterr().out
    assert "DRY RUN" in out and old["JobFlowId"] in out
    assert emr.describe_cluster(ClusterId=old["JobFlowId"])["Cluster"]["Status"]["State"] != "TERMINATED"

    report = reap(["emr", "emr_serverless"], dry_run=False)
    state = emr.describe_cluster(ClusterId=old["JobFlowId"])["Cluster"]["Status"]["State"]
    assert state == "TERMINATED"
    assert emr.describe_cluster(ClusterId=new["JobFlowId"])["Cluster"]["Status"]["State"] != "TERMINATED"
    assert sl.get_application(applicationId=app["applicationId"])["application"]["state"] == "TERMINATED"
    emr.terminate_job_flows(JobFlowIds=[new["JobFlowId"], foreign["JobFlowId"]])
