#!/usr/bin/env bash
# Sets up everything scripts/demo.sh and scripts/test.sh (and `. scripts/env.sh && airflow ...`)
# need, idempotently:
#   1. scripts/preflight.py: Python 3.11, Java 17+, free memory (SPINDLE_SKIP_PREFLIGHT=1 skips);
#   2. .venv inside the repo, from $SPINDLE_PYTHON, else python3.11 on PATH, else python3;
#   3. the pinned requirements: torch first (from $SPINDLE_TORCH_INDEX_URL when set, e.g.
#      https://download.pytorch.org/whl/cpu for the CPU build), then the requirements file given
#      (default requirements.txt) with constraints.txt. One stamp per requirements file records
#      what was installed, so alternating demo.sh (requirements.txt) and test.sh
#      (requirements-dev.txt, which includes requirements.txt) does not re-install; a changed
#      requirements or constraints file does;
#   4. the Airflow home with its local secrets, and its metadata DB migrated (`airflow db
#      migrate`, output in $SPINDLE_HOME/logs/db-migrate.log), skipped when the DB exists and was
#      migrated with the installed Airflow version.
set -euo pipefail
. "$(dirname "$0")/env.sh"
cd "$SPINDLE_REPO"

requirements="${1:-requirements.txt}"
requirements="${requirements#./}"
torch_spec="torch==2.13.0"
stamps="$SPINDLE_VENV/.spindle-stamps"

if [ -x "$SPINDLE_VENV/bin/python" ]; then
  python="$SPINDLE_VENV/bin/python"
else
  python="${SPINDLE_PYTHON:-$(command -v python3.11 || command -v python3 || true)}"
  if [ -z "$python" ]; then
    echo "bootstrap: no python3 on PATH; Spindle needs Python 3.11 (or set SPINDLE_PYTHON)" >&2
    exit 1
  fi
fi
if [ "${SPINDLE_SKIP_PREFLIGHT:-0}" != 1 ]; then
  "$python" scripts/preflight.py
fi

sha256() {
  if command -v sha256sum > /dev/null; then sha256sum | cut -d' ' -f1; else shasum -a 256 | cut -d' ' -f1; fi
}

# A requirements file and, recursively, the files it includes with `-r` (paths from the repo root).
closure() {
  local file="${1#./}" include
  echo "$file"
  for include in $(sed -E -n 's/^[[:space:]]*(-r|--requirement)[[:space:]=]+([^[:space:]#]+).*/\2/p' "$file"); do
    closure "$(dirname "$file")/$include"
  done
}

# What installing a requirements file depends on: its closure, the constraints, the torch pin.
digest() {
  local file
  { echo "$torch_spec"; cat constraints.txt; for file in $(closure "$1"); do echo "== $file"; cat "$file"; done; } | sha256
}

stamp_of() { echo "$stamps/$(echo "$1" | tr '/' '_').sha256"; }

if [ ! -x "$SPINDLE_VENV/bin/python" ]; then
  echo ">> creating virtualenv $SPINDLE_VENV with $python"
  "$python" -m venv "$SPINDLE_VENV"
fi
if [ "$(cat "$(stamp_of "$requirements")" 2>/dev/null)" != "$(digest "$requirements")" ]; then
  pip=("$SPINDLE_VENV/bin/pip" install --quiet)
  if [ -n "${SPINDLE_TORCH_INDEX_URL:-}" ]; then
    echo ">> installing $torch_spec first (from $SPINDLE_TORCH_INDEX_URL), then $requirements"
    torch_index=(--index-url "$SPINDLE_TORCH_INDEX_URL")
  else
    echo ">> installing $torch_spec first, then $requirements"
    torch_index=()
  fi
  "${pip[@]}" --upgrade pip
  "${pip[@]}" ${torch_index[@]+"${torch_index[@]}"} "$torch_spec"
  "${pip[@]}" -r "$requirements" -c constraints.txt
  # Installing a file installed everything it includes, too (requirements-dev.txt -> requirements.txt).
  mkdir -p "$stamps"
  for file in $(closure "$requirements"); do
    digest "$file" > "$(stamp_of "$file")"
  done
  rm -f "$SPINDLE_VENV/.spindle-installed"  # the single stamp of earlier versions
fi

mkdir -p "$AIRFLOW_HOME" "$SPINDLE_SECRETS_DIR" "$SPINDLE_HOME/logs"
"$SPINDLE_VENV/bin/python" scripts/init_local_secrets.py "$SPINDLE_SECRETS_DIR"

# The metadata DB, so that `airflow dags test ...` works right after either script.
airflow_version="$("$SPINDLE_VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("apache-airflow-core"))')"
migrated="$AIRFLOW_HOME/.spindle-db-migrated"
wanted="$airflow_version $AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"
if [ ! -s "$AIRFLOW_HOME/airflow.db" ] || [ "$(cat "$migrated" 2>/dev/null)" != "$wanted" ]; then
  echo ">> airflow db migrate ($AIRFLOW_HOME/airflow.db, Airflow $airflow_version)"
  if ! "$SPINDLE_VENV/bin/airflow" db migrate > "$SPINDLE_HOME/logs/db-migrate.log" 2>&1; then
    tail -n 20 "$SPINDLE_HOME/logs/db-migrate.log" >&2
    echo "bootstrap: airflow db migrate failed; full output in $SPINDLE_HOME/logs/db-migrate.log" >&2
    exit 1
  fi
  echo "$wanted" > "$migrated"
fi
