#!/usr/bin/env bash
# The test command: sets up .venv (pinned, torch first) and runs the whole suite.
# Extra arguments go to pytest, e.g.  scripts/test.sh tests/spark_apps -k embed
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/system_packages.sh
scripts/bootstrap.sh requirements-dev.txt
. scripts/env.sh
# The browser and compose tests must run here, not skip (SPINDLE_REQUIRE_BROWSER=0 lets them skip).
export SPINDLE_REQUIRE_BROWSER="${SPINDLE_REQUIRE_BROWSER:-1}"
exec python -m pytest "${@:-tests}"
