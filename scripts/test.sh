#!/usr/bin/env bash
# The test command: sets up .venv (pinned, torch first) and runs the whole suite.
# Extra arguments go to pytest, e.g.  scripts/test.sh tests/spark_apps -k embed
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh requirements-dev.txt
. scripts/env.sh
exec python -m pytest "${@:-tests}"
