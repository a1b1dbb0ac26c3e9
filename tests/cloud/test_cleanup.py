"""Nothing leaks: a create task that fails after the cluster exists deletes it; a job task that
is killed cancels its job. Spindle's operators are driven unmodified against the fakes, with a
minimal task context (the task instance's ids and XCom push)."""

from __future__ import annotations

import time

import pytest
from spindle.backends.config import validate_settings

from tests.support.cloud import set_backend_settings
from tests.support.faults import FaultRecord


class _TaskInstance:
    """What the create operators read from the context's task instance."""

    def __init__(self, task_id: str) -> None:
        self.dag_id, self.run_id, self.task_id, self.try_number, self.map_index = (
            "spindle_nightly_books",
            "manual__cleanup",
            task_id,
            1,
            -1,
        )
        self.xcom: dict[str, object] = {}

    def xcom_push(self, key: str, value: object) -> None:
        self.xcom[key] = value


def _context(task_id: str = "create_cluster") -> dict:
    ti = _TaskInstance(task_id)
    return {"ti": ti, "task_instance": ti}


def test_data_proc_create_that_fails_deletes_its_cluster(fake_yandex):
    """The fake registers the cluster, then it ends in ERROR and the Create operation fails:
    the task fails with the operation's error and no cluster is left in the folder."""
    from spindle.yandex.operators import SpindleDataprocCreateClusterOperator
    from yandexcloud.operations import OperationError

    settings = validate_settings("yandex", set_backend_settings("yandex"), "test")
    name = "spindle-test-create-fails"
    fake_yandex.fail_cluster_start.add(name)
    started = time.monotonic()
    try:
        op = SpindleDataprocCreateClusterOperator(task_id="create_cluster", settings=settings, cluster_name=name)
        with pytest.raises(OperationError, match="injected failure"):
            op.execute(_context())
    finally:
        fake_yandex.fail_cluster_start.discard(name)
    created = [d["cluster_id"] for m, d in fake_yandex.state.calls if m == "Cluster.Create" and d["name"] == name]
    deleted = [d["cluster_id"] for m, d in fake_yandex.state.calls if m == "Cluster.Delete"]
    assert len(created) == 1 and created[0] in deleted
    assert created[0] not in fake_yandex.live_clusters
    assert created[0] in fake_yandex.state.deleted_clusters
    _record("create_fails_cluster_error", "yandex", started, "the Create operation failed with the cluster in ERROR")


def test_managed_spark_create_that_fails_deletes_its_cluster(fake_yandex):
    """Managed Spark: the cluster is registered, then ends in ERROR and the Create operation
    fails; the create task deletes the cluster before it fails."""
    from spindle.yandex_spark.operators import ManagedSparkCreateClusterOperator
    from yandexcloud.operations import OperationError

    settings = validate_settings("yandex_spark", set_backend_settings("yandex_spark"), "test")
    spark = fake_yandex.spark
    name = "spindle-test-spark-create-fails"
    spark.fail_cluster_start.add(name)
    started = time.monotonic()
    try:
        op = ManagedSparkCreateClusterOperator(task_id="create_cluster", settings=settings, cluster_name=name)
        with pytest.raises(OperationError, match="injected failure"):
            op.execute(_context())
    finally:
        spark.fail_cluster_start.discard(name)
    created = [c for c in spark.deleted_clusters.values() if c.proto.name == name]
    assert len(created) == 1, "the cluster the failed create left was not deleted"
    assert not [cid for cid in spark.live_clusters if cid == created[0].proto.id]
    _record(
        "create_fails_cluster_error", "yandex_spark", started, "the Create operation failed with the cluster in ERROR"
    )


def _record(fault: str, backend: str, started: float, how: str) -> None:
    """A row of the fault table (docs/reliability.md, ``scripts/faults.py``); written only when
    the assertions above held, and only when ``SPINDLE_FAULTS_RESULTS`` names a results file."""
    record = FaultRecord(fault=fault, backend=backend, run_state="create_cluster failed", clusters_left=0)
    record.cleanup_seconds = round(time.monotonic() - started, 1)
    record.note(f"{how}; the create task deleted what it had created before failing")
    record.outcome = "pass"
    record.write()


def _emr_settings(**overrides) -> dict:
    return validate_settings("emr", set_backend_settings("emr", **overrides), "test")


def test_emr_job_flow_carries_the_auto_termination_policy(fake_aws):
    """``idle_timeout_minutes`` (default 60) becomes the job flow's AutoTerminationPolicy; the
    create task waits until the job flow is ready and returns its id."""
    from spindle.aws.operators import SpindleEmrCreateJobFlowOperator

    emr = fake_aws.moto.client("emr")
    job_flow_id = SpindleEmrCreateJobFlowOperator(task_id="create_cluster", settings=_emr_settings()).execute(
        _context()
    )
    try:
        policy = emr.get_auto_termination_policy(ClusterId=job_flow_id)["AutoTerminationPolicy"]
        assert policy == {"IdleTimeout": 3600}
        assert emr.describe_cluster(ClusterId=job_flow_id)["Cluster"]["Status"]["State"] == "WAITING"
    finally:
        emr.terminate_job_flows(JobFlowIds=[job_flow_id])
    job_flow_id = SpindleEmrCreateJobFlowOperator(
        task_id="create_cluster", settings=_emr_settings(idle_timeout_minutes=None)
    ).execute(_context())
    emr.terminate_job_flows(JobFlowIds=[job_flow_id])
    assert "AutoTerminationPolicy" not in emr.get_auto_termination_policy(ClusterId=job_flow_id)


def test_emr_create_that_times_out_terminates_its_job_flow(fake_aws):
    """A job flow that never becomes ready (the fake's stuck knob): the create task's wait
    times out after ``create_timeout_minutes`` and the job flow is terminated before it fails."""
    from botocore.exceptions import WaiterError
    from spindle.aws.operators import SpindleEmrCreateJobFlowOperator

    from tests.fakes.aws import STUCK_JOB_FLOW_PREFIXES

    context = _context()
    context["ti"].dag_id = "spindle_stuck_create"
    prefix = "spindle-spindle_stuck_create-"
    STUCK_JOB_FLOW_PREFIXES.add(prefix)
    started = time.monotonic()
    try:
        op = SpindleEmrCreateJobFlowOperator(
            task_id="create_cluster", settings=_emr_settings(create_timeout_minutes=0.05)
        )
        with pytest.raises(WaiterError):
            op.execute(context)
    finally:
        STUCK_JOB_FLOW_PREFIXES.discard(prefix)
    emr = fake_aws.moto.client("emr")
    ours = [c for c in emr.list_clusters()["Clusters"] if c["Name"].startswith(prefix)]
    assert len(ours) == 1 and ours[0]["Id"] == op._job_flow_id
    assert ours[0]["Status"]["State"] == "TERMINATED"
    _record("create_fails_timeout", "emr", started, "the job flow never became ready (create_timeout_minutes)")


def test_emr_serverless_create_that_fails_to_start_deletes_its_application(fake_aws):
    """The application is created, then fails to start (the fake's knob: it ends ``STOPPED``):
    the provider's wait fails and the create task deletes the application before it fails."""
    from airflow.providers.amazon.aws.exceptions import WaiterTerminalFailure
    from spindle.aws.operators import SpindleEmrServerlessCreateApplicationOperator

    from tests.fakes.aws import FAILED_START_APPLICATION_PREFIXES

    context = _context()
    context["ti"].dag_id = "spindle_failed_start"
    prefix = "spindle-spindle_failed_start-"
    settings = validate_settings("emr_serverless", set_backend_settings("emr_serverless", waiter_delay=1), "test")
    client = fake_aws.moto.client("emr-serverless")
    FAILED_START_APPLICATION_PREFIXES.add(prefix)
    started = time.monotonic()
    try:
        op = SpindleEmrServerlessCreateApplicationOperator(task_id="create_cluster", settings=settings)
        with pytest.raises(WaiterTerminalFailure, match="failed to start"):
            op.execute(context)
    finally:
        FAILED_START_APPLICATION_PREFIXES.discard(prefix)
    ours = [a for a in client.list_applications()["applications"] if a["name"].startswith(prefix)]
    assert len(ours) == 1, ours  # it was created ...
    assert ours[0]["state"] == "TERMINATED"  # ... and deleted by the failing create task
    _record("create_fails_start_error", "emr_serverless", started, "the application was created, then failed to start")


def test_emr_step_task_killed_cancels_its_step(fake_aws):
    """The step sensor is killed while it waits: its on_kill cancels the step (CancelSteps).
    The job flow is stuck starting, so the step is still PENDING (EMR runs none before ready)."""
    import threading

    from spindle.aws.operators import SpindleEmrStepSensor

    from tests.fakes.aws import STUCK_JOB_FLOW_PREFIXES

    emr = fake_aws.moto.client("emr")
    STUCK_JOB_FLOW_PREFIXES.add("spindle-kill-")
    try:
        flow = emr.run_job_flow(
            Name="spindle-kill-step",
            ReleaseLabel="emr-7.5.0",
            JobFlowRole="EMR_EC2_DefaultRole",
            ServiceRole="EMR_DefaultRole",
            Instances={"MasterInstanceType": "m5.xlarge", "InstanceCount": 1, "KeepJobFlowAliveWhenNoSteps": True},
        )
    finally:
        STUCK_JOB_FLOW_PREFIXES.discard("spindle-kill-")
    job_flow_id = flow["JobFlowId"]
    step_id = emr.add_job_flow_steps(
        JobFlowId=job_flow_id,
        Steps=[
            {
                "Name": "spindle.kill",
                "ActionOnFailure": "CONTINUE",
                "HadoopJarStep": {"Jar": "command-runner.jar", "Args": ["spark-submit", "s3://nowhere/job.py"]},
            }
        ],
    )["StepIds"][0]
    sensor = SpindleEmrStepSensor(
        task_id="embed_text",
        job_flow_id=job_flow_id,
        step_id=[step_id],
        settings=_emr_settings(step_poke_interval=1, log_wait_seconds=1),
        timeout=60,
    )
    outcome: list[BaseException | None] = []

    def run() -> None:
        try:
            sensor.execute(_context("embed_text"))
            outcome.append(None)
        except BaseException as err:  # noqa: BLE001 - the sensor's outcome, asserted below
            outcome.append(err)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and sensor.step_id != step_id:
            time.sleep(0.2)
        time.sleep(1.5)  # at least one poke saw it PENDING
        sensor.on_kill()
        thread.join(timeout=30)
        state = emr.describe_step(ClusterId=job_flow_id, StepId=step_id)["Step"]["Status"]["State"]
        assert state == "CANCELLED"
        assert outcome and outcome[0] is not None  # the sensor failed on the cancelled step
    finally:
        emr.terminate_job_flows(JobFlowIds=[job_flow_id])


def test_emr_serverless_job_task_killed_cancels_its_job_run(fake_aws):
    """The provider's EmrServerlessStartJobOperator.on_kill cancels the job run it started
    (CancelJobRun); Spindle's subclass keeps it. The application is stopped, so the fake's
    runner leaves the run SUBMITTED (nothing to start on this machine)."""
    from spindle.aws.operators import SpindleEmrServerlessStartJobOperator

    settings = validate_settings("emr_serverless", set_backend_settings("emr_serverless"), "test")
    client = fake_aws.moto.client("emr-serverless")
    app_id = client.create_application(name="spindle-kill-run", releaseLabel="emr-7.5.0", type="SPARK")["applicationId"]
    client.stop_application(applicationId=app_id)
    run_id = client.start_job_run(
        applicationId=app_id,
        executionRoleArn=settings["execution_role_arn"],
        jobDriver={"sparkSubmit": {"entryPoint": "s3://nowhere/job.py"}},
    )["jobRunId"]
    op = SpindleEmrServerlessStartJobOperator(
        task_id="embed_text", job="embed_text", staged={}, settings=settings, application_id=app_id
    )
    op.aws_conn_id, op.job_id, op.waiter_delay = settings["aws_conn_id"], run_id, 1  # what execute() set
    try:
        op.on_kill()
        assert client.get_job_run(applicationId=app_id, jobRunId=run_id)["jobRun"]["state"] == "CANCELLED"
    finally:
        client.delete_application(applicationId=app_id)


def test_emr_serverless_teardown_cancels_unfinished_job_runs(fake_aws):
    """A job run still going (its task was SIGKILLed, so no ``on_kill`` cancelled it) must not
    block the teardown: the service refuses to stop an application with unfinished job runs,
    so the delete task cancels them first, then stops and deletes the application."""
    from spindle.aws.operators import SpindleEmrServerlessDeleteApplicationOperator

    settings = validate_settings("emr_serverless", set_backend_settings("emr_serverless", waiter_delay=1), "test")
    client = fake_aws.moto.client("emr-serverless")
    app_id = client.create_application(name="spindle-busy-teardown", releaseLabel="emr-7.5.0", type="SPARK")[
        "applicationId"
    ]
    client.stop_application(applicationId=app_id)  # stopped: the fake's runner leaves the run SUBMITTED
    run_id = client.start_job_run(
        applicationId=app_id,
        executionRoleArn=settings["execution_role_arn"],
        jobDriver={"sparkSubmit": {"entryPoint": "s3://nowhere/job.py"}},
    )["jobRunId"]
    with pytest.raises(client.exceptions.ValidationException):  # as the service answers
        client.stop_application(applicationId=app_id)
    SpindleEmrServerlessDeleteApplicationOperator(
        task_id="delete_cluster", settings=settings, application_id=app_id
    ).execute(_context("delete_cluster"))
    assert client.get_job_run(applicationId=app_id, jobRunId=run_id)["jobRun"]["state"] == "CANCELLED"
    assert client.get_application(applicationId=app_id)["application"]["state"] == "TERMINATED"


def test_data_proc_job_task_killed_cancels_its_job(fake_yandex, fake_aws):
    """A Data Proc job runs (a script that sleeps, on a fake cluster); the job task's on_kill
    finds it by the task's job name and cancels it (JobService.Cancel)."""
    import yandex.cloud.dataproc.v1.job_pb2 as job_pb
    import yandex.cloud.dataproc.v1.job_service_pb2 as job_service_pb
    from spindle.yandex.hooks import SpindleDataprocHook
    from spindle.yandex.operators import SpindleDataprocCreateClusterOperator, SpindleDataprocPysparkJobOperator

    from tests.support.cloud import BUCKET

    settings = validate_settings("yandex", set_backend_settings("yandex"), "test")
    fake_aws.moto.client("s3").put_object(Bucket=BUCKET, Key="tests/sleep.py", Body=b"import time\ntime.sleep(600)\n")
    cluster_id = SpindleDataprocCreateClusterOperator(
        task_id="create_cluster", settings=settings, cluster_name="spindle-test-kill-job"
    ).execute(_context())
    hook = SpindleDataprocHook(yandex_conn_id=settings["connection_id"])
    try:
        name = "spindle-test-killed-job"
        hook.jobs.Create(
            job_service_pb.CreateJobRequest(
                cluster_id=cluster_id,
                name=name,
                pyspark_job=job_pb.PysparkJob(main_python_file_uri=f"s3a://{BUCKET}/tests/sleep.py"),
            )
        )
        job_id = hook.find_job(cluster_id, name).id
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and fake_yandex.state.jobs[job_id].running is None:
            time.sleep(0.5)
        assert fake_yandex.state.jobs[job_id].running is not None, "the fake never started the job"
        op = SpindleDataprocPysparkJobOperator(
            task_id="embed_text",
            job="embed_text",
            staged={},
            settings=settings,
            cluster_id=cluster_id,
            connection_id=settings["connection_id"],
            name=name,
        )  # the name execute() gave the job
        op.on_kill()
        assert (
            hook.jobs.Get(job_service_pb.GetJobRequest(cluster_id=cluster_id, job_id=job_id)).status
            == job_pb.Job.CANCELLED
        )
    finally:
        hook.dataproc_client.delete_cluster(cluster_id)
    assert cluster_id not in fake_yandex.live_clusters
