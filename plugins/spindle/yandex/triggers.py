"""Deferrable waits of Yandex Cloud jobs (the provider has none): triggers polling the job's
``JobService.Get`` through the yandexcloud SDK in the triggerer, so the job task's worker slot is
free while the job runs.

- :class:`YandexJobTrigger`: the polling loop both Yandex lanes share; a subclass names its hook,
  the job states after which nothing changes and what its event carries besides the status.
- :class:`DataprocJobTrigger`: a Data Proc job (``yandex.cloud.dataproc.v1``).
- :class:`spindle.yandex_spark.triggers.ManagedSparkJobTrigger`: a Managed Spark job.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent


class YandexJobTrigger(BaseTrigger):
    """Fires once the job is DONE, ERROR or CANCELLED (or ``timeout`` seconds passed):
    ``{"status", "cluster_id", "job_id", **event_extra(job)}`` (status ``TIMEOUT`` for the latter)."""

    #: what the log lines call the job
    service = "Yandex Cloud"

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

    # ------------------------------------------------------------------ what a lane defines
    def make_hook(self) -> Any:
        """The lane's hook over ``connection_id`` (synchronous: called in a thread)."""
        raise NotImplementedError

    def finished(self, job: Any) -> bool:
        raise NotImplementedError

    def status(self, job: Any) -> str:
        raise NotImplementedError

    def event_extra(self, job: Any) -> dict[str, Any]:
        return {}

    def _get_job(self, hook: Any) -> Any:
        return hook.get_job(self.cluster_id, self.job_id)

    # ------------------------------------------------------------------ the wait
    async def run(self) -> AsyncIterator[TriggerEvent]:
        from asgiref.sync import sync_to_async

        # the connection lookup is synchronous (and, in the triggerer, goes through its comms)
        hook = await sync_to_async(self.make_hook)()
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        while True:
            job = await asyncio.to_thread(self._get_job, hook)
            if self.finished(job):
                status = self.status(job)
                break
            if deadline is not None and time.monotonic() > deadline:
                status = "TIMEOUT"
                break
            self.log.info("%s job %s is %s", self.service, self.job_id, self.status(job))
            await asyncio.sleep(self.poll_interval)
        yield TriggerEvent(
            {"status": status, "cluster_id": self.cluster_id, "job_id": self.job_id, **self.event_extra(job)}
        )


class DataprocJobTrigger(YandexJobTrigger):
    """The deferrable wait of a Data Proc job (``JobService.Get``); the event as
    :class:`YandexJobTrigger`'s."""

    service = "Data Proc"

    def make_hook(self) -> Any:
        from spindle.yandex.hooks import SpindleDataprocHook

        return SpindleDataprocHook(yandex_conn_id=self.connection_id)

    def finished(self, job: Any) -> bool:
        from spindle.yandex.hooks import JOB_FINISHED

        return job.status in JOB_FINISHED

    def status(self, job: Any) -> str:
        from spindle.yandex.hooks import job_status

        return job_status(job)
