"""Jobs per group of shards under the real scheduler and triggerer (tools/chaos/
airflow_stack.py), where tasks run side by side as in production (dag.test runs one at a
time): the shards of a done job index while another group's job is still running (no barrier
on the slowest job), and with max_parallel_jobs 1 the second group's job is submitted only
after the first one's ended. The second job is held by a fault switch until the first
group's shards are indexed, so nothing here races the clock.
"""

from __future__ import annotations

import json
import sys
import time

import pytest

from chaos.airflow_stack import DAG_ID, AirflowStack
from devstack import faults
from tests.helpers.airflow_stack_helpers import revive
from tests.helpers.dag_helpers import REPO, docs, os_get, reports, write_jsonl

pytestmark = [pytest.mark.devstack, pytest.mark.airflow]

DOCS = 40
DAY = "2026-06-24"
INDEX = "groups-live"


def _states(stack: AirflowStack, run_id: str) -> dict[tuple[str, int], str]:
    return {(t["task_id"], t["map_index"]): t["state"] for t in stack.task_instances(run_id)}


def _until(stack: AirflowStack, run_id: str, done, what: str, timeout: float = 600):
    """Poll until `done(states)`; the timeout only bounds a hung run."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        revive(stack)
        states = _states(stack, run_id)
        if done(states):
            return states
        if stack.dag_run(run_id)["state"] in ("success", "failed"):
            pytest.fail(f"the run ended before {what}: {states}")
        time.sleep(1)
    pytest.fail(f"no {what} in {timeout:.0f}s: {_states(stack, run_id)}")


def test_a_done_groups_shards_index_while_another_groups_job_runs(airflow_env, tmp_path):
    devstack = airflow_env
    sys.path.insert(0, str(REPO / "scripts"))
    from batchvec.plan.naming import run_key
    from devstack_connections import airflow_env as devstack_airflow_env

    source = write_jsonl(tmp_path / "in.jsonl", docs("live", DOCS))
    run_id = f"groups-{DAY}"
    key = run_key(DAG_ID, run_id)
    faults.set_faults(devstack.state_dir, hold_job={"count": 1, "name_regex": rf"{key}-j1"})
    stack = AirflowStack(tmp_path / "airflow", devstack_airflow_env(devstack.endpoints),
                         retries=1)
    s3 = devstack.s3.client()
    try:
        stack.start()
        stack.trigger(run_id, {"input_uri": str(source), "index_name": INDEX, "shards": 4,
                               "max_records_per_job": DOCS // 2, "max_parallel_jobs": 1},
                      logical_date=f"{DAY}T00:00:00Z")
        _until(stack, run_id, lambda s: s.get(("batch_predict", 0)) == "success",
               "first job done")
        manifest = json.loads(s3.get_object(Bucket=devstack.s3.bucket,
                                            Key=f"runs/{key}/manifest.json")["Body"].read())
        assert [j["run_key"] for j in manifest["jobs"]] == [f"{key}-j0", f"{key}-j1"]
        first = [i for i, s in enumerate(manifest["shards"]) if s["job"] == 0]
        second = [i for i, s in enumerate(manifest["shards"]) if s["job"] == 1]
        assert first and second
        states = _until(stack, run_id, lambda s: all(
            s.get(("index_shard", i)) == "success" for i in first), "first group indexed")
        # ... while the second group's job is still held, its shards waiting on it.
        sm = devstack.boto3_client("sagemaker")
        assert sm.describe_transform_job(
            TransformJobName=f"{key}-j1")["TransformJobStatus"] == "InProgress"
        assert states[("batch_predict", 1)] == "deferred"
        assert all(states.get(("index_shard", i)) not in ("success", "running") for i in second)
        faults.unset(devstack.state_dir, "hold_job")
        _until(stack, run_id, lambda s: s.get(("cleanup", -1)) == "success", "the run's end")
        assert stack.dag_run(run_id)["state"] == "success"

        j0, j1 = (sm.describe_transform_job(TransformJobName=f"{key}-j{g}") for g in (0, 1))
        assert j1["CreationTime"] >= j0["TransformEndTime"]  # max_parallel_jobs 1
        (rep,) = reports(devstack, INDEX)
        assert rep["balanced"] and rep["totals"]["created"] == DOCS
        assert os_get(devstack, f"/{INDEX}/_count")["count"] == DOCS
    finally:
        faults.unset(devstack.state_dir, "hold_job")
        stack.stop()
