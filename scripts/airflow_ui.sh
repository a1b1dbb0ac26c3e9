#!/usr/bin/env bash
# Airflow with its UI on http://localhost:8080 for this checkout: api-server, scheduler,
# dag-processor and triggerer (`airflow standalone`), the repo's dags/ and plugins/, the same
# repo-local home, secrets backend and local Spark clusters as scripts/demo.sh; next to it Spark's
# History Server on http://localhost:18080 over the event logs the local runs keep under the
# warehouse (the job tasks' "Spark History" link, which answers after the cluster is gone).
# Log in as "admin"; the password is printed at start-up and kept in
# .airflow/simple_auth_manager_passwords.json.generated. Ctrl-C stops everything.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh requirements.txt
. scripts/env.sh
export AIRFLOW__CORE__EXECUTOR=LocalExecutor
export AIRFLOW__API__PORT="${SPINDLE_UI_PORT:-8080}"
history_port="${SPINDLE_HISTORY_PORT:-18080}"
export SPINDLE_HISTORY_URL="${SPINDLE_HISTORY_URL:-http://localhost:$history_port}"
airflow db migrate > "$AIRFLOW_HOME/db-migrate.log" 2>&1
python -m spindle.history serve --port "$history_port" > "$AIRFLOW_HOME/spark-history-server.log" 2>&1 &
history_pid=$!
trap 'kill "$history_pid" 2>/dev/null || true' EXIT
echo "Spark History Server: $SPINDLE_HISTORY_URL (log: $AIRFLOW_HOME/spark-history-server.log)"
airflow standalone
