#!/usr/bin/env bash
# `make airflow`: airflow standalone (UI on http://localhost:8080) with the devstack's
# connections and BATCHVEC_* presets from .devstack/endpoints.json, and what a default run
# reads (the sample documents under today's and yesterday's input partitions, the SageMaker
# model) in place, so unpausing the DAG or triggering it with the form's defaults succeeds.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"
export AIRFLOW_HOME=${AIRFLOW_HOME:-$PWD/airflow-home}
export AIRFLOW__CORE__DAGS_FOLDER=$PWD/dags
export AIRFLOW__CORE__PLUGINS_FOLDER=$PWD/plugins
export AIRFLOW__CORE__LOAD_EXAMPLES=False
export BATCHVEC_POLL_INTERVAL=${BATCHVEC_POLL_INTERVAL:-5}
eval "$(.venv/bin/python scripts/devstack_connections.py --export)"
.venv/bin/python -m devstack seed
cat <<'MSG'
make airflow: open http://localhost:8080 (user admin; the password is printed below by
airflow standalone, and kept in $AIRFLOW_HOME/simple_auth_manager_passwords.json.generated).
  - DAGs -> batch_embeddings -> unpause: the latest scheduled run embeds today's sample.
  - Trigger -> keep the form's defaults -> Trigger: a manual run of the same partition.
MSG
exec .venv/bin/airflow standalone
