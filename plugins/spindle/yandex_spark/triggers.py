"""The deferrable wait of a Managed Spark job: a trigger polling ``JobService.Get`` in the
triggerer, so the job's worker slot is free while the job runs."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent


class ManagedSparkJobTrigger(BaseTrigger):
    """Fires once the job is DONE, ERROR or CANCELLED (or ``timeout`` seconds passed):
    ``{"status", "cluster_id", "job_id", "ui_url"}`` (status ``TIMEOUT`` for the latter)."""

    def __init__(
        self,
        *,
        cluster_id: str,
        job_id: str,
        connection_id: str,
        poll_interval: float = 10.0,
        timeout: float | None = None,
    ) -> None:
        super().__init__()
        self.cluster_id = cluster_id
        self.job_id = job_id
        self.connection_id = connection_id
        self.poll_interval = poll_interval
        self.timeout = timeout

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__name__}",
            {
                "cluster_id": self.cluster_id,
                "job_id": self.job_id,
                "connection_id": self.connection_id,
                "poll_interval": self.poll_interval,
                "timeout": self.timeout,
            },
        )

    def _get_job(self, hook: Any) -> Any:
        return hook.get_job(self.cluster_id, self.job_id)

    async def run(self) -> AsyncIterator[TriggerEvent]:
        from asgiref.sync import sync_to_async

        from spindle.yandex_spark.hooks import FINISHED, ManagedSparkHook, job_status

        # the connection lookup is synchronous (and, in the triggerer, goes through its comms)
        hook = await sync_to_async(ManagedSparkHook)(yandex_conn_id=self.connection_id)
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        while True:
            job = await asyncio.to_thread(self._get_job, hook)
            if job.status in FINISHED:
                status = job_status(job)
                break
            if deadline is not None and time.monotonic() > deadline:
                status = "TIMEOUT"
                break
            self.log.info("Managed Spark job %s is %s", self.job_id, job_status(job))
            await asyncio.sleep(self.poll_interval)
        yield TriggerEvent(
            {"status": status, "cluster_id": self.cluster_id, "job_id": self.job_id, "ui_url": job.ui_url}
        )
