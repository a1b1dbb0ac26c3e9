"""The reaper finds Spindle-labelled clusters/applications past their TTL; dry run by default,
except in the reaper DAG's scheduled runs, which delete."""

from __future__ import annotations

import time

from spindle.backends.reaper import reap

from tests.support.cloud import run_dag, run_dag_scheduled, set_backend_settings

OLD = str(int(time.time()) - 10 * 3600)  # created 10 h ago
NEW = str(int(time.time()) - 60)


def _labels(created: str, dag: str = "spindle_nightly_books") -> dict[str, str]:
    return {
        "spindle-managed": "true",
        "spindle-dag": dag,
        "spindle-run": "manual__x",
        "spindle-created": created,
        "spindle-ttl-hours": "6",
    }


def test_reaper_dry_run_then_delete(fake_aws, capsys):
    set_backend_settings("emr")
    set_backend_settings("emr_serverless")
    emr = fake_aws.moto.client("emr")
    spec = {
        "ReleaseLabel": "emr-7.5.0",
        "JobFlowRole": "EMR_EC2_DefaultRole",
        "ServiceRole": "EMR_DefaultRole",
        "Instances": {"MasterInstanceType": "m5.xlarge", "InstanceCount": 1, "KeepJobFlowAliveWhenNoSteps": True},
    }
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


def test_reaper_dag_scheduled_run_deletes_manual_run_does_not(fake_aws, cloud_dagbag):
    """Through the DAG: a manual run with the defaults only reports; a scheduled run terminates
    the expired job flow even with ``dry_run: true`` in its conf (scheduled runs ignore it)."""
    set_backend_settings("emr")
    emr = fake_aws.moto.client("emr")
    spec = {
        "ReleaseLabel": "emr-7.5.0",
        "JobFlowRole": "EMR_EC2_DefaultRole",
        "ServiceRole": "EMR_DefaultRole",
        "Instances": {"MasterInstanceType": "m5.xlarge", "InstanceCount": 1, "KeepJobFlowAliveWhenNoSteps": True},
    }
    old = emr.run_job_flow(Name="old-dag", Tags=[{"Key": k, "Value": v} for k, v in _labels(OLD).items()], **spec)
    new = emr.run_job_flow(Name="new-dag", Tags=[{"Key": k, "Value": v} for k, v in _labels(NEW).items()], **spec)

    def state(flow):
        return emr.describe_cluster(ClusterId=flow["JobFlowId"])["Cluster"]["Status"]["State"]

    run, states = run_dag(cloud_dagbag, "spindle_reaper", backends=["emr"])
    assert str(run.run_type) in ("manual", "DagRunType.MANUAL") and states == {
        "reap": "success",
        "drop_partial_vectors": "success",
    }
    assert state(old) != "TERMINATED"

    run, states = run_dag_scheduled(cloud_dagbag, "spindle_reaper", backends=["emr"], dry_run=True)
    assert run.run_type == "scheduled" and states == {"reap": "success", "drop_partial_vectors": "success"}
    assert state(old) == "TERMINATED"
    assert state(new) != "TERMINATED"
    emr.terminate_job_flows(JobFlowIds=[new["JobFlowId"]])
