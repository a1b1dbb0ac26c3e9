"""A local, TLS, gRPC fake of the Yandex Cloud API for Data Proc and Lockbox.

Built on the yandexcloud SDK's generated servicers, so the SDK and the **unmodified**
``apache-airflow-providers-yandex`` operators talk to it exactly as to the cloud:

- ``ApiEndpointService.List`` (endpoint discovery, unauthenticated): every service id the SDK
  knows maps to this one server's address.
- ``IamTokenService.Create``: an IAM token for a known OAuth token, or for a service-account
  JWT (PS256) signed with a registered key. Every other call must carry
  ``authorization: Bearer <that IAM token>`` or gets ``UNAUTHENTICATED``.
- ``OperationService.Get``: long-running operations, as the SDK's waiter polls them.
- Data Proc ``ClusterService`` (Create, Get, List, Delete, Start, Stop, ListHosts, ListUILinks)
  and ``JobService`` (Create, Get, List, ListLog, Cancel). A cluster is a real local Spark
  standalone cluster on the fake managed image (:mod:`tests.fakes.cluster_image`: its own Python
  and Spark, nothing from the Airflow venv); its ``spark-defaults.conf`` points ``s3a://`` at the
  object storage (Data Proc images preconfigure Object Storage) plus the cluster's ``spark:``
  properties, and its nodes carry ``YC_METADATA_ADDR`` (this fake's metadata server) and the
  fake's CA (``SSL_CERT_FILE``/``REQUESTS_CA_BUNDLE``). A PySpark job is fetched from object
  storage and **run with spark-submit** on it (:mod:`tests.fakes.spark_runner`, YARN rules:
  client mode unless ``spark.submit.deployMode=cluster``). Its operation ends when the job ends,
  with an error when the job failed, as on Data Proc. ``pip:`` cluster properties are recorded
  but not installed (logged as a warning).
- Every request is checked against the ``yandex.cloud.validation`` options of its proto
  (:mod:`tests.fakes.yc_validation`): a violation is ``INVALID_ARGUMENT`` naming the field.
- Managed Service for Apache Spark (``spark.v1`` clusters and jobs): :mod:`tests.fakes.yandex_spark`,
  on the same server, clusters and job runner (:attr:`YandexCloudFake.spark`).
- Lockbox ``SecretService`` (List, Get) and ``PayloadService.Get`` for Airflow's
  ``LockboxSecretBackend``; plus the Lockbox REST payload API (HTTPS) and a metadata-service
  token endpoint (HTTP) for code running *on* the cluster (``spark_apps``' lockbox resolver).

TLS: a self-signed certificate for 127.0.0.1; point clients at it with
``GRPC_DEFAULT_SSL_ROOTS_FILE_PATH`` (gRPC) and ``SSL_CERT_FILE`` (Python's ssl).

Run it by hand: ``python -m tests.fakes.yandex_cloud --help``.
"""

from __future__ import annotations

import http.server
import json
import logging
import secrets
import ssl
import threading
import time
import uuid
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import any_pb2, timestamp_pb2
from google.rpc import code_pb2, status_pb2
from yandex.cloud.dataproc.v1 import (
    cluster_pb2,
    cluster_service_pb2,
    cluster_service_pb2_grpc,
    job_pb2,
    job_service_pb2,
    job_service_pb2_grpc,
    subcluster_pb2,
)
from yandex.cloud.endpoint import api_endpoint_pb2, api_endpoint_service_pb2, api_endpoint_service_pb2_grpc
from yandex.cloud.iam.v1 import iam_token_service_pb2, iam_token_service_pb2_grpc
from yandex.cloud.lockbox.v1 import (
    payload_pb2,
    payload_service_pb2_grpc,
    secret_pb2,
    secret_service_pb2,
    secret_service_pb2_grpc,
)
from yandex.cloud.operation import operation_pb2, operation_service_pb2_grpc

from tests.fakes.cluster_image import ClusterImage
from tests.fakes.spark_runner import (
    YARN,
    FakeClusterNodes,
    LocalClusters,
    LocalizationCache,
    NodeProfile,
    RunningJob,
    S3Settings,
    SparkJob,
)
from tests.fakes.tls import Certificate, make_self_signed
from tests.fakes.yandex_spark import ManagedSpark
from tests.fakes.yc_validation import ValidationInterceptor

log = logging.getLogger("spindle.fakes.yandex")

#: Service ids served here (those the SDK may look up for Data Proc, Lockbox, IAM...).
SERVICE_IDS = (
    "endpoint",
    "iam",
    "operation",
    "dataproc",
    "dataproc-manager",
    "lockbox",
    "lockbox-payload",
    "resource-manager",
    "vpc",
    "compute",
    "storage-api",
    "logging",
    "log-reading",
    "managed-spark",
)
_PUBLIC_SERVICES = ("/yandex.cloud.endpoint.ApiEndpointService/", "/yandex.cloud.iam.v1.IamTokenService/")


def _now() -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.GetCurrentTime()
    return ts


def _pack(message) -> any_pb2.Any:
    value = any_pb2.Any()
    value.Pack(message)
    return value


def _new_id(prefix: str) -> str:
    return prefix + secrets.token_hex(9)[:17]


# --------------------------------------------------------------------------- state
@dataclass
class FakeCluster:
    proto: cluster_pb2.Cluster
    subclusters: list[cluster_service_pb2.CreateSubclusterConfigSpec]
    local_id: str | None = None
    ui_url: str | None = None
    master_url: str | None = None
    nodes: FakeClusterNodes | None = None
    deleting: bool = False  # Delete was called: a start still under way stops what it started


@dataclass
class FakeJob:
    proto: job_pb2.Job
    running: RunningJob | None = None
    done: threading.Event = field(default_factory=threading.Event)


@dataclass
class FakeSecret:
    proto: secret_pb2.Secret
    entries: dict[str, str]


class State:
    """Everything the fake knows; also a ledger of the calls it served, for assertions."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.operations: dict[str, operation_pb2.Operation] = {}
        self.clusters: dict[str, FakeCluster] = {}
        self.deleted_clusters: dict[str, FakeCluster] = {}
        self.jobs: dict[str, FakeJob] = {}
        self.secrets: dict[str, FakeSecret] = {}
        self.iam_tokens: set[str] = set()
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def record(self, method: str, **details: Any) -> None:
        with self.lock:
            self.calls.append((method, details))

    def count(self, method: str) -> int:
        with self.lock:
            return sum(1 for name, _ in self.calls if name == method)

    def new_operation(self, description: str, metadata) -> operation_pb2.Operation:
        op = operation_pb2.Operation(
            id=_new_id("op"),
            description=description,
            created_at=_now(),
            modified_at=_now(),
            created_by="fake-user",
            done=False,
            metadata=_pack(metadata),
        )
        with self.lock:
            self.operations[op.id] = op
        return op

    def finish(self, op_id: str, response=None, error: str | None = None, code: int = code_pb2.INTERNAL) -> None:
        with self.lock:
            op = self.operations[op_id]
            if error is not None:
                op.error.CopyFrom(status_pb2.Status(code=code, message=error))
            elif response is not None:
                op.response.CopyFrom(_pack(response))
            op.modified_at.CopyFrom(_now())
            op.done = True


# --------------------------------------------------------------------------- auth
class AuthInterceptor(grpc.ServerInterceptor):
    """Every call but endpoint discovery and IAM must carry a Bearer IAM token we issued."""

    def __init__(self, state: State) -> None:
        self.state = state

    def intercept_service(self, continuation, handler_call_details):
        method = handler_call_details.method
        if method.startswith(_PUBLIC_SERVICES):
            return continuation(handler_call_details)
        metadata = dict(handler_call_details.invocation_metadata or ())
        auth = metadata.get("authorization", "")
        token = auth[len("Bearer ") :] if auth.startswith("Bearer ") else ""
        with self.state.lock:
            known = token in self.state.iam_tokens
        if known:
            return continuation(handler_call_details)

        def deny(request, context):
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or unknown IAM token")

        return grpc.unary_unary_rpc_method_handler(deny)


class EndpointService(api_endpoint_service_pb2_grpc.ApiEndpointServiceServicer):
    def __init__(self, address: str) -> None:
        self.address = address

    def List(self, request, context):
        return api_endpoint_service_pb2.ListApiEndpointsResponse(
            endpoints=[api_endpoint_pb2.ApiEndpoint(id=i, address=self.address) for i in SERVICE_IDS]
        )

    def Get(self, request, context):
        if request.api_endpoint_id not in SERVICE_IDS:
            context.abort(grpc.StatusCode.NOT_FOUND, f"no endpoint {request.api_endpoint_id}")
        return api_endpoint_pb2.ApiEndpoint(id=request.api_endpoint_id, address=self.address)


class IamTokenService(iam_token_service_pb2_grpc.IamTokenServiceServicer):
    def __init__(self, state: State, oauth_tokens: set[str], sa_keys: dict[str, dict[str, str]]) -> None:
        self.state = state
        self.oauth_tokens = oauth_tokens
        self.sa_keys = sa_keys  # key id -> {"service_account_id", "public_key"}

    def _verify_jwt(self, token: str, context) -> str:
        import jwt

        try:
            kid = jwt.get_unverified_header(token).get("kid")
        except jwt.PyJWTError:
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "malformed JWT")
        key = self.sa_keys.get(kid or "")
        if key is None:
            context.abort(grpc.StatusCode.UNAUTHENTICATED, f"unknown service account key {kid!r}")
        try:
            claims = jwt.decode(token, key["public_key"], algorithms=["PS256"], options={"verify_aud": False})
        except jwt.PyJWTError as err:
            context.abort(grpc.StatusCode.UNAUTHENTICATED, f"invalid JWT: {err}")
        if claims.get("iss") != key["service_account_id"]:
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "JWT issuer is not the key's service account")
        return key["service_account_id"]

    def Create(self, request, context):
        which = request.WhichOneof("identity")
        if which == "yandex_passport_oauth_token":
            if request.yandex_passport_oauth_token not in self.oauth_tokens:
                context.abort(grpc.StatusCode.UNAUTHENTICATED, "unknown OAuth token")
            subject = "oauth-user"
        elif which == "jwt":
            subject = self._verify_jwt(request.jwt, context)
        else:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "one of yandex_passport_oauth_token, jwt is required")
        token = "t1.fake." + secrets.token_urlsafe(24)
        with self.state.lock:
            self.state.iam_tokens.add(token)
        self.state.record("IamToken.Create", subject=subject)
        expires = _now()
        expires.FromSeconds(int(time.time()) + 12 * 3600)
        return iam_token_service_pb2.CreateIamTokenResponse(iam_token=token, expires_at=expires)


class OperationService(operation_service_pb2_grpc.OperationServiceServicer):
    def __init__(self, state: State) -> None:
        self.state = state

    def Get(self, request, context):
        with self.state.lock:
            op = self.state.operations.get(request.operation_id)
            if op is None:
                context.abort(grpc.StatusCode.NOT_FOUND, f"operation {request.operation_id} not found")
            copy = operation_pb2.Operation()
            copy.CopyFrom(op)
        return copy


# --------------------------------------------------------------------------- Data Proc
class ClusterService(cluster_service_pb2_grpc.ClusterServiceServicer):
    def __init__(self, fake: YandexCloudFake) -> None:
        self.fake = fake
        self.state = fake.state

    def _get(self, cluster_id: str, context) -> FakeCluster:
        with self.state.lock:
            cluster = self.state.clusters.get(cluster_id)
        if cluster is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"Cluster {cluster_id!r} not found")
        return cluster

    def Create(self, request, context):
        missing = [f for f in ("folder_id", "zone_id", "service_account_id") if not getattr(request, f)]
        subnets = [s.subnet_id for s in request.config_spec.subclusters_spec]
        if not subnets or not all(subnets):
            missing.append("config_spec.subclusters_spec.subnet_id")
        if not request.config_spec.hadoop.ssh_public_keys and not request.config_spec.hadoop.oslogin_enabled:
            missing.append("config_spec.hadoop.ssh_public_keys")
        if missing:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "missing required fields: " + ", ".join(missing))
        with self.state.lock:
            taken = any(
                c.proto.name == request.name and c.proto.folder_id == request.folder_id
                for c in self.state.clusters.values()
            )
        if taken:
            context.abort(grpc.StatusCode.ALREADY_EXISTS, f"Cluster with name {request.name!r} already exists")
        cluster_id = _new_id("c9q")
        proto = cluster_pb2.Cluster(
            id=cluster_id,
            folder_id=request.folder_id,
            created_at=_now(),
            name=request.name,
            description=request.description,
            labels=dict(request.labels),
            config=cluster_pb2.ClusterConfig(
                version_id=request.config_spec.version_id or "2.1", hadoop=request.config_spec.hadoop
            ),
            health=1,
            status=cluster_pb2.Cluster.CREATING,
            zone_id=request.zone_id,
            service_account_id=request.service_account_id,
            bucket=request.bucket,
            ui_proxy=request.ui_proxy,
            log_group_id=request.log_group_id,
        )
        cluster = FakeCluster(proto, list(request.config_spec.subclusters_spec))
        with self.state.lock:
            self.state.clusters[cluster_id] = cluster
        self.state.record("Cluster.Create", cluster_id=cluster_id, name=request.name, labels=dict(request.labels))
        op = self.state.new_operation(
            f"Create Data Proc cluster {request.name}", cluster_service_pb2.CreateClusterMetadata(cluster_id=cluster_id)
        )
        self.fake.background(self._start, cluster, op.id)
        return op

    def _workers(self, cluster: FakeCluster) -> int:
        return sum(s.hosts_count for s in cluster.subclusters if s.role != subcluster_pb2.Role.MASTERNODE) or 1

    def _start(self, cluster: FakeCluster, op_id: str) -> None:
        profile = self.fake.node_profile(dict(cluster.proto.config.hadoop.properties))
        try:
            if cluster.proto.name in self.fake.fail_cluster_start:  # fault knob (see YandexCloudFake)
                raise RuntimeError("injected failure (fail_cluster_start)")
            local = self.fake.local_clusters.start(
                f"fake-dataproc-{cluster.proto.id}", self._workers(cluster), profile=profile
            )
        except Exception as err:
            with self.state.lock:
                cluster.proto.status = cluster_pb2.Cluster.ERROR
            self.state.finish(op_id, error=f"cluster start failed: {err}")
            return
        with self.state.lock:  # checked and set at once: a Delete sees the nodes or stops them here
            deleted = cluster.deleting
            if not deleted:
                cluster.local_id, cluster.ui_url, cluster.master_url = local.cluster_id, local.ui_url, local.master_url
                cluster.nodes = local
                cluster.proto.status = cluster_pb2.Cluster.RUNNING
                cluster.proto.health = 1
                response = cluster_pb2.Cluster()
                response.CopyFrom(cluster.proto)
        if deleted:  # deleted while it started: nothing of it may outlive the Delete
            self.fake.local_clusters.stop(local.cluster_id)
            self.state.finish(op_id, error="the cluster was deleted while it was being created")
            return
        self.state.finish(op_id, response=response)

    def _stop_local(self, cluster: FakeCluster) -> None:
        if cluster.local_id:
            self.fake.local_clusters.stop(cluster.local_id)
        cluster.local_id = cluster.ui_url = cluster.master_url = cluster.nodes = None

    def Get(self, request, context):
        cluster = self._get(request.cluster_id, context)
        with self.state.lock:
            copy = cluster_pb2.Cluster()
            copy.CopyFrom(cluster.proto)
        return copy

    def List(self, request, context):
        name = None
        if request.filter.startswith("name="):
            name = request.filter.split("=", 1)[1].strip().strip("\"'")
        with self.state.lock:
            clusters = [
                c.proto
                for c in self.state.clusters.values()
                if c.proto.folder_id == request.folder_id and (name is None or c.proto.name == name)
            ]
            return cluster_service_pb2.ListClustersResponse(clusters=clusters)

    def Delete(self, request, context):
        cluster = self._get(request.cluster_id, context)
        self.state.record("Cluster.Delete", cluster_id=request.cluster_id)
        with self.state.lock:
            cluster.deleting = True
        op = self.state.new_operation(
            f"Delete Data Proc cluster {request.cluster_id}",
            cluster_service_pb2.DeleteClusterMetadata(cluster_id=request.cluster_id),
        )

        def delete() -> None:
            with self.state.lock:
                running = [j for j in self.state.jobs.values() if j.proto.cluster_id == request.cluster_id]
            for job in running:
                if job.running is not None:
                    job.running.cancel()
            try:
                self._stop_local(cluster)
            except Exception as err:
                self.state.finish(op.id, error=f"cluster delete failed: {err}")
                return
            with self.state.lock:
                self.state.clusters.pop(request.cluster_id, None)
                self.state.deleted_clusters[request.cluster_id] = cluster
            self.state.finish(op.id, response=_empty())

        self.fake.background(delete)
        return op

    def Stop(self, request, context):
        cluster = self._get(request.cluster_id, context)
        if cluster.proto.status != cluster_pb2.Cluster.RUNNING:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, "Cluster is not running")
        self.state.record("Cluster.Stop", cluster_id=request.cluster_id)
        cluster.proto.status = cluster_pb2.Cluster.STOPPING
        op = self.state.new_operation(
            f"Stop Data Proc cluster {request.cluster_id}",
            cluster_service_pb2.StopClusterMetadata(cluster_id=request.cluster_id),
        )

        def stop() -> None:
            self._stop_local(cluster)
            with self.state.lock:
                cluster.proto.status = cluster_pb2.Cluster.STOPPED
            self.state.finish(op.id, response=_empty())

        self.fake.background(stop)
        return op

    def Start(self, request, context):
        cluster = self._get(request.cluster_id, context)
        if cluster.proto.status != cluster_pb2.Cluster.STOPPED:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, "Cluster is not stopped")
        self.state.record("Cluster.Start", cluster_id=request.cluster_id)
        cluster.proto.status = cluster_pb2.Cluster.STARTING
        op = self.state.new_operation(
            f"Start Data Proc cluster {request.cluster_id}",
            cluster_service_pb2.StartClusterMetadata(cluster_id=request.cluster_id),
        )
        self.fake.background(self._start, cluster, op.id)
        return op

    def ListHosts(self, request, context):
        cluster = self._get(request.cluster_id, context)
        hosts = []
        for spec in cluster.subclusters:
            kind = {subcluster_pb2.Role.MASTERNODE: "m", subcluster_pb2.Role.DATANODE: "d"}.get(spec.role, "c")
            count = 1 if spec.role == subcluster_pb2.Role.MASTERNODE else spec.hosts_count
            for index in range(count):
                hosts.append(
                    subcluster_pb2.Host(
                        name=f"rc1b-dataproc-{kind}-{cluster.proto.id[-8:]}{index}.mdb.yandexcloud.net",
                        subcluster_id=f"{cluster.proto.id}-{spec.name}",
                        health=1,
                        compute_instance_id=_new_id("fhm"),
                        role=spec.role,
                    )
                )
        return cluster_service_pb2.ListClusterHostsResponse(hosts=hosts)

    def ListUILinks(self, request, context):
        cluster = self._get(request.cluster_id, context)
        if not cluster.proto.ui_proxy:
            return cluster_service_pb2.ListUILinksResponse()
        links = []
        if cluster.ui_url:  # the local master's web UI stands in for the proxied Spark UIs
            links.append(cluster_service_pb2.UILink(name="Spark History Server", url=cluster.ui_url))
        return cluster_service_pb2.ListUILinksResponse(links=links)


def _empty():
    from google.protobuf.empty_pb2 import Empty

    return Empty()


class JobService(job_service_pb2_grpc.JobServiceServicer):
    def __init__(self, fake: YandexCloudFake) -> None:
        self.fake = fake
        self.state = fake.state

    def Create(self, request, context):
        with self.state.lock:
            cluster = self.state.clusters.get(request.cluster_id)
        if cluster is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"Cluster {request.cluster_id!r} not found")
        if cluster.proto.status != cluster_pb2.Cluster.RUNNING:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"Cluster {request.cluster_id} is not running")
        if request.WhichOneof("job_spec") != "pyspark_job":
            context.abort(grpc.StatusCode.UNIMPLEMENTED, "this fake runs PySpark jobs only")
        spec = request.pyspark_job
        if not spec.main_python_file_uri:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "main_python_file_uri is required")
        job_id = _new_id("c9q")
        proto = job_pb2.Job(
            id=job_id,
            cluster_id=request.cluster_id,
            created_at=_now(),
            name=request.name,
            created_by="fake-user",
            status=job_pb2.Job.PROVISIONING,
            pyspark_job=spec,
        )
        job = FakeJob(proto)
        with self.state.lock:
            self.state.jobs[job_id] = job
        self.state.record(
            "Job.Create", cluster_id=request.cluster_id, job_id=job_id, name=request.name, args=list(spec.args)
        )
        op = self.state.new_operation(
            f"Create Data Proc job {request.name}",
            job_service_pb2.CreateJobMetadata(cluster_id=request.cluster_id, job_id=job_id),
        )
        self.fake.background(self._run, cluster, job, op.id)
        return op

    def _run(self, cluster: FakeCluster, job: FakeJob, op_id: str) -> None:
        spec = job.proto.pyspark_job
        with self.state.lock:
            job.proto.status = job_pb2.Job.RUNNING
            job.proto.started_at.CopyFrom(_now())
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
        folder = self.fake.workdir / "jobs" / job.proto.id
        if cluster.nodes is None:  # stopped or deleted between Create and now
            self._finish_job(job, op_id, 1)
            return
        try:
            job.running = RunningJob(spark_job, cluster.nodes, folder, self.fake.cache, YARN, self.fake.job_env)
            code = job.running.wait(timeout=self.fake.job_timeout)
        except Exception:  # a bug of the fake must not leave the job RUNNING forever
            log.exception("fake Yandex Cloud: job %s could not run", job.proto.id)
            code = 1
        self._finish_job(job, op_id, code)

    def _finish_job(self, job: FakeJob, op_id: str, code: int) -> None:
        with self.state.lock:
            job.proto.finished_at.CopyFrom(_now())
            if job.running is not None and job.running.cancelled:
                job.proto.status = job_pb2.Job.CANCELLED
            else:
                job.proto.status = job_pb2.Job.DONE if code == 0 else job_pb2.Job.ERROR
            response = job_pb2.Job()
            response.CopyFrom(job.proto)
        self.state.record(
            "Job.Finished", job_id=job.proto.id, exit_code=code, status=job_pb2.Job.Status.Name(job.proto.status)
        )
        if job.proto.status == job_pb2.Job.DONE:
            self.state.finish(op_id, response=response)
        else:
            self.state.finish(
                op_id,
                error=f"Job {job.proto.id} failed: spark-submit exited with code {code}",
                code=code_pb2.FAILED_PRECONDITION,
            )
        job.done.set()

    def _job(self, job_id: str, context) -> FakeJob:
        with self.state.lock:
            job = self.state.jobs.get(job_id)
        if job is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"Job {job_id!r} not found")
        return job

    def Get(self, request, context):
        job = self._job(request.job_id, context)
        with self.state.lock:
            copy = job_pb2.Job()
            copy.CopyFrom(job.proto)
        return copy

    def List(self, request, context):
        name = None
        if request.filter.startswith("name="):
            name = request.filter.split("=", 1)[1].strip().strip("\"'")
        with self.state.lock:
            jobs = [
                j.proto
                for j in self.state.jobs.values()
                if j.proto.cluster_id == request.cluster_id and (name is None or j.proto.name == name)
            ]
            return job_service_pb2.ListJobsResponse(jobs=jobs)

    def ListLog(self, request, context):
        job = self._job(request.job_id, context)
        text = job.running.submit_log_text() if job.running is not None else ""
        start = int(request.page_token or 0)
        size = request.page_size or 64 * 1024
        chunk = text[start : start + size]
        end = start + len(chunk)
        finished = job.done.is_set()
        next_token = str(end) if (end < len(text) or not finished) else ""
        return job_service_pb2.ListJobLogResponse(content=chunk, next_page_token=next_token)

    def Cancel(self, request, context):
        job = self._job(request.job_id, context)
        if job.running is not None:
            job.running.cancel()
        with self.state.lock:
            job.proto.status = job_pb2.Job.CANCELLING
        op = self.state.new_operation(
            # the API's Cancel operation carries CreateJobMetadata (there is no CancelJobMetadata)
            "Cancel job",
            job_service_pb2.CreateJobMetadata(cluster_id=request.cluster_id, job_id=request.job_id),
        )
        self.fake.background(lambda: (job.done.wait(60), self.state.finish(op.id, response=job.proto)))
        return op


# --------------------------------------------------------------------------- Lockbox
class SecretService(secret_service_pb2_grpc.SecretServiceServicer):
    def __init__(self, state: State) -> None:
        self.state = state

    def List(self, request, context):
        with self.state.lock:
            found = [s.proto for s in self.state.secrets.values() if s.proto.folder_id == request.folder_id]
        return secret_service_pb2.ListSecretsResponse(secrets=found)

    def Get(self, request, context):
        with self.state.lock:
            secret = self.state.secrets.get(request.secret_id)
        if secret is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"Secret {request.secret_id!r} not found")
        return secret.proto


class PayloadService(payload_service_pb2_grpc.PayloadServiceServicer):
    def __init__(self, state: State) -> None:
        self.state = state

    def Get(self, request, context):
        self.state.record("Lockbox.GetPayload", secret_id=request.secret_id, via="grpc")
        with self.state.lock:
            secret = self.state.secrets.get(request.secret_id)
        if secret is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"Secret {request.secret_id!r} not found")
        if request.version_id and request.version_id != secret.proto.current_version.id:
            context.abort(grpc.StatusCode.NOT_FOUND, f"Version {request.version_id!r} not found")
        return payload_pb2.Payload(
            version_id=secret.proto.current_version.id,
            entries=[payload_pb2.Payload.Entry(key=k, text_value=v) for k, v in secret.entries.items()],
        )


# --------------------------------------------------------------------------- REST for on-cluster code
def _rest_handler(fake: YandexCloudFake, metadata: bool):
    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, fmt, *args):  # quiet
            log.debug("fake yandex rest: " + fmt, *args)

        def _json(self, status: int, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):  # noqa: N802
            if metadata:
                if self.path.rstrip("/") != "/computeMetadata/v1/instance/service-accounts/default/token":
                    return self._json(404, {"error": "not found"})
                if self.headers.get("Metadata-Flavor") != "Google":
                    return self._json(403, {"error": "Metadata-Flavor: Google header required"})
                token = "t1.fake." + secrets.token_urlsafe(24)
                with fake.state.lock:
                    fake.state.iam_tokens.add(token)
                return self._json(200, {"access_token": token, "expires_in": 43200, "token_type": "Bearer"})
            # Lockbox payload REST API: GET /lockbox/v1/secrets/{secretId}/payload
            parts = self.path.split("?")[0].strip("/").split("/")
            if len(parts) != 5 or parts[:3] != ["lockbox", "v1", "secrets"] or parts[4] != "payload":
                return self._json(404, {"code": 5, "message": "not found"})
            auth = self.headers.get("Authorization", "")
            with fake.state.lock:
                ok = auth.startswith("Bearer ") and auth[7:] in fake.state.iam_tokens
                secret = fake.state.secrets.get(parts[3])
            if not ok:
                return self._json(401, {"code": 16, "message": "The token is invalid"})
            if secret is None:
                return self._json(404, {"code": 5, "message": f"Secret {parts[3]} not found"})
            fake.state.record("Lockbox.GetPayload", secret_id=parts[3], via="rest")
            return self._json(
                200,
                {
                    "versionId": secret.proto.current_version.id,
                    "entries": [{"key": k, "textValue": v} for k, v in secret.entries.items()],
                },
            )

    return Handler


# --------------------------------------------------------------------------- the server
class YandexCloudFake:
    """Start with :meth:`start`, stop with :meth:`stop` (also deletes clusters left running).

    :param workdir: folder for the certificate, job folders and local clusters.
    :param s3: object storage the jobs' ``s3a://`` files are fetched from.
    :param oauth_tokens: OAuth tokens IAM accepts.
    :param job_env: extra environment for every job's driver, on top of the node's.
    :param image: the fake managed image (default: built or found by ``ensure_cluster_image``).
    :param node_cache: the node-level resource cache (default: ``<workdir>/node-cache``). Keyed
        by bucket, key and ETag, so fakes on one object store may share one: the tests do, to
        unpack the ~500 MiB cluster environment once rather than once per cloud.

    Fault knob: a cluster whose name is in :attr:`fail_cluster_start` is registered by Create
    (Get/List see it, CREATING) and then ends in ERROR without starting anything, its Create
    operation failing, as a Data Proc cluster whose hosts do not come up; it stays listed
    until deleted.
    """

    def __init__(
        self,
        workdir: Path,
        s3: S3Settings | None = None,
        oauth_tokens: set[str] | None = None,
        worker_cores: int = 2,
        worker_memory: str = "2g",
        job_timeout: float = 600,
        job_env: dict[str, str] | None = None,
        certificate: Certificate | None = None,
        image: ClusterImage | None = None,
        node_cache: Path | None = None,
    ) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.s3 = s3
        self.state = State()
        self.oauth_tokens = set(oauth_tokens or {"fake-oauth-token"})
        self.sa_keys: dict[str, dict[str, str]] = {}
        self.job_timeout = job_timeout
        self.fail_cluster_start: set[str] = set()
        self.certificate = certificate or make_self_signed(self.workdir / "tls")
        self.job_env = dict(job_env or {})
        self.local_clusters = LocalClusters(self.workdir / "clusters", worker_cores, worker_memory, image=image)
        self.cache = LocalizationCache(node_cache or self.workdir / "node-cache", s3)
        self._pool = futures.ThreadPoolExecutor(max_workers=8, thread_name_prefix="fake-yc-bg")
        self.spark = ManagedSpark(self)  # Managed Service for Apache Spark (tests.fakes.yandex_spark)
        self._server: grpc.Server | None = None
        self._http: list[http.server.ThreadingHTTPServer] = []
        self.port = 0
        self.rest_port = 0
        self.metadata_port = 0

    # ---------------------------------------------------------------- set-up helpers
    @property
    def endpoint(self) -> str:
        """What goes into the Airflow connection's ``endpoint`` extra."""
        return f"127.0.0.1:{self.port}"

    @property
    def lockbox_rest_url(self) -> str:
        return f"https://127.0.0.1:{self.rest_port}"

    @property
    def metadata_addr(self) -> str:
        return f"127.0.0.1:{self.metadata_port}"

    def node_profile(self, cluster_properties: dict[str, str] | None = None) -> NodeProfile:
        """What a Data Proc node comes with: ``s3a://`` on Object Storage (here: the fake's S3),
        the cluster's ``spark:`` properties, the metadata service and the fake's CA."""
        defaults = self.s3.s3a_defaults() if self.s3 is not None else {}
        for key, value in (cluster_properties or {}).items():
            if key.startswith("spark:"):
                defaults[key[len("spark:") :]] = str(value)
            elif key.startswith("pip:"):
                log.warning("fake Yandex Cloud: cluster property %s is not installed on the fake image", key)
        cert = str(self.certificate.cert_path)
        env = {"YC_METADATA_ADDR": self.metadata_addr, "SSL_CERT_FILE": cert, "REQUESTS_CA_BUNDLE": cert}
        return NodeProfile(spark_defaults=defaults, env=env)

    def background(self, fn, *args) -> futures.Future:
        def run():
            try:
                fn(*args)
            except Exception:  # surfaced through the operation; logged for the test output
                log.exception("fake Yandex Cloud background task failed")

        return self._pool.submit(run)

    def add_service_account_key(self, service_account_id: str = "ajefakeserviceaccount") -> dict[str, str]:
        """An authorized key (the JSON ``yc iam key create`` writes); IAM accepts its JWTs."""
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import rsa

        private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        key_id = _new_id("aje")
        self.sa_keys[key_id] = {
            "service_account_id": service_account_id,
            "public_key": private.public_key()
            .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
            .decode(),
        }
        return {
            "id": key_id,
            "service_account_id": service_account_id,
            "private_key": private.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            ).decode(),
        }

    def add_secret(self, folder_id: str, name: str, entries: dict[str, str]) -> str:
        """A Lockbox secret with one active version holding ``entries``; returns its id."""
        secret_id = _new_id("e6q")
        version = secret_pb2.Version(
            id=_new_id("e6q"),
            secret_id=secret_id,
            created_at=_now(),
            status=secret_pb2.Version.ACTIVE,
            payload_entry_keys=list(entries),
        )
        proto = secret_pb2.Secret(
            id=secret_id,
            folder_id=folder_id,
            created_at=_now(),
            name=name,
            status=secret_pb2.Secret.ACTIVE,
            current_version=version,
        )
        with self.state.lock:
            self.state.secrets[secret_id] = FakeSecret(proto, dict(entries))
        return secret_id

    # ---------------------------------------------------------------- lifecycle
    def start(self) -> YandexCloudFake:
        server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=16, thread_name_prefix="fake-yc-grpc"),
            interceptors=[AuthInterceptor(self.state), ValidationInterceptor()],
        )
        creds = grpc.ssl_server_credentials([(self.certificate.key_pem, self.certificate.cert_pem)])
        self.port = server.add_secure_port("127.0.0.1:0", creds)
        api_endpoint_service_pb2_grpc.add_ApiEndpointServiceServicer_to_server(EndpointService(self.endpoint), server)
        iam_token_service_pb2_grpc.add_IamTokenServiceServicer_to_server(
            IamTokenService(self.state, self.oauth_tokens, self.sa_keys), server
        )
        operation_service_pb2_grpc.add_OperationServiceServicer_to_server(OperationService(self.state), server)
        cluster_service_pb2_grpc.add_ClusterServiceServicer_to_server(ClusterService(self), server)
        job_service_pb2_grpc.add_JobServiceServicer_to_server(JobService(self), server)
        secret_service_pb2_grpc.add_SecretServiceServicer_to_server(SecretService(self.state), server)
        payload_service_pb2_grpc.add_PayloadServiceServicer_to_server(PayloadService(self.state), server)
        self.spark.register(server)
        server.start()
        self._server = server

        rest = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _rest_handler(self, metadata=False))
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.certificate.cert_path, self.certificate.key_path)
        rest.socket = context.wrap_socket(rest.socket, server_side=True)
        metadata = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _rest_handler(self, metadata=True))
        self.rest_port, self.metadata_port = rest.server_address[1], metadata.server_address[1]
        for srv in (rest, metadata):
            srv.daemon_threads = True
            threading.Thread(target=srv.serve_forever, name="fake-yc-rest", daemon=True).start()
            self._http.append(srv)
        log.info(
            "fake Yandex Cloud API on %s (REST %s, metadata %s)", self.endpoint, self.rest_port, self.metadata_port
        )
        return self

    def stop(self) -> None:
        """Cancel running jobs, delete every cluster still up, stop the servers."""
        with self.state.lock:
            jobs = list(self.state.jobs.values())
        for job in jobs:
            if job.running is not None:
                job.running.cancel()
        self.spark.cancel_jobs()
        if self._server is not None:
            self._server.stop(grace=2).wait(5)
            self._server = None
        for srv in self._http:
            srv.shutdown()
            srv.server_close()
        self._http = []
        self._pool.shutdown(wait=True, cancel_futures=True)
        self.local_clusters.stop_all()

    def __enter__(self) -> YandexCloudFake:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ---------------------------------------------------------------- assertions
    @property
    def live_clusters(self) -> list[str]:
        with self.state.lock:
            return sorted(self.state.clusters)


def main(argv: list[str] | None = None) -> None:
    import argparse
    import signal

    parser = argparse.ArgumentParser(description="Run the fake Yandex Cloud API until interrupted.")
    parser.add_argument("--workdir", default=".spindle/fake-yandex")
    parser.add_argument("--s3-endpoint", help="S3-compatible endpoint the jobs' s3a:// files come from")
    parser.add_argument("--oauth-token", default="fake-oauth-token")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    fake = YandexCloudFake(
        Path(args.workdir), S3Settings(args.s3_endpoint) if args.s3_endpoint else None, {args.oauth_token}
    ).start()
    print(
        json.dumps(
            {
                "endpoint": fake.endpoint,
                "roots": str(fake.certificate.cert_path),
                "lockbox_rest": fake.lockbox_rest_url,
                "metadata": fake.metadata_addr,
            }
        ),
        flush=True,
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    fake.stop()


if __name__ == "__main__":
    main()


__all__ = ["YandexCloudFake", "S3Settings", "uuid"]
