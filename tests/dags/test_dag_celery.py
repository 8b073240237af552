"""The DAG under the CeleryExecutor, as production spreads it: a private redis-server (broker
and result backend), two `airflow celery worker` processes, each in its own directory with its
own AIRFLOW_HOME, TMPDIR and task logs, the scheduler and api-server on SQLite
(tools/chaos/celery_stack.py). One run over 4 input files (4 staging groups) and 4 shards:
it succeeds and balances, and the stage_group and index_shard tries ran on both workers (each worker names itself through
`[core] hostname_callable`; the task instance's `hostname` says where a try ran).
"""

from __future__ import annotations

import json
import sys
import time

import pytest

from chaos.airflow_stack import DAG_ID
from chaos.celery_stack import WORKER_CONCURRENCY, WORKER_NAMES, CeleryStack
from tests.helpers.dag_helpers import REPO, os_get

pytestmark = [pytest.mark.devstack, pytest.mark.airflow]

ALIAS = "celery-many"
DOCS = 80
SHARDS = 4  # > one worker's concurrency: the other worker must take some
FILES = 4  # staging groups, as many (> one worker's concurrency too)
DAY = "2026-02-03"


def put_input(devstack) -> str:
    """FILES objects under one prefix: with a tiny staging_group_mb, one staging group each."""
    rows = [json.dumps({"id": f"cel-{i}", "text": f"worker test {i}: bake bread, walk the dog"})
            for i in range(DOCS)]
    rows.insert(DOCS // 2, json.dumps({"id": "cel-bad", "text": "  "}))  # rejected: empty text
    s3 = devstack.s3.client()
    per = -(-len(rows) // FILES)
    for f in range(FILES):
        s3.put_object(Bucket=devstack.s3.bucket, Key=f"celery/ds={DAY}/docs-{f}.jsonl",
                      Body=("\n".join(rows[f * per:(f + 1) * per]) + "\n").encode())
    return f"s3://{devstack.s3.bucket}/celery/ds={DAY}/"


def wait_run(stack: CeleryStack, run_id: str, timeout: float = 600) -> dict:
    """Until the run ends; the timeout bounds a hung run, nothing races it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for name, proc in {**stack.components, **stack.workers}.items():
            if proc.poll() is not None:
                pytest.fail(f"{name} exited ({proc.returncode}): {stack.tail(name)}")
        run = stack.dag_run(run_id)
        if run["state"] in ("success", "failed"):
            return run
        time.sleep(1)
    pytest.fail(f"run {run_id} did not end in {timeout:.0f}s; {stack.tail('scheduler')}")


def test_the_dag_under_celery_balances_and_its_shards_run_on_both_workers(airflow_env, tmp_path):
    devstack = airflow_env
    sys.path.insert(0, str(REPO / "scripts"))
    from batchvec.plan.naming import run_key
    from devstack_connections import airflow_env as devstack_airflow_env

    assert SHARDS > WORKER_CONCURRENCY
    input_uri = put_input(devstack)
    stack = CeleryStack(tmp_path / "airflow", devstack_airflow_env(devstack.endpoints),
                        retries=2)
    run_id = f"celery-{DAY}"
    try:
        stack.start()
        stack.trigger(run_id, {"input_uri": input_uri, "index_name": ALIAS, "shards": SHARDS,
                               "max_reject_ratio": 0.5, "staging_group_mb": 1e-6,
                               "staging_commit_mb": 0}, logical_date=f"{DAY}T00:00:00Z")
        run = wait_run(stack, run_id)
        tis = stack.task_instances(run_id)
        assert run["state"] == "success", [(t["task_id"], t["map_index"], t["state"]) for t in tis]

        key = run_key(DAG_ID, run_id)
        body = devstack.s3.client().get_object(Bucket=devstack.s3.bucket,
                                               Key=f"runs/{key}/report.json")["Body"].read()
        totals = json.loads(body)["totals"]
        indexed = totals["created"] + totals["updated"]
        assert totals["records_in"] == DOCS + 1
        assert totals["records_in"] == indexed + totals["rejected_total"] + totals["failed_total"]
        assert (indexed, totals["rejected_total"], totals["failed_total"]) == (DOCS, 1, 0)
        assert os_get(devstack, f"/{ALIAS}/_count")["count"] == DOCS

        # Every task ran on a worker, and the shards on both.
        assert {t["hostname"] for t in tis if t["state"] == "success"} <= set(WORKER_NAMES)
        shards = {t["map_index"]: t["hostname"] for t in tis if t["task_id"] == "index_shard"}
        assert sorted(shards) == list(range(SHARDS))
        assert set(shards.values()) == set(WORKER_NAMES), shards
        staged = {t["map_index"]: t["hostname"] for t in tis if t["task_id"] == "stage_group"}
        assert sorted(staged) == list(range(FILES))
        assert set(staged.values()) == set(WORKER_NAMES), staged
        # Each try's log is in the home of the worker that ran it, and only there.
        for index, host in shards.items():
            found = {name for name in WORKER_NAMES if list(
                (stack.worker_dir(name) / "home" / "logs").rglob(
                    f"run_id={run_id}/task_id=index_shard/map_index={index}/*.log"))}
            assert found == {host}, (index, host, found)
        print(f"celery: staging groups by worker {staged}, shards {shards}; totals {totals}")
    finally:
        left = stack.stop()
    assert not left, left
