#!/usr/bin/env bash
# Airflow with its UI on http://localhost:8080 for this checkout: api-server, scheduler,
# dag-processor and triggerer (`airflow standalone`), the repo's dags/ and plugins/, the same
# repo-local home, secrets backend and local Spark clusters as scripts/demo.sh.
# Log in as "admin"; the password is printed at start-up and kept in
# .airflow/simple_auth_manager_passwords.json.generated. Ctrl-C stops everything.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh requirements.txt
. scripts/env.sh
export AIRFLOW__CORE__EXECUTOR=LocalExecutor
export AIRFLOW__API__PORT="${SPINDLE_UI_PORT:-8080}"
airflow db migrate > "$AIRFLOW_HOME/db-migrate.log" 2>&1
exec airflow standalone
