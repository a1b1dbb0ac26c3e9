#!/usr/bin/env bash
# The main job: set up .venv and a repo-local Airflow home, then run the nightly book-embedding
# DAG and the LLM-transform DAG end to end on local ephemeral Spark clusters, on the bundled
# sample data, and print a summary. Extra arguments are ignored.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh requirements.txt
. scripts/env.sh
mkdir -p "$SPINDLE_HOME/logs"

echo ">> airflow db migrate ($AIRFLOW_HOME/airflow.db)"
airflow db migrate > "$SPINDLE_HOME/logs/db-migrate.log" 2>&1

# No flan-t5 weights exist offline: the LLM DAG runs a tiny random T5 (real tokenizer), built
# once. Its labels are noise; the pipeline (batching, generate, write) is the real one.
t5_dir="$SPINDLE_HOME/models/tiny-t5"
[ -f "$t5_dir/config.json" ] || python -m devtools.tiny_models t5 "$t5_dir"
# The same for CLIP (real CLIP tokenizer, random weights): the nightly DAG's embed_images step.
clip_dir="$SPINDLE_HOME/models/tiny-clip"
[ -f "$clip_dir/preprocessor_config.json" ] || python -m devtools.tiny_models clip "$clip_dir"

status=0
echo ">> airflow dags test spindle_nightly_books"
airflow dags test spindle_nightly_books \
  -c "{\"max_age_years\": 40, \"clip_model_path\": \"$clip_dir\"}" 2>&1 | tee "$SPINDLE_HOME/logs/spindle_nightly_books.log" || status=1
echo ">> airflow dags test spindle_llm_transform"
airflow dags test spindle_llm_transform \
  -c "{\"model_path\": \"$t5_dir\", \"limit\": 200}" 2>&1 | tee "$SPINDLE_HOME/logs/spindle_llm_transform.log" || status=1

python scripts/summarize_runs.py spindle_nightly_books spindle_llm_transform || status=1

# The end of the story: a person searches the books the nightly run just loaded into Milvus.
query="a detective story in foggy London"
echo ">> python -m spindle.vectors.search \"$query\" --k 5"
python -m spindle.vectors.search "$query" --k 5 || status=1
exit $status
