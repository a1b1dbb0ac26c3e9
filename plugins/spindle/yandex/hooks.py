"""Data Proc calls the provider's :class:`DataprocHook` lacks: cluster/host/UI-link reads,
listing clusters by label, start/stop, job submit without waiting (the deferrable wait), job
reads and the job log API."""

from __future__ import annotations

from typing import Any

import yandex.cloud.dataproc.v1.cluster_service_pb2 as cluster_service_pb
import yandex.cloud.dataproc.v1.cluster_service_pb2_grpc as cluster_service_grpc_pb
import yandex.cloud.dataproc.v1.job_pb2 as job_pb
import yandex.cloud.dataproc.v1.job_service_pb2 as job_service_pb
import yandex.cloud.dataproc.v1.job_service_pb2_grpc as job_service_grpc_pb
import yandex.cloud.dataproc.v1.subcluster_pb2 as subcluster_pb
import yandex.cloud.operation.operation_service_pb2 as operation_service_pb
import yandex.cloud.operation.operation_service_pb2_grpc as operation_service_grpc_pb
from airflow.providers.yandex.hooks.dataproc import DataprocHook

#: Default port of the Spark UI on a Data Proc master when no UI Proxy is enabled: YARN's
#: ResourceManager, which links every running Spark application's UI.
DEFAULT_MASTER_UI_PORT = 8088
CONSOLE_URL = "https://console.yandex.cloud/folders/{folder_id}/data-proc/cluster/{cluster_id}"
#: Job states after which nothing changes any more.
JOB_FINISHED = (job_pb.Job.DONE, job_pb.Job.ERROR, job_pb.Job.CANCELLED)


def job_status(job: Any) -> str:
    return job_pb.Job.Status.Name(job.status)


class SpindleDataprocHook(DataprocHook):
    """:class:`DataprocHook` plus the reads and calls Spindle needs (same connection, SDK)."""

    @property
    def clusters(self) -> cluster_service_grpc_pb.ClusterServiceStub:
        return self.sdk.client(cluster_service_grpc_pb.ClusterServiceStub)

    @property
    def jobs(self) -> job_service_grpc_pb.JobServiceStub:
        return self.sdk.client(job_service_grpc_pb.JobServiceStub)

    # ------------------------------------------------------------------ clusters
    def get_cluster(self, cluster_id: str):
        return self.clusters.Get(cluster_service_pb.GetClusterRequest(cluster_id=cluster_id))

    def list_clusters(self, folder_id: str | None = None) -> list[Any]:
        folder_id = folder_id or self.default_folder_id
        if not folder_id:
            raise ValueError("a folder id is required to list Data Proc clusters")
        clusters, token = [], ""
        while True:
            page = self.clusters.List(
                cluster_service_pb.ListClustersRequest(folder_id=folder_id, page_size=100, page_token=token)
            )
            clusters.extend(page.clusters)
            token = page.next_page_token
            if not token:
                return clusters

    def master_host(self, cluster_id: str) -> str | None:
        hosts = self.clusters.ListHosts(cluster_service_pb.ListClusterHostsRequest(cluster_id=cluster_id)).hosts
        for host in hosts:
            if host.role == subcluster_pb.Role.MASTERNODE:
                return host.name
        return None

    def ui_links(self, cluster_id: str) -> dict[str, str]:
        response = self.clusters.ListUILinks(cluster_service_pb.ListUILinksRequest(cluster_id=cluster_id))
        return {link.name: link.url for link in response.links}

    def spark_ui_url(self, cluster_id: str, master_ui_port: int = DEFAULT_MASTER_UI_PORT) -> str | None:
        """The UI Proxy's Spark link when the cluster has UI Proxy on, else the master's
        ResourceManager UI (reachable from the cluster's network)."""
        cluster = self.get_cluster(cluster_id)
        if cluster.ui_proxy:
            links = self.ui_links(cluster_id)
            for preferred in ("Spark History Server", "YARN Resource Manager Web UI"):
                if preferred in links:
                    return links[preferred]
            spark = [url for name, url in links.items() if "spark" in name.lower()]
            if spark:
                return spark[0]
        host = self.master_host(cluster_id)
        return f"http://{host}:{master_ui_port}" if host else None

    def console_url(self, cluster_id: str, folder_id: str | None = None) -> str:
        folder_id = folder_id or self.get_cluster(cluster_id).folder_id
        return CONSOLE_URL.format(folder_id=folder_id, cluster_id=cluster_id)

    def start_cluster(self, cluster_id: str):
        return self.dataproc_client.start_cluster(cluster_id=cluster_id)

    def stop_cluster(self, cluster_id: str, decommission_timeout: int = 0):
        return self.dataproc_client.stop_cluster(cluster_id=cluster_id, decommission_timeout=decommission_timeout)

    # ------------------------------------------------------------------ jobs
    def submit_job(self, request: job_service_pb.CreateJobRequest) -> tuple[str, str]:
        """``JobService.Create`` without waiting (its operation ends only when the job does):
        the job's id (from the operation's metadata) and the operation's id."""
        operation = self.jobs.Create(request)
        metadata = job_service_pb.CreateJobMetadata()
        operation.metadata.Unpack(metadata)
        return metadata.job_id, operation.id

    def get_job(self, cluster_id: str, job_id: str):
        return self.jobs.Get(job_service_pb.GetJobRequest(cluster_id=cluster_id, job_id=job_id))

    def operation_error(self, operation_id: str) -> str | None:
        """The error message of a finished operation (a job's Create: why the job failed), else None."""
        operations = self.sdk.client(operation_service_grpc_pb.OperationServiceStub)
        operation = operations.Get(operation_service_pb.GetOperationRequest(operation_id=operation_id))
        return operation.error.message if operation.done and operation.HasField("error") else None

    def find_job(self, cluster_id: str, name: str):
        """The newest job named ``name`` on the cluster, or None."""
        jobs, token = [], ""
        while True:
            page = self.jobs.List(
                job_service_pb.ListJobsRequest(
                    cluster_id=cluster_id, page_size=100, page_token=token, filter=f'name="{name}"'
                )
            )
            jobs.extend(j for j in page.jobs if j.name == name)
            token = page.next_page_token
            if not token:
                break
        return max(jobs, key=lambda j: j.created_at.ToNanoseconds()) if jobs else None

    def cancel_job(self, cluster_id: str, job_id: str, timeout: float = 120):
        """``JobService.Cancel``, waiting (up to ``timeout`` s) for its operation."""
        operation = self.jobs.Cancel(job_service_pb.CancelJobRequest(cluster_id=cluster_id, job_id=job_id))
        return self.sdk.wait_operation_and_get_result(operation, timeout=timeout)

    def job_log_page(self, cluster_id: str, job_id: str, page_token: str = "") -> tuple[str, str]:
        """One page of the job's driver output and the next page's token ('' at the end)."""
        page = self.jobs.ListLog(
            job_service_pb.ListJobLogRequest(cluster_id=cluster_id, job_id=job_id, page_token=page_token)
        )
        return page.content, page.next_page_token

    def job_log(self, cluster_id: str, job_id: str, max_pages: int = 1000) -> str:
        parts, token = [], ""
        for _ in range(max_pages):
            content, next_token = self.job_log_page(cluster_id, job_id, token)
            parts.append(content)
            if not next_token or (next_token == token and not content):
                break
            token = next_token
        return "".join(parts)
