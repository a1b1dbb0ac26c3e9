"""A trigger that runs an amazon provider waiter trigger's wait with the synchronous boto3 client.

The provider's triggers (``AwsBaseWaiterTrigger``) poll through aiobotocore, the provider's
optional ``aiobotocore`` extra. No aiobotocore release supports the botocore Spindle pins, so
without it :class:`ThreadedAwsWaiterTrigger` wraps the provider's trigger: the same waiter (the
provider's own waiter model, custom waiters included), arguments, delay, attempts, failure and
status messages, and the same events, with the blocking poll in a worker thread of the triggerer
(``asyncio.to_thread``) so the triggerer's event loop keeps serving its other triggers.

A cancelled trigger (task killed or timed out) leaves its thread polling until the waiter ends:
a thread cannot be interrupted. The event is then dropped by the triggerer.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
from collections.abc import AsyncIterator
from typing import Any

from airflow.providers.amazon.aws.triggers.base import AwsBaseWaiterTrigger
from airflow.triggers.base import BaseTrigger, TriggerEvent


def async_client_available() -> bool:
    """Whether the provider's own triggers can run here (aiobotocore is installed)."""
    return importlib.util.find_spec("aiobotocore") is not None


class ThreadedAwsWaiterTrigger(BaseTrigger):
    """Run ``trigger_classpath(**trigger_kwargs)``'s waiter with the synchronous client.

    :param trigger_classpath: an ``AwsBaseWaiterTrigger`` subclass (its ``serialize()`` output).
    :param trigger_kwargs: its serialized arguments.
    """

    def __init__(self, trigger_classpath: str, trigger_kwargs: dict[str, Any]) -> None:
        super().__init__()
        self.trigger_classpath = trigger_classpath
        self.trigger_kwargs = trigger_kwargs

    @classmethod
    def wrap(cls, trigger: AwsBaseWaiterTrigger) -> ThreadedAwsWaiterTrigger:
        classpath, kwargs = trigger.serialize()
        return cls(classpath, kwargs)

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {"trigger_classpath": self.trigger_classpath, "trigger_kwargs": self.trigger_kwargs},
        )

    def provider_trigger(self) -> AwsBaseWaiterTrigger:
        module, _, name = self.trigger_classpath.rpartition(".")
        return getattr(importlib.import_module(module), name)(**self.trigger_kwargs)

    async def run(self) -> AsyncIterator[TriggerEvent]:
        from airflow.providers.common.compat.sdk import AirflowException

        trigger = self.provider_trigger()
        try:
            await asyncio.to_thread(_wait, trigger)
        except AirflowException as error:  # the waiter reached a failure state or ran out of attempts
            yield TriggerEvent({"status": "error", "message": str(error), trigger.return_key: trigger.return_value})
        else:
            yield TriggerEvent({"status": "success", trigger.return_key: trigger.return_value})


def _wait(trigger: AwsBaseWaiterTrigger) -> None:
    from airflow.providers.amazon.aws.utils.waiter_with_logging import wait

    waiter = trigger.hook().get_waiter(trigger.waiter_name, config_overrides=trigger.waiter_config_overrides)
    wait(
        waiter=waiter,
        waiter_delay=int(trigger.waiter_delay),
        waiter_max_attempts=int(trigger.attempts),
        args=trigger.waiter_args,
        failure_message=trigger.failure_message,
        status_message=trigger.status_message,
        status_args=trigger.status_queries,
    )
