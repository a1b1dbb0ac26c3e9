#!/usr/bin/env bash
# The main job: set up .venv and a repo-local Airflow home (scripts/bootstrap.sh, which also
# migrates the metadata DB), then run the nightly book-embedding DAG and the LLM-transform DAG
# end to end on local ephemeral Spark clusters, on the bundled sample data, load the bundled
# covers, print a summary and search the vectors. Airflow's and Spark's logs go to
# $SPINDLE_HOME/logs/<dag>.log; the terminal shows each task's start and end with its figures.
# Exit status: non-zero when a run or a search failed. Extra arguments are ignored.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh requirements.txt
. scripts/env.sh
# A failed demo task ends the demo at once (production DAGs retry twice with backoff).
export SPINDLE_TASK_RETRIES="${SPINDLE_TASK_RETRIES:-0}"
logs="$SPINDLE_HOME/logs"
mkdir -p "$logs"
echo ">> logs of Airflow, Spark and the models: $logs/"

# No flan-t5 weights exist offline: the LLM DAG runs a tiny random T5 (real tokenizer), built
# once. Its labels are noise; the pipeline (batching, generate, write) is the real one.
t5_dir="$SPINDLE_HOME/models/tiny-t5"
if [ ! -f "$t5_dir/config.json" ]; then
  echo ">> building a tiny random T5 in $t5_dir"
  python -m devtools.tiny_models t5 "$t5_dir" >> "$logs/tiny-models.log" 2>&1
fi
# The same for CLIP (real CLIP tokenizer, random weights): the covers' embed_images step.
clip_dir="$SPINDLE_HOME/models/tiny-clip"
if [ ! -f "$clip_dir/preprocessor_config.json" ]; then
  echo ">> building a tiny random CLIP in $clip_dir"
  python -m devtools.tiny_models clip "$clip_dir" >> "$logs/tiny-models.log" 2>&1
fi

status=0
# The sample is 1000 editions of a mid-2020 dump. The DAG's defaults (English, > 100 pages, a
# fiction subject, published in the last 40 years) keep 12 of them; the demo drops the subject
# and age filters, so every English edition of more than 100 pages is embedded (224).
echo
echo ">> airflow dags test spindle_nightly_books: English editions of > 100 pages, any subject, any year"
python scripts/summarize_runs.py run spindle_nightly_books --log "$logs/spindle_nightly_books.log" \
  --conf "{\"subject\": \"*\", \"max_age_years\": null, \"clip_model_path\": \"$clip_dir\"}" || status=1
echo
echo ">> airflow dags test spindle_llm_transform: 200 STS Benchmark sentences, tiny random T5"
python scripts/summarize_runs.py run spindle_llm_transform --log "$logs/spindle_llm_transform.log" \
  --conf "{\"model_path\": \"$t5_dir\", \"limit\": 200}" || status=1

python scripts/summarize_runs.py summary spindle_nightly_books spindle_llm_transform || status=1

# Covers: the sample editions' cover ids name Open Library images, and there is no internet
# here; the bundled covers are 6 other (public-domain) books. So the demo embeds those 6 with
# the same job, in its folder mode, and loads them behind books_covers with their own titles.
echo
echo ">> covers: embed_images on data/samples/covers/covers.csv (6 bundled covers), load behind books_covers"
covers_out="$SPINDLE_HOME/demo/cover_embeddings.parquet"
if python -m spark_apps.jobs.embed_images --input data/samples/covers/covers.csv --output "$covers_out" \
    --model "$clip_dir" --image-column image --images-dir data/samples/covers > "$logs/demo-covers.log" 2>&1; then
  python - "$logs/demo-covers.log" <<'EOF'
import json, sys
for line in open(sys.argv[1], errors="replace"):
    if "SPINDLE_METRICS " in line:  # the job's metrics line (after Spark's progress bar)
        m = json.loads(line.split("SPINDLE_METRICS ", 1)[1])
        reasons = f" {m['failure_reasons']}" if m["failure_reasons"] else ""
        print(f"   images embedded {m['images_embedded']}, failed {m['images_failed']}{reasons}"
              f" in {m['seconds']['total']:.0f} s")
EOF
  python -m spindle.vectors.loading "$covers_out" --alias books_covers --books data/samples/covers/covers.csv \
    --model-dir "$clip_dir" --model-kind clip --dataset bundled-covers | sed 's/^/   /' || status=1
else
  echo "   embed_images failed; the end of $logs/demo-covers.log:"
  tail -n 20 "$logs/demo-covers.log" | sed 's/^/   | /'
  status=1
fi

# The end of the story: a person searches the books the nightly run just loaded into Milvus.
query="stories of ships and the sea"
echo
echo ">> python -m spindle.vectors.search \"$query\" --k 8"
python -m spindle.vectors.search "$query" --k 8 || status=1
echo
echo ">> python -m spindle.vectors.search \"a whale on a dark cover\" --mode covers --k 3   (tiny random CLIP: noise ranks)"
python -m spindle.vectors.search "a whale on a dark cover" --mode covers --k 3 || status=1
exit $status
