"""Resources per task kind under the KubernetesExecutor (one pod per try, from
include/k8s/pod_template.yaml), as `executor_config` for the DAG's tasks.

Sized from the bench (README, Benchmarks P4: peak RSS of a task process, Airflow's and
boto3's imports included): staging 103-108 MB and indexing 218-235 MB from 100k to 10M
records, flat; the pod also holds the task's supervisor. `stage_group`, `stage_shard` and
`index_shard` are CPU-bound in one Python thread (JSON parse/dump at ~100 MB/s), so one core each; index_shard
also waits on the network (bulk requests over 4 lanes). `batch_predict` defers: its pod exits
while the triggerer waits on the job and a new one resumes for a second, so it asks for
little. Other tasks take the template's defaults. Under the Local or Celery executor the
config is empty (Celery spreads tasks by worker concurrency, not per-task resources).
"""

from __future__ import annotations

from typing import Any

# requests / limits of the pod's `base` container. No CPU limit: throttling a CPU-bound
# JSON loop only makes it slower; memory limits bound a runaway task.
RESOURCES: dict[str, dict[str, dict[str, str]]] = {
    "stage_group": {"requests": {"cpu": "1", "memory": "512Mi"}, "limits": {"memory": "1Gi"}},
    # Pass two holds its shard's index state (24 bytes a document) besides the part buffer.
    "stage_shard": {"requests": {"cpu": "1", "memory": "768Mi"}, "limits": {"memory": "2Gi"}},
    "index_shard": {"requests": {"cpu": "1", "memory": "640Mi"}, "limits": {"memory": "1Gi"}},
    "batch_predict": {"requests": {"cpu": "100m", "memory": "384Mi"},
                      "limits": {"memory": "512Mi"}},
}


def pod_override_spec(kind: str) -> dict[str, Any]:
    """The override as a plain Pod manifest (merged into the template's `base` container)."""
    return {"apiVersion": "v1", "kind": "Pod",
            "spec": {"containers": [{"name": "base", "resources": RESOURCES[kind]}]}}


def _kubernetes_executor() -> bool:
    from airflow.configuration import conf

    return "KubernetesExecutor" in conf.get("core", "executor", fallback="")


def executor_config(kind: str) -> dict[str, Any]:
    """`executor_config=executor_config("index_shard")` on a task: its pod_override under the
    KubernetesExecutor (needs the cncf.kubernetes provider's `kubernetes` client), else {}."""
    if kind not in RESOURCES or not _kubernetes_executor():
        return {}
    from kubernetes.client import models as k8s

    return {"pod_override": k8s.V1Pod(spec=k8s.V1PodSpec(containers=[k8s.V1Container(
        name="base", resources=k8s.V1ResourceRequirements(**RESOURCES[kind]))]))}
