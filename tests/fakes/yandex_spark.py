"""Yandex Managed Service for Apache Spark (``yandex.cloud.spark.v1``) on the fake Yandex Cloud.

Registered on :class:`tests.fakes.yandex_cloud.YandexCloudFake`'s server (same TLS, IAM, endpoint
discovery as ``managed-spark``, validation options of the protos, and its ``OperationService``):

- ``ClusterService`` Create, Get, List, Delete, Start, Stop. A cluster is a local Spark
  standalone cluster on the fake managed image (shares nothing with Airflow), one worker per
  executor host; ``s3a://`` points at the fake's object storage. ``dependencies.pip_packages``
  are recorded, not installed (a warning says so). With ``history_server.enabled`` the cluster
  has a "Spark History Server" link (the local master's UI stands in for it).
- ``JobService`` Create, Get, List, ListLog, Cancel, ``pyspark_job`` only. The service runs
  Spark on Kubernetes: the driver always runs in the cluster ("container" with the archives under
  their ``#alias``), its environment from ``spark.kubernetes.driverEnv.*``. ``ListLog`` pages
  the driver's own stdout and stderr (a pod's log), so a failed job shows its traceback. A job
  has ``ui_url`` once it runs. Create's operation ends when the job does.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field

import grpc
from google.protobuf.empty_pb2 import Empty
from google.rpc import code_pb2
from yandex.cloud.spark.v1 import (
    cluster_pb2,
    cluster_service_pb2,
    cluster_service_pb2_grpc,
    job_pb2,
    job_service_pb2,
    job_service_pb2_grpc,
)

from tests.fakes.spark_runner import FakeClusterNodes, RunningJob, ServiceRules, SparkJob

log = logging.getLogger("spindle.fakes.yandex_spark")

SERVICE_ID = "managed-spark"
#: What Spark on Kubernetes honours: driver environment from driverEnv, always cluster mode.
KUBERNETES = ServiceRules(
    "managed-spark",
    "spark.kubernetes.driverEnv.",
    {"spark.submit.pyFiles": "py_files", "spark.files": "files", "spark.archives": "archives", "spark.jars": "jars"},
    always_cluster_mode=True,
)
HISTORY_LINK = "Spark History Server"


@dataclass
class SparkCluster:
    proto: cluster_pb2.Cluster
    nodes: FakeClusterNodes | None = None
    deleting: bool = False  # Delete was called: a start still under way stops what it started


@dataclass
class SparkJobState:
    proto: job_pb2.Job
    running: RunningJob | None = None
    cancel_requested: bool = False
    done: threading.Event = field(default_factory=threading.Event)


class ManagedSpark:
    """The service's state; ``calls`` go to the fake's ledger as ``Spark.<Service>.<Method>``."""

    def __init__(self, fake) -> None:
        self.fake = fake
        self.state = fake.state  # operations, lock and ledger are the fake's
        self.clusters: dict[str, SparkCluster] = {}
        self.deleted_clusters: dict[str, SparkCluster] = {}
        self.jobs: dict[str, SparkJobState] = {}
        self.fail_cluster_start: set[str] = set()

    @property
    def live_clusters(self) -> list[str]:
        with self.state.lock:
            return sorted(self.clusters)

    def cancel_jobs(self) -> None:
        with self.state.lock:
            jobs = list(self.jobs.values())
        for job in jobs:
            if job.running is not None:
                job.running.cancel()

    def register(self, server: grpc.Server) -> None:
        cluster_service_pb2_grpc.add_ClusterServiceServicer_to_server(ClusterService(self), server)
        job_service_pb2_grpc.add_JobServiceServicer_to_server(JobService(self), server)


def _copy(message):
    copy = type(message)()
    copy.CopyFrom(message)
    return copy


def _workers(proto: cluster_pb2.Cluster) -> int:
    scale = proto.config.resource_pools.executor.scale_policy
    if scale.WhichOneof("scale_type") == "auto_scale":
        return max(scale.auto_scale.min_size, 1)
    return max(scale.fixed_scale.size, 1)


class ClusterService(cluster_service_pb2_grpc.ClusterServiceServicer):
    def __init__(self, service: ManagedSpark) -> None:
        self.service, self.fake, self.state = service, service.fake, service.state

    def _get(self, cluster_id: str, context) -> SparkCluster:
        with self.state.lock:
            cluster = self.service.clusters.get(cluster_id)
        if cluster is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"Cluster {cluster_id!r} not found")
        return cluster

    def Create(self, request, context):
        from tests.fakes.yandex_cloud import _new_id, _now

        with self.state.lock:
            taken = any(
                c.proto.name == request.name and c.proto.folder_id == request.folder_id
                for c in self.service.clusters.values()
            )
        if taken:
            context.abort(grpc.StatusCode.ALREADY_EXISTS, f"Cluster with name {request.name!r} already exists")
        if not request.network.subnet_ids:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "network.subnet_ids: at least one subnet is required")
        cluster_id = _new_id("c9q")
        proto = cluster_pb2.Cluster(
            id=cluster_id,
            folder_id=request.folder_id,
            created_at=_now(),
            name=request.name,
            description=request.description,
            labels=dict(request.labels),
            config=request.config,
            status=cluster_pb2.Cluster.CREATING,
            network=request.network,
            service_account_id=request.service_account_id,
            logging=request.logging,
        )
        for package in request.config.dependencies.pip_packages:
            log.warning("fake Managed Spark: pip package %s is recorded, not installed on the fake image", package)
        cluster = SparkCluster(proto)
        with self.state.lock:
            self.service.clusters[cluster_id] = cluster
        self.state.record("Spark.Cluster.Create", cluster_id=cluster_id, name=request.name, labels=dict(request.labels))
        op = self.state.new_operation(
            f"Create Managed Spark cluster {request.name}",
            cluster_service_pb2.CreateClusterMetadata(cluster_id=cluster_id),
        )
        self.fake.background(self._start, cluster, op.id)
        return op

    def _start(self, cluster: SparkCluster, op_id: str) -> None:
        try:
            if cluster.proto.name in self.service.fail_cluster_start:  # fault knob
                raise RuntimeError("injected failure (fail_cluster_start)")
            nodes = self.fake.local_clusters.start(
                f"fake-spark-{cluster.proto.id}", _workers(cluster.proto), profile=self.fake.node_profile()
            )
        except Exception as err:
            with self.state.lock:
                cluster.proto.status = cluster_pb2.Cluster.ERROR
            self.state.finish(op_id, error=f"cluster start failed: {err}")
            return
        with self.state.lock:  # checked and set at once: a Delete sees the nodes or stops them here
            deleted = cluster.deleting
            if not deleted:
                cluster.nodes = nodes
                cluster.proto.status = cluster_pb2.Cluster.RUNNING
                cluster.proto.health = cluster_pb2.ALIVE
                del cluster.proto.links[:]
                if cluster.proto.config.history_server.enabled:
                    cluster.proto.links.append(cluster_pb2.UILink(name=HISTORY_LINK, url=nodes.ui_url))
                response = _copy(cluster.proto)
        if deleted:  # deleted while it started: nothing of it may outlive the Delete
            self.fake.local_clusters.stop(nodes.cluster_id)
            self.state.finish(op_id, error="the cluster was deleted while it was being created")
            return
        self.state.finish(op_id, response=response)

    def _stop_local(self, cluster: SparkCluster) -> None:
        with self.state.lock:
            running = [j for j in self.service.jobs.values() if j.proto.cluster_id == cluster.proto.id]
        for job in running:
            if job.running is not None:
                job.running.cancel()
        if cluster.nodes is not None:
            self.fake.local_clusters.stop(cluster.nodes.cluster_id)
        cluster.nodes = None

    def Get(self, request, context):
        cluster = self._get(request.cluster_id, context)
        with self.state.lock:
            return _copy(cluster.proto)

    def List(self, request, context):
        with self.state.lock:
            clusters = [c.proto for c in self.service.clusters.values() if c.proto.folder_id == request.folder_id]
            return cluster_service_pb2.ListClustersResponse(clusters=clusters)

    def Delete(self, request, context):
        cluster = self._get(request.cluster_id, context)
        self.state.record("Spark.Cluster.Delete", cluster_id=request.cluster_id)
        with self.state.lock:
            cluster.deleting = True
        op = self.state.new_operation(
            f"Delete Managed Spark cluster {request.cluster_id}",
            cluster_service_pb2.DeleteClusterMetadata(cluster_id=request.cluster_id),
        )

        def delete() -> None:
            self._stop_local(cluster)
            with self.state.lock:
                self.service.clusters.pop(request.cluster_id, None)
                self.service.deleted_clusters[request.cluster_id] = cluster
            self.state.finish(op.id, response=Empty())

        self.fake.background(delete)
        return op

    def Stop(self, request, context):
        cluster = self._get(request.cluster_id, context)
        if cluster.proto.status != cluster_pb2.Cluster.RUNNING:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, "Cluster is not running")
        self.state.record("Spark.Cluster.Stop", cluster_id=request.cluster_id)
        cluster.proto.status = cluster_pb2.Cluster.STOPPING
        op = self.state.new_operation(
            f"Stop Managed Spark cluster {request.cluster_id}",
            cluster_service_pb2.StopClusterMetadata(cluster_id=request.cluster_id),
        )

        def stop() -> None:
            self._stop_local(cluster)
            with self.state.lock:
                cluster.proto.status = cluster_pb2.Cluster.STOPPED
                response = _copy(cluster.proto)
            self.state.finish(op.id, response=response)

        self.fake.background(stop)
        return op

    def Start(self, request, context):
        cluster = self._get(request.cluster_id, context)
        if cluster.proto.status != cluster_pb2.Cluster.STOPPED:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, "Cluster is not stopped")
        self.state.record("Spark.Cluster.Start", cluster_id=request.cluster_id)
        cluster.proto.status = cluster_pb2.Cluster.STARTING
        op = self.state.new_operation(
            f"Start Managed Spark cluster {request.cluster_id}",
            cluster_service_pb2.StartClusterMetadata(cluster_id=request.cluster_id),
        )
        self.fake.background(self._start, cluster, op.id)
        return op


class JobService(job_service_pb2_grpc.JobServiceServicer):
    def __init__(self, service: ManagedSpark) -> None:
        self.service, self.fake, self.state = service, service.fake, service.state

    def Create(self, request, context):
        from tests.fakes.yandex_cloud import _new_id, _now

        with self.state.lock:
            cluster = self.service.clusters.get(request.cluster_id)
        if cluster is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"Cluster {request.cluster_id!r} not found")
        if cluster.proto.status != cluster_pb2.Cluster.RUNNING:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"Cluster {request.cluster_id} is not running")
        if request.WhichOneof("job_spec") != "pyspark_job":
            context.abort(grpc.StatusCode.UNIMPLEMENTED, "this fake runs PySpark jobs only")
        job_id = _new_id("c9q")
        proto = job_pb2.Job(
            id=job_id,
            cluster_id=request.cluster_id,
            created_at=_now(),
            name=request.name,
            created_by="fake-user",
            status=job_pb2.Job.PROVISIONING,
            pyspark_job=request.pyspark_job,
            service_account_id=request.service_account_id or cluster.proto.service_account_id,
        )
        job = SparkJobState(proto)
        with self.state.lock:
            self.service.jobs[job_id] = job
        self.state.record(
            "Spark.Job.Create",
            cluster_id=request.cluster_id,
            job_id=job_id,
            name=request.name,
            args=list(request.pyspark_job.args),
            archives=list(request.pyspark_job.archive_uris),
            properties=dict(request.pyspark_job.properties),
        )
        op = self.state.new_operation(
            f"Create Managed Spark job {request.name}",
            job_service_pb2.CreateJobMetadata(cluster_id=request.cluster_id, job_id=job_id),
        )
        self.fake.background(self._run, cluster, job, op.id)
        return op

    def _run(self, cluster: SparkCluster, job: SparkJobState, op_id: str) -> None:
        from tests.fakes.yandex_cloud import _now

        spec = job.proto.pyspark_job
        spark_job = SparkJob(
            main=spec.main_python_file_uri,
            args=list(spec.args),
            py_files=list(spec.python_file_uris),
            files=list(spec.file_uris),
            archives=list(spec.archive_uris),
            jars=list(spec.jar_file_uris),
            properties=dict(spec.properties),
            name=job.proto.name or job.proto.id,
        )
        nodes = cluster.nodes
        if nodes is None or job.cancel_requested:  # stopped, deleted or cancelled before it started
            self._finish(job, op_id, 1)
            return
        with self.state.lock:
            job.proto.status = job_pb2.Job.RUNNING
            job.proto.started_at.CopyFrom(_now())
            job.proto.ui_url = nodes.ui_url
        try:
            folder = self.fake.workdir / "spark-jobs" / job.proto.id
            job.running = RunningJob(spark_job, nodes, folder, self.fake.cache, KUBERNETES, self.fake.job_env)
            if job.cancel_requested:  # Cancel came while the driver was being launched
                job.running.cancel()
            code = job.running.wait(timeout=self.fake.job_timeout)
        except Exception:  # a bug of the fake must not leave the job RUNNING forever
            log.exception("fake Managed Spark: job %s could not run", job.proto.id)
            code = 1
        self._finish(job, op_id, code)

    def _finish(self, job: SparkJobState, op_id: str, code: int) -> None:
        from tests.fakes.yandex_cloud import _now

        with self.state.lock:
            job.proto.finished_at.CopyFrom(_now())
            if job.cancel_requested or (job.running is not None and job.running.cancelled):
                job.proto.status = job_pb2.Job.CANCELLED
            else:
                job.proto.status = job_pb2.Job.DONE if code == 0 else job_pb2.Job.ERROR
            job.done.set()  # with the status: ListLog ends exactly when Get says the job ended
            response = _copy(job.proto)
        status = job_pb2.Job.Status.Name(job.proto.status)
        self.state.record("Spark.Job.Finished", job_id=job.proto.id, exit_code=code, status=status)
        if status == "DONE":
            self.state.finish(op_id, response=response)
        else:
            self.state.finish(op_id, error=f"Job {job.proto.id} {status}", code=code_pb2.FAILED_PRECONDITION)

    def _job(self, request, context) -> SparkJobState:
        with self.state.lock:
            job = self.service.jobs.get(request.job_id)
        if job is None or job.proto.cluster_id != request.cluster_id:
            context.abort(grpc.StatusCode.NOT_FOUND, f"Job {request.job_id!r} not found")
        return job

    def Get(self, request, context):
        job = self._job(request, context)
        with self.state.lock:
            return _copy(job.proto)

    def List(self, request, context):
        name = None
        if request.filter.startswith("name="):
            name = request.filter.split("=", 1)[1].strip().strip("\"'")
        with self.state.lock:
            jobs = [
                j.proto
                for j in self.service.jobs.values()
                if j.proto.cluster_id == request.cluster_id and (name is None or j.proto.name == name)
            ]
            return job_service_pb2.ListJobsResponse(jobs=jobs)

    def ListLog(self, request, context):
        job = self._job(request, context)
        finished = job.done.is_set()  # read first: a finished job's log is complete
        text = job.running.log_text() if job.running is not None else ""
        start = int(request.page_token or 0)
        chunk = text[start : start + (request.page_size or 64 * 1024)]
        end = start + len(chunk)
        next_token = str(end) if (end < len(text) or not finished) else ""
        return job_service_pb2.ListJobLogResponse(content=chunk, next_page_token=next_token)

    def Cancel(self, request, context):
        job = self._job(request, context)
        self.state.record("Spark.Job.Cancel", cluster_id=request.cluster_id, job_id=request.job_id)
        with self.state.lock:
            if job.proto.status not in (job_pb2.Job.DONE, job_pb2.Job.ERROR, job_pb2.Job.CANCELLED):
                job.proto.status = job_pb2.Job.CANCELLING
                job.cancel_requested = True
        if job.running is not None:
            job.running.cancel()
        op = self.state.new_operation(
            "Cancel Managed Spark job",
            job_service_pb2.CreateJobMetadata(cluster_id=request.cluster_id, job_id=request.job_id),
        )

        def finish() -> None:
            job.done.wait(60)
            with self.state.lock:
                response = _copy(job.proto)
            self.state.finish(op.id, response=response)

        self.fake.background(finish)
        return op
