"""Cover embedding in a DAG: its params, the check that plans it, and the skip condition.

- :func:`covers_params`: ``embed_covers`` (on/off), ``covers_source`` (a folder of images named
  by cover id, or a URL template with ``{cover_id}``), ``clip_model_path``.
- :func:`check_covers`: resolves them before any cluster starts (XCom ``enabled``,
  ``model_path``, ``images_dir``, ``url_template``, ``reason``); fails with ``param '<name>':
  ...`` on a bad value. Covers are off when ``embed_covers`` is false, or when no CLIP model is
  configured (param, else env ``SPINDLE_CLIP_MODEL``): there are no CLIP weights to default to.
- :func:`covers_enabled`: the ``pre_execute`` hook of the ``embed_images`` job task (and of its
  copies in the cloud lanes): it skips the task, with the reason in its log, when covers are off.
  This is what ``@task.run_if`` does for TaskFlow tasks, for a classic operator.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from airflow.sdk import Param, get_current_context, task
from airflow.sdk.exceptions import AirflowSkipException

from spindle.config import repo_root
from spindle.pipelines import ParamCheckError, resolve_model_dir

TASK_ID = "check_covers"
CLIP_MODEL_ENV = "SPINDLE_CLIP_MODEL"
#: Open Library's covers service; ``default=false``: 404 for an unknown cover, not a blank image.
OPEN_LIBRARY_COVERS = "https://covers.openlibrary.org/b/id/{cover_id}-M.jpg?default=false"
#: The demo's default: the bundled covers (named by book, not by Open Library cover id, so the
#: demo's books find none there and are counted as not_found; there is no internet here).
SAMPLE_COVERS = "data/samples/covers"


def covers_params(default_source: str = SAMPLE_COVERS) -> dict[str, Param]:
    return {
        "embed_covers": Param(
            True,
            type="boolean",
            title="Embed covers",
            description="Embed the books' cover images with CLIP (task embed_images); off: the task is "
            "skipped. Also skipped when no CLIP model is configured.",
        ),
        "covers_source": Param(
            default_source,
            type="string",
            minLength=1,
            maxLength=4096,
            title="Cover images",
            description="A folder of images named by cover id (<id>.jpg; relative: in the repository; "
            "or an s3a:// / hdfs:// URI), or a URL template with {cover_id}, e.g. " + OPEN_LIBRARY_COVERS,
        ),
        "clip_model_path": Param(
            None,
            type=["null", "string"],
            minLength=1,
            maxLength=4096,
            title="CLIP model directory",
            description=f"CLIP model saved with save_pretrained (empty: env {CLIP_MODEL_ENV}; none: covers "
            "are skipped).",
        ),
    }


def is_url_template(value: str) -> bool:
    return urlparse(value).scheme in ("http", "https")


def plan_covers(params: dict[str, Any], environ: dict[str, str] | None = None) -> dict[str, Any]:
    """What the ``embed_images`` task needs, from the run's params (see module doc)."""
    environ = os.environ if environ is None else environ
    plan: dict[str, Any] = {
        "enabled": False,
        "reason": None,
        "model_path": None,
        "images_dir": None,
        "url_template": None,
    }
    if not params.get("embed_covers", True):
        plan["reason"] = "param 'embed_covers' is false"
        return plan
    model = params.get("clip_model_path") or environ.get(CLIP_MODEL_ENV)
    if not model:
        plan["reason"] = f"no CLIP model: set param 'clip_model_path' (or env {CLIP_MODEL_ENV})"
        return plan
    errors: list[str] = []
    plan["model_path"] = resolve_model_dir(
        model, name="clip_model_path", errors=errors, required_files=("config.json", "preprocessor_config.json")
    )
    source = str(params.get("covers_source") or OPEN_LIBRARY_COVERS).strip()
    if is_url_template(source):
        if "{cover_id}" not in source:
            errors.append(f"param 'covers_source': the URL template {source} has no {{cover_id}}")
        plan["url_template"] = source
    elif urlparse(source).scheme not in ("", "file"):
        plan["images_dir"] = source  # a store the cluster reads (s3a://, hdfs://)
    else:
        parsed = urlparse(source)
        path = Path(parsed.path if parsed.scheme else source).expanduser()
        path = path if path.is_absolute() else repo_root() / path
        if not path.is_dir():
            errors.append(f"param 'covers_source': {source} is neither a folder ({path}) nor a URL template")
        plan["images_dir"] = str(path)
    if errors:
        raise ParamCheckError("invalid run parameters: " + "; ".join(errors))
    plan["enabled"] = True
    return plan


@task(task_id=TASK_ID, multiple_outputs=True)
def check_covers() -> dict[str, Any]:
    """Plan cover embedding from the run's params; fails naming a bad param."""
    plan = plan_covers(get_current_context()["params"])
    print(f"Covers: {plan}")
    return plan


def covers_enabled(context: Any) -> None:
    """``pre_execute`` hook: skip the task when :func:`check_covers` turned covers off."""
    ti = context["ti"]
    if not ti.xcom_pull(task_ids=TASK_ID, key="enabled"):
        reason = ti.xcom_pull(task_ids=TASK_ID, key="reason") or "covers are off"
        raise AirflowSkipException(f"Cover embedding skipped: {reason}")


def share_cores_with_covers(context: Any) -> None:
    """``pre_execute`` hook of the two embedding jobs, which run side by side on the local
    cluster: with covers on, each takes half of its cores (``spark.cores.max``), so neither waits
    for the other's executors to end; their fixed costs (JVM, imports, model load) overlap. Left
    whole when covers are off, or when half would not hold one executor (standalone then runs
    the two applications one after the other). A task without ``total_executor_cores`` (a cloud
    lane's, whose jobs run in turn) is left alone."""
    task, ti = context["task"], context["ti"]
    total = getattr(task, "total_executor_cores", None)
    if not total or not ti.xcom_pull(task_ids=TASK_ID, key="enabled"):
        return
    half = int(total) // 2
    if half >= int(getattr(task, "executor_cores", None) or 1):
        task.total_executor_cores = half
        print(f"Covers are on: {task.task_id} takes {half} of the cluster's {total} cores (spark.cores.max)")


def embed_covers_beside_text(context: Any) -> None:
    """``pre_execute`` of ``embed_images``: skipped when covers are off, else half the cores."""
    covers_enabled(context)
    share_cores_with_covers(context)
