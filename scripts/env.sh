# Shared environment for Spindle's scripts. Source it:  . scripts/env.sh
# Everything lives inside the repository: the virtualenv, the Airflow home, run outputs.
# Works when sourced from bash or zsh (macOS's default shell) from any folder, and from a
# plain POSIX sh in the repository root.
if [ -n "${BASH_VERSION:-}" ]; then
  eval '_spindle_env="${BASH_SOURCE[0]}"'
elif [ -n "${ZSH_VERSION:-}" ]; then
  eval '_spindle_env="${(%):-%x}"'
else
  _spindle_env="scripts/env.sh"
fi
SPINDLE_REPO="$(cd "$(dirname "$_spindle_env")/.." && pwd)"
unset _spindle_env
export SPINDLE_REPO
export SPINDLE_VENV="$SPINDLE_REPO/.venv"
export SPINDLE_HOME="${SPINDLE_HOME:-$SPINDLE_REPO/.spindle}"   # run outputs, cluster logs

export AIRFLOW_HOME="${AIRFLOW_HOME:-$SPINDLE_REPO/.airflow}"
export AIRFLOW__CORE__DAGS_FOLDER="$SPINDLE_REPO/dags"
export AIRFLOW__CORE__PLUGINS_FOLDER="$SPINDLE_REPO/plugins"
export AIRFLOW__CORE__LOAD_EXAMPLES=False
export AIRFLOW__CORE__UNIT_TEST_MODE=False
export AIRFLOW__DATABASE__SQL_ALCHEMY_CONN="sqlite:///$AIRFLOW_HOME/airflow.db"
# A local secrets backend: Airflow's file backend on a git-ignored file that
# scripts/bootstrap.sh creates. Jobs get connection ids, never secret values.
export SPINDLE_SECRETS_DIR="$AIRFLOW_HOME/secrets"
export AIRFLOW__SECRETS__BACKEND="airflow.secrets.local_filesystem.LocalFilesystemBackend"
export AIRFLOW__SECRETS__BACKEND_KWARGS="{\"connections_file_path\": \"$SPINDLE_SECRETS_DIR/connections.json\", \"variables_file_path\": \"$SPINDLE_SECRETS_DIR/variables.json\"}"
export AIRFLOW__WORKERS__SECRETS_BACKEND="$AIRFLOW__SECRETS__BACKEND"
export AIRFLOW__WORKERS__SECRETS_BACKEND_KWARGS="$AIRFLOW__SECRETS__BACKEND_KWARGS"

# No model hub here, and none wanted on clusters: models come from local dirs or archives.
export HF_HUB_OFFLINE=1
export TRANSFORMERS_OFFLINE=1
export TOKENIZERS_PARALLELISM=false
export PYSPARK_PYTHON="$SPINDLE_VENV/bin/python"
export PYSPARK_DRIVER_PYTHON="$SPINDLE_VENV/bin/python"
# plugins/ too, as Airflow has it: commands such as `python -m spindle.vectors.search` import spindle.
export PYTHONPATH="$SPINDLE_REPO:$SPINDLE_REPO/plugins${PYTHONPATH:+:$PYTHONPATH}"
export PATH="$SPINDLE_VENV/bin:$PATH"
