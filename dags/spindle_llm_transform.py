"""
### LLM transform of a sentence table on an ephemeral Spark cluster

`check_params` → `prepare_sentences` → `create_cluster` → `llm_transform` → `delete_cluster` (teardown).

- **prepare_sentences** (no cluster needed) turns an STS Benchmark file into a JSONL sentence
  table (`id`, `text`) in the run's warehouse folder.
- **llm_transform** applies a seq2seq model (flan-t5 family, `AutoModelForSeq2SeqLM.generate`)
  to every sentence with a prompt template, batched per Arrow batch, model loaded once per worker.
- **publish_output** emits the asset `spindle_llm_transformed` (version and location in the event
  extra) once the chosen lane's job wrote the table.
- **delete_cluster** is the teardown of `create_cluster`: it runs when the job fails and when the
  run is marked failed.

There is no model hub here: `model_path` must name a model directory saved with
`save_pretrained` (e.g. flan-t5-small; tests build a tiny random T5).
"""

from __future__ import annotations

import pendulum
from airflow.sdk import DAG, Param
from spindle.operators.local_spark import (
    LocalSparkCreateClusterOperator,
    LocalSparkDeleteClusterOperator,
)
from spindle.alerts import run_deadline
from spindle.assets import publish_llm_output
from spindle.backends.lanes import add_backend_lanes, backend_param, check_backend
from spindle.operators.spark_app import SparkAppJobOperator
from spindle.pipelines import (
    batch_size_param,
    check_params,
    cluster_kwargs,
    input_param,
    job_kwargs,
    job_timeout_param,
    limit_param,
    max_error_rate_param,
    model_param,
    prepare_sentences,
    sizing_params,
    task_defaults,
)

with DAG(
    dag_id="spindle_llm_transform",
    description="Label sentences with a seq2seq model, on an ephemeral Spark cluster",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    tags=["spindle", "llm"],
    doc_md=__doc__,
    default_args=task_defaults(),  # retries with backoff, failure email (spindle.pipelines)
    deadline=run_deadline(),  # env SPINDLE_RUN_DEADLINE_MINUTES: an email when a run is late (spindle.alerts)
    params={
        "input_path": input_param(
            "data/samples/stsbenchmark/sts-dev.csv",
            "STS Benchmark file (tab-separated; the sentences of both columns become the table).",
        ),
        "limit": limit_param(200),
        "model_path": model_param("Seq2seq model directory saved with save_pretrained (required)."),
        "prompt_template": Param(
            "sentiment of the text: {text}",
            type="string",
            minLength=1,
            maxLength=2000,
            pattern=r"\{text\}",
            title="Prompt template",
            description="Prompt per row; {text} is the sentence.",
        ),
        "max_new_tokens": Param(
            8,
            type="integer",
            minimum=1,
            maximum=512,
            title="Max new tokens",
            description="Upper bound of generated tokens per row.",
        ),
        "output_column": Param(
            "label",
            type="string",
            pattern="^[A-Za-z_][A-Za-z0-9_]{0,63}$",
            title="Output column",
            description="Column that receives the generated text.",
        ),
        "engine": Param(
            "transformers",
            type="string",
            enum=["transformers", "ctranslate2"],
            title="Engine",
            description="transformers generate, or CTranslate2 int8 on a model converted with "
            "python -m spark_apps.common.ct2 convert (model_path then names the converted folder).",
        ),
        "batch_size": batch_size_param(16),
        "max_error_rate": max_error_rate_param(),
        **sizing_params(),
        "job_timeout_minutes": job_timeout_param(),
        "backend": backend_param(),
    },
) as dag:
    check = check_backend()
    plan = check_params(
        outputs={"sentences": "sentences.jsonl", "transformed": "transformed.parquet"},
        model_kind="seq2seq",
        settings=check["settings"],  # the chosen backend's warehouse connection is checked
    )
    sentences = prepare_sentences(
        input_path=plan["input_path"], output=plan["sentences"], settings=check["settings"]
    )  # written to the chosen backend's warehouse (local or object storage)
    create = LocalSparkCreateClusterOperator(task_id="create_cluster", **cluster_kwargs())
    transform = SparkAppJobOperator(
        task_id="llm_transform",
        job="llm_transform",
        cluster_id=create.output,
        job_args={
            "input": sentences,
            "output": plan["transformed"],
            "id_column": "id",
            "text_column": "text",
            "model": plan["model_path"],
            "prompt_template": "{{ params.prompt_template }}",
            "max_new_tokens": "{{ params.max_new_tokens }}",
            "output_column": "{{ params.output_column }}",
            "batch_size": "{{ params.batch_size }}",
            "engine": "{{ params.engine }}",
            "max_error_rate": "{{ params.max_error_rate }}",
        },
        **job_kwargs(),
    )
    delete = LocalSparkDeleteClusterOperator(task_id="delete_cluster", cluster_id=create.output)

    sentences >> create >> transform >> delete
    delete.as_teardown(setups=create)

    # The same create -> job -> delete lane on Yandex Data Proc, EMR and EMR Serverless,
    # picked per run by param/Variable 'backend' (spindle.backends.lanes).
    lanes = add_backend_lanes(
        check=check,
        plan=plan,
        after=sentences,
        create=create,
        jobs=[transform],
        model=plan["model_path"],
    )
    # The asset spindle_llm_transformed, after whichever lane ran (spindle.assets).
    publish = publish_llm_output(plan["transformed"], backend=check["backend"], settings=check["settings"])
    transform >> publish
    for lane in lanes.values():
        lane.children[f"{lane.group_id}.{transform.task_id}"] >> publish
