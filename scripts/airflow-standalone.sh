#!/usr/bin/env bash
# `make airflow`: airflow standalone (UI on http://localhost:8080) with the devstack's
# connections preset from .devstack/endpoints.json.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"
export AIRFLOW_HOME=${AIRFLOW_HOME:-$PWD/airflow-home}
export AIRFLOW__CORE__DAGS_FOLDER=$PWD/dags
export AIRFLOW__CORE__PLUGINS_FOLDER=$PWD/plugins
export AIRFLOW__CORE__LOAD_EXAMPLES=False
eval "$(.venv/bin/python scripts/devstack_connections.py --export)"
exec .venv/bin/airflow standalone
