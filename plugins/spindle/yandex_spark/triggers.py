"""The deferrable wait of a Managed Spark job: a trigger polling ``JobService.Get`` in the
triggerer, so the job's worker slot is free while the job runs (the loop is
:class:`spindle.yandex.triggers.YandexJobTrigger`, shared with Data Proc)."""

from __future__ import annotations

from typing import Any

from spindle.yandex.triggers import YandexJobTrigger


class ManagedSparkJobTrigger(YandexJobTrigger):
    """Fires once the job is DONE, ERROR or CANCELLED (or ``timeout`` seconds passed):
    ``{"status", "cluster_id", "job_id", "ui_url"}`` (status ``TIMEOUT`` for the latter)."""

    service = "Managed Spark"

    def make_hook(self) -> Any:
        from spindle.yandex_spark.hooks import ManagedSparkHook

        return ManagedSparkHook(yandex_conn_id=self.connection_id)

    def finished(self, job: Any) -> bool:
        from spindle.yandex_spark.hooks import FINISHED

        return job.status in FINISHED

    def status(self, job: Any) -> str:
        from spindle.yandex_spark.hooks import job_status

        return job_status(job)

    def event_extra(self, job: Any) -> dict[str, Any]:
        return {"ui_url": job.ui_url}
