"""The cloud backends and where each one's code lives: one line per backend.

The neutral modules (:mod:`.config`, :mod:`.lanes`, :mod:`.reaper`) look a backend up here
and import its folder lazily, by name: ``spindle.backends`` itself names no cloud SDK, and a
DAG that runs only locally never imports one. Adding a backend is one folder exposing a
:class:`Backend` (settings, lane, reaper) and one line in :data:`MODULES`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from typing import Any

#: backend name -> "module:attribute" of its :class:`Backend`.
MODULES: dict[str, str] = {
    "yandex": "spindle.yandex.backend:DATAPROC",
    "yandex_spark": "spindle.yandex_spark.backend:MANAGED_SPARK",
    "emr": "spindle.aws.backend:EMR",
    "emr_serverless": "spindle.aws.backend:EMR_SERVERLESS",
}

#: Default of a setting that has none: the setting must be given.
REQUIRED = object()

#: setting -> (type or tuple of types, default or REQUIRED, description)
SettingsSchema = Mapping[str, tuple[Any, Any, str]]


def _no_extra_checks(settings: Mapping[str, Any]) -> list[str]:
    return []


@dataclass(frozen=True)
class Backend:
    """What the neutral code needs of a cloud backend.

    :param settings: the backend's own settings (added to the common ones of :mod:`.config`).
    :param build_lane: ``(check, jobs, model, inputs, job_kwargs) -> (stage, create, delete)``:
        adds the lane's tasks to the DAG being defined (inside its task group).
    :param reap: ``(settings, dry_run, ttl_override, now) -> [Finding]`` (see :mod:`.reaper`).
    :param validate: extra checks of validated settings; returns error messages.
    :param on_check: ``(context, settings) -> None``, run by ``check_backend`` after validation
        (may fill in settings, e.g. the Data Proc shared cluster's id).
    :param check_inlets: assets ``check_backend`` reads (for ``on_check``).
    """

    name: str
    title: str
    settings: SettingsSchema
    build_lane: Callable[..., tuple[Any, Any, Any]]
    reap: Callable[..., list[Any]]
    validate: Callable[[Mapping[str, Any]], list[str]] = _no_extra_checks
    on_check: Callable[[Any, dict[str, Any]], None] | None = None
    check_inlets: Sequence[Any] = field(default_factory=tuple)


#: The local lane has no settings and no lane to build, only a reaper ("module:function", same
#: signature as :attr:`Backend.reap`): its clusters under ``$SPINDLE_HOME/clusters``.
LOCAL_REAPER = "spindle.backends.local:reap"


def names() -> tuple[str, ...]:
    return tuple(MODULES)


def reaper_names() -> tuple[str, ...]:
    """Every backend the reaper looks in: ``local``, then the cloud backends."""
    return ("local", *MODULES)


def reaper(name: str) -> Callable[..., list[Any]]:
    """``reap(settings, dry_run, ttl_override, now) -> [Finding]`` of a backend."""
    if name == "local":
        module, _, attribute = LOCAL_REAPER.partition(":")
        return getattr(importlib.import_module(module), attribute)
    return get(name).reap


@cache
def get(name: str) -> Backend:
    if name not in MODULES:
        raise KeyError(f"unknown backend {name!r} (one of {', '.join(MODULES)})")
    module, _, attribute = MODULES[name].partition(":")
    return getattr(importlib.import_module(module), attribute)
