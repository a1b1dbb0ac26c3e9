#!/usr/bin/env bash
# Entrypoint of the Spindle image: picks Airflow's secrets backend from two variables, then hands
# over to the official image's entrypoint (/entrypoint: DB wait, `airflow <command>`).
#
#   SPINDLE_SECRETS_BACKEND         local (default) | lockbox | secretsmanager | a class path
#   SPINDLE_SECRETS_BACKEND_KWARGS  JSON kwargs of that backend; default for local: the files
#                                   mounted read-only under /opt/spindle/secrets
#
# They set [secrets] backend(_kwargs) (API server, scheduler, DAG processor) and
# [workers] secrets_backend(_kwargs) (task processes) alike. AIRFLOW__... variables set explicitly
# win. For Secrets Manager the jobs' own reference, SPINDLE_SECRETS_SOURCE, is derived from
# connections_prefix (aws-sm://<prefix>) unless set; Lockbox jobs need it set
# (lockbox://<secret-id>): see docs/airflow-ui.md.
set -euo pipefail

SECRETS_DIR="${SPINDLE_SECRETS_DIR:-/opt/spindle/secrets}"
backend="${SPINDLE_SECRETS_BACKEND:-local}"
default_kwargs="{}"
case "$backend" in
  local)
    cls="airflow.secrets.local_filesystem.LocalFilesystemBackend"
    default_kwargs="{\"connections_file_path\": \"$SECRETS_DIR/connections.json\", \"variables_file_path\": \"$SECRETS_DIR/variables.json\"}"
    ;;
  lockbox)
    cls="airflow.providers.yandex.secrets.lockbox.LockboxSecretBackend"
    ;;
  secretsmanager | secrets-manager | aws)
    cls="airflow.providers.amazon.aws.secrets.secrets_manager.SecretsManagerBackend"
    ;;
  *.*)
    cls="$backend"
    ;;
  *)
    echo "spindle-entrypoint: unknown SPINDLE_SECRETS_BACKEND='$backend'" \
      "(use local, lockbox, secretsmanager or a backend class path)" >&2
    exit 64
    ;;
esac
kwargs="${SPINDLE_SECRETS_BACKEND_KWARGS:-$default_kwargs}"
if ! printf '%s' "$kwargs" | python3 -c 'import json, sys; assert isinstance(json.load(sys.stdin), dict)' 2>/dev/null; then
  echo "spindle-entrypoint: SPINDLE_SECRETS_BACKEND_KWARGS is not a JSON object: $kwargs" >&2
  exit 64
fi
if [ "$backend" = "lockbox" ] && ! printf '%s' "$kwargs" | grep -q '"folder_id"'; then
  echo "spindle-entrypoint: the lockbox backend needs SPINDLE_SECRETS_BACKEND_KWARGS with a folder_id" >&2
  exit 64
fi

export AIRFLOW__SECRETS__BACKEND="${AIRFLOW__SECRETS__BACKEND:-$cls}"
export AIRFLOW__SECRETS__BACKEND_KWARGS="${AIRFLOW__SECRETS__BACKEND_KWARGS:-$kwargs}"
export AIRFLOW__WORKERS__SECRETS_BACKEND="${AIRFLOW__WORKERS__SECRETS_BACKEND:-$AIRFLOW__SECRETS__BACKEND}"
export AIRFLOW__WORKERS__SECRETS_BACKEND_KWARGS="${AIRFLOW__WORKERS__SECRETS_BACKEND_KWARGS:-$AIRFLOW__SECRETS__BACKEND_KWARGS}"

if [ -z "${SPINDLE_SECRETS_SOURCE:-}" ] && [ "$AIRFLOW__SECRETS__BACKEND" = "airflow.providers.amazon.aws.secrets.secrets_manager.SecretsManagerBackend" ]; then
  prefix="$(printf '%s' "$AIRFLOW__SECRETS__BACKEND_KWARGS" \
    | python3 -c 'import json, sys; print(json.load(sys.stdin).get("connections_prefix", "airflow/connections"))')"
  export SPINDLE_SECRETS_SOURCE="aws-sm://$prefix"
fi

exec "${SPINDLE_NEXT_ENTRYPOINT:-/entrypoint}" "$@"
