"""A hook over Yandex Managed Service for Apache Spark (``yandex.cloud.spark.v1``): the provider
has none. Same connection and auth as the Data Proc lane (``yandexcloud_default``, the
provider's :class:`YandexCloudBaseHook`): only the gRPC stubs differ."""

from __future__ import annotations

from typing import Any

import yandex.cloud.spark.v1.cluster_pb2 as cluster_pb
import yandex.cloud.spark.v1.cluster_service_pb2 as cluster_service_pb
import yandex.cloud.spark.v1.cluster_service_pb2_grpc as cluster_service_grpc_pb
import yandex.cloud.spark.v1.job_pb2 as job_pb
import yandex.cloud.spark.v1.job_service_pb2 as job_service_pb
import yandex.cloud.spark.v1.job_service_pb2_grpc as job_service_grpc_pb
from airflow.providers.yandex.hooks.yandex import YandexCloudBaseHook

CONSOLE_URL = "https://console.yandex.cloud/folders/{folder_id}/managed-spark/cluster/{cluster_id}"
#: Job states after which nothing changes any more.
FINISHED = (job_pb.Job.DONE, job_pb.Job.ERROR, job_pb.Job.CANCELLED)
#: The cluster link the service names its Spark History Server by.
HISTORY_LINK = "Spark History Server"


def job_status(job: Any) -> str:
    return job_pb.Job.Status.Name(job.status)


def cluster_status(cluster: Any) -> str:
    return cluster_pb.Cluster.Status.Name(cluster.status)


class ManagedSparkHook(YandexCloudBaseHook):
    """Clusters and jobs of Managed Service for Apache Spark, through the yandexcloud SDK.

    Every mutating call returns an operation; ``wait`` waits for it (the SDK's waiter) and
    returns its result, or raises the SDK's ``OperationError`` naming the operation's error.
    """

    @property
    def clusters(self) -> cluster_service_grpc_pb.ClusterServiceStub:
        return self.sdk.client(cluster_service_grpc_pb.ClusterServiceStub)

    @property
    def jobs(self) -> job_service_grpc_pb.JobServiceStub:
        return self.sdk.client(job_service_grpc_pb.JobServiceStub)

    def wait(self, operation: Any, response_type: Any = None, meta_type: Any = None, timeout: float | None = None):
        return self.sdk.wait_operation_and_get_result(
            operation, response_type=response_type, meta_type=meta_type, timeout=timeout
        )

    # ------------------------------------------------------------------ clusters
    def create_cluster(self, request: cluster_service_pb.CreateClusterRequest) -> Any:
        """The Create operation (not waited for: the caller needs its metadata's cluster id
        to clean up when the wait fails)."""
        return self.clusters.Create(request)

    def get_cluster(self, cluster_id: str) -> Any:
        return self.clusters.Get(cluster_service_pb.GetClusterRequest(cluster_id=cluster_id))

    def list_clusters(self, folder_id: str | None = None) -> list[Any]:
        folder_id = folder_id or self.default_folder_id
        if not folder_id:
            raise ValueError("a folder id is required to list Managed Spark clusters")
        clusters, token = [], ""
        while True:
            page = self.clusters.List(
                cluster_service_pb.ListClustersRequest(folder_id=folder_id, page_size=100, page_token=token)
            )
            clusters.extend(page.clusters)
            token = page.next_page_token
            if not token:
                return clusters

    def delete_cluster(self, cluster_id: str, timeout: float | None = None) -> None:
        operation = self.clusters.Delete(cluster_service_pb.DeleteClusterRequest(cluster_id=cluster_id))
        self.wait(operation, meta_type=cluster_service_pb.DeleteClusterMetadata, timeout=timeout)

    def start_cluster(self, cluster_id: str, timeout: float | None = None) -> None:
        operation = self.clusters.Start(cluster_service_pb.StartClusterRequest(cluster_id=cluster_id))
        self.wait(operation, cluster_pb.Cluster, cluster_service_pb.StartClusterMetadata, timeout)

    def stop_cluster(self, cluster_id: str, timeout: float | None = None) -> None:
        operation = self.clusters.Stop(cluster_service_pb.StopClusterRequest(cluster_id=cluster_id))
        self.wait(operation, cluster_pb.Cluster, cluster_service_pb.StopClusterMetadata, timeout)

    def history_url(self, cluster_id: str) -> str | None:
        """The cluster's Spark History Server link (kept by the service for its jobs' UIs)."""
        links = {link.name: link.url for link in self.get_cluster(cluster_id).links}
        if HISTORY_LINK in links:
            return links[HISTORY_LINK]
        history = [url for name, url in links.items() if "history" in name.lower()]
        return history[0] if history else None

    @staticmethod
    def console_url(cluster_id: str, folder_id: str) -> str:
        return CONSOLE_URL.format(folder_id=folder_id, cluster_id=cluster_id)

    # ------------------------------------------------------------------ jobs
    def submit_job(self, request: job_service_pb.CreateJobRequest) -> str:
        """``JobService.Create``; the job's id from the operation's metadata (the operation
        itself ends only when the job does)."""
        operation = self.jobs.Create(request)
        metadata = job_service_pb.CreateJobMetadata()
        operation.metadata.Unpack(metadata)
        return metadata.job_id

    def get_job(self, cluster_id: str, job_id: str) -> Any:
        return self.jobs.Get(job_service_pb.GetJobRequest(cluster_id=cluster_id, job_id=job_id))

    def find_job(self, cluster_id: str, name: str) -> Any | None:
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

    def cancel_job(self, cluster_id: str, job_id: str, timeout: float = 120) -> Any:
        """``JobService.Cancel``, waiting (up to ``timeout`` s) for its operation."""
        operation = self.jobs.Cancel(job_service_pb.CancelJobRequest(cluster_id=cluster_id, job_id=job_id))
        return self.wait(operation, job_pb.Job, job_service_pb.CreateJobMetadata, timeout)

    def job_log_page(self, cluster_id: str, job_id: str, page_token: str = "") -> tuple[str, str]:
        """One page of the job's driver log and the next page's token ('' at the end)."""
        page = self.jobs.ListLog(
            job_service_pb.ListJobLogRequest(cluster_id=cluster_id, job_id=job_id, page_token=page_token)
        )
        return page.content, page.next_page_token
