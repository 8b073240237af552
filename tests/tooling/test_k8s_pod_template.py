"""The KubernetesExecutor setup, statically: include/k8s/pod_template.yaml is a Pod whose task
container is `base` (where Airflow puts the command and merges pod_override) running the
project's image, and plugins/batchvec/tasks/pod_resources.py sizes the heavy task kinds above the
bench's measured RSS."""

from __future__ import annotations

import re

import pytest
import yaml

from batchvec.tasks import pod_resources
from tests.helpers.compose_helpers import AIRFLOW_VERSION, ROOT, interpolate

TEMPLATE = ROOT / "include" / "k8s" / "pod_template.yaml"
# README, Benchmarks P4: peak RSS of the task process at 10M records, MB.
MEASURED_RSS_MB = {"stage_group": 108, "index_shard": 235}


def mebibytes(quantity: str) -> float:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(Mi|Gi)", quantity)
    assert m, f"memory quantity {quantity!r}: use Mi or Gi"
    return float(m.group(1)) * (1024 if m.group(2) == "Gi" else 1)


def test_the_pod_template_runs_the_project_image_in_a_container_named_base(services) -> None:
    pod = yaml.safe_load(TEMPLATE.read_text())
    assert (pod["apiVersion"], pod["kind"]) == ("v1", "Pod")
    spec = pod["spec"]
    assert spec["restartPolicy"] == "Never"  # a failed try is Airflow's to retry
    [base] = [c for c in spec["containers"] if c["name"] == "base"]
    # The image docker-compose builds from include/airflow.Dockerfile.
    assert base["image"] == interpolate(services["airflow-scheduler"]["image"])
    assert base["image"].endswith(f":{AIRFLOW_VERSION}")
    env = {e["name"]: e.get("value") for e in base.get("env", [])}
    assert env["AIRFLOW__CORE__DAGS_FOLDER"] == "/opt/airflow/dags"
    assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"].endswith("/execution/")
    assert not [k for k in env if re.search(r"PASSWORD|SECRET|KEY", k)], "no secrets in the pod"
    defaults = base["resources"]
    assert mebibytes(defaults["requests"]["memory"]) <= mebibytes(defaults["limits"]["memory"])


def test_the_image_carries_dags_plugins_and_include() -> None:
    text = (ROOT / "include" / "airflow.Dockerfile").read_text()
    for folder in ("dags", "plugins", "include"):
        assert re.search(rf"^COPY .*\b{folder}/ /opt/airflow/{folder}/$", text, re.M), folder


@pytest.mark.parametrize("kind", sorted(pod_resources.RESOURCES))
def test_resources_per_task_kind(kind: str) -> None:
    res = pod_resources.RESOURCES[kind]
    request, limit = mebibytes(res["requests"]["memory"]), mebibytes(res["limits"]["memory"])
    assert request <= limit
    # The supervisor shares the pod: twice the measured task RSS still fits under the request.
    assert request >= 2 * MEASURED_RSS_MB.get(kind, 150), kind
    assert "cpu" not in res["limits"], "a CPU limit only throttles the JSON loop"
    assert pod_resources.pod_override_spec(kind)["spec"]["containers"] == [
        {"name": "base", "resources": res}]


def test_executor_config_is_empty_off_kubernetes(monkeypatch) -> None:
    monkeypatch.setenv("AIRFLOW__CORE__EXECUTOR", "CeleryExecutor")
    assert pod_resources.executor_config("index_shard") == {}
    monkeypatch.setenv("AIRFLOW__CORE__EXECUTOR", "KubernetesExecutor")
    assert pod_resources.executor_config("plan") == {}  # the template's defaults


def test_executor_config_under_kubernetes(monkeypatch) -> None:
    monkeypatch.setenv("AIRFLOW__CORE__EXECUTOR", "KubernetesExecutor")
    override = pod_resources.executor_config("index_shard")["pod_override"]
    assert override.spec.containers[0].name == "base"
    assert override.spec.containers[0].resources.limits == {"memory": "1Gi"}


def test_the_dags_heavy_tasks_ask_for_their_resources_under_kubernetes(monkeypatch) -> None:
    from tests.helpers.dag_helpers import load_dag

    monkeypatch.setenv("AIRFLOW__CORE__EXECUTOR", "KubernetesExecutor")
    dag = load_dag()
    for task_id in ("stage_group", "stage_shard", "index_shard", "batch_predict"):
        [base] = dag.get_task(task_id).executor_config["pod_override"].spec.containers
        assert base.name == "base"
        assert base.resources.requests == pod_resources.RESOURCES[task_id]["requests"], task_id
    assert not dag.get_task("plan").executor_config  # the template's defaults
