#!/usr/bin/env bash
# Creates .venv inside the repo and installs the pinned requirements (torch first), then the
# Airflow home with its local secrets. Idempotent: re-installs only when a requirements file changed.
set -euo pipefail
. "$(dirname "$0")/env.sh"
cd "$SPINDLE_REPO"

requirements="${1:-requirements.txt}"
stamp="$SPINDLE_VENV/.spindle-installed"
digest="$(cat requirements.txt requirements-dev.txt constraints.txt "$requirements" | sha256sum | cut -d' ' -f1)"

if [ ! -x "$SPINDLE_VENV/bin/python" ]; then
  echo ">> creating virtualenv $SPINDLE_VENV"
  python3 -m venv "$SPINDLE_VENV"
fi
if [ "$(cat "$stamp" 2>/dev/null)" != "$digest" ]; then
  echo ">> installing torch==2.13.0 first (local CPU build), then $requirements"
  "$SPINDLE_VENV/bin/pip" install --quiet --upgrade pip
  "$SPINDLE_VENV/bin/pip" install --quiet torch==2.13.0
  "$SPINDLE_VENV/bin/pip" install --quiet -r "$requirements" -c constraints.txt
  echo "$digest" > "$stamp"
fi

mkdir -p "$AIRFLOW_HOME" "$SPINDLE_SECRETS_DIR" "$SPINDLE_HOME"
"$SPINDLE_VENV/bin/python" scripts/init_local_secrets.py "$SPINDLE_SECRETS_DIR"
