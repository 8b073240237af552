"""Overlapping runs on one alias under a real Airflow (scheduler, LocalExecutor, triggerer):
`airflow backfill create --run-backwards --max-active-runs 3` over a fresh alias. One run
builds the physical index while the others wait for it (the build lease), every document
ends at its newest day, none is indexed twice, and the index's settings are left as found.
"""

from __future__ import annotations

import json
import sys
import time

import pytest

from chaos.airflow_stack import DAG_ID, AirflowStack
from tests.helpers.airflow_stack_helpers import revive
from tests.helpers.dag_helpers import REPO, os_get, reports

pytestmark = [pytest.mark.devstack, pytest.mark.airflow]

ALIAS = "inc-overlap"
DOCS = 30


def put_day(devstack, day: str) -> None:
    rows = [{"id": f"ov-{i}", "text": f"day {day}: bake bread with flour and yeast ({i})"}
            for i in range(DOCS)]
    devstack.s3.client().put_object(
        Bucket=devstack.s3.bucket, Key=f"overlap/ds={day}/docs.jsonl",
        Body="\n".join(json.dumps(r) for r in rows).encode() + b"\n")


def backfill(stack: AirflowStack, first: str, last: str, runs: int) -> list[dict]:
    conf = {"input_uri": "s3://{{ params.bucket }}/overlap/ds={{ ds }}/", "index_name": ALIAS,
            "shards": 2}
    # One backfill of a DAG at a time: the scheduler marks the last one complete after its runs.
    deadline = time.monotonic() + 120
    while any(not b.get("completed_at") for b in stack._json(
            "GET", "/backfills", params={"dag_id": DAG_ID})["backfills"]):
        if time.monotonic() > deadline:
            pytest.fail("the previous backfill was never marked complete")
        time.sleep(1)
    # What `airflow backfill create --run-backwards --max-active-runs N` sends, through the
    # REST API (the CLI writes the SQLite DB beside the scheduler and can meet a lock).
    stack._json("POST", "/backfills", json={
        "dag_id": DAG_ID, "from_date": f"{first}T00:00:00Z", "to_date": f"{last}T00:00:00Z",
        "run_backwards": True, "max_active_runs": runs, "dag_run_conf": conf,
        "reprocess_behavior": "none"})
    deadline = time.monotonic() + 900  # a bound for a hung run, not a race: runs end on their own
    while time.monotonic() < deadline:
        revive(stack)
        found = [r for r in stack._json("GET", f"/dags/{DAG_ID}/dagRuns",
                                        params={"limit": 100})["dag_runs"]
                 if r["run_type"] == "backfill" and first <= r["logical_date"][:10] <= last]
        if len(found) == runs and all(r["state"] in ("success", "failed") for r in found):
            return found
        time.sleep(2)
    pytest.fail(f"backfill {first}..{last} did not finish: {found}; {stack.tail('scheduler')}")


def settings_of(devstack, index: str) -> dict:
    got = os_get(devstack, f"/{index}/_settings")[index]["settings"]["index"]
    return {"refresh_interval": got.get("refresh_interval", "1s"),
            "number_of_replicas": got["number_of_replicas"]}


def test_an_overlapping_backfill_builds_once_indexes_each_document_once_and_keeps_settings(
        airflow_env, tmp_path):
    devstack = airflow_env
    sys.path.insert(0, str(REPO / "scripts"))
    from devstack_connections import airflow_env as devstack_airflow_env

    for day in ("2026-01-05", "2026-01-06", "2026-01-07", "2026-01-08", "2026-01-09"):
        put_day(devstack, day)
    stack = AirflowStack(tmp_path / "airflow", devstack_airflow_env(devstack.endpoints),
                         retries=2)
    try:
        stack.start()
        runs = backfill(stack, "2026-01-05", "2026-01-07", 3)
        assert all(r["state"] == "success" for r in runs), runs
        reps = [r for r in reports(devstack, ALIAS)]
        assert len(reps) == 3
        modes = sorted(r["extra"]["target"]["mode"] for r in reps)
        assert modes == ["build", "incremental", "incremental"]  # one built, two waited
        assert sum(r["alias_moved"] for r in reps) == 1
        physical = reps[0]["physical_index"]
        assert {r["physical_index"] for r in reps} == {physical}
        assert sorted(os_get(devstack, f"/_alias/{ALIAS}")) == [physical]
        assert os_get(devstack, f"/{ALIAS}/_count")["count"] == DOCS
        hits = os_get(devstack, f"/{ALIAS}/_search", {"size": 100, "_source": ["text"]})
        assert {h["_source"]["text"][:14] for h in hits["hits"]["hits"]} == {"day 2026-01-07"}
        assert settings_of(devstack, physical) == {"refresh_interval": "1s",
                                                   "number_of_replicas": "1"}
        for rep in reps:
            assert rep["balanced"] and rep["totals"]["failed_total"] == 0

        # The alias serves now; the operator tuned it. Two more overlapping days leave that be.
        session_put = {"index": {"refresh_interval": "7s"}}
        from tests.helpers.dag_helpers import os_session

        os_session(devstack).put(f"{devstack.endpoints['opensearch']}/{physical}/_settings",
                                 json=session_put, timeout=30).raise_for_status()
        runs = backfill(stack, "2026-01-08", "2026-01-09", 2)
        assert all(r["state"] == "success" for r in runs), runs
        assert settings_of(devstack, physical) == {"refresh_interval": "7s",
                                                   "number_of_replicas": "1"}
        assert os_get(devstack, f"/{ALIAS}/_count")["count"] == DOCS
        hits = os_get(devstack, f"/{ALIAS}/_search", {"size": 100, "_source": ["text"]})
        assert {h["_source"]["text"][:14] for h in hits["hits"]["hits"]} == {"day 2026-01-09"}
    finally:
        stack.stop()
