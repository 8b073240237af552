"""A dry run of the DAG (`dry_run: true`) on the devstack: the plan task previews the run and
ends it, successfully, having written nothing and created no model, ML task or job."""

from __future__ import annotations

import gzip
import json
from datetime import UTC, datetime

import pytest

from tests.helpers.dag_helpers import asset_events, os_session, reports, run, transform_jobs
from tests.helpers.preview_helpers import jsonl, parquet, records

pytestmark = [pytest.mark.devstack, pytest.mark.airflow]


def _ml_count(devstack, what: str) -> int:
    """ML Commons models or tasks on the node (0 before its index exists)."""
    resp = os_session(devstack).post(
        devstack.endpoints["opensearch"] + f"/_plugins/_ml/{what}/_search", timeout=30,
        json={"query": {"match_all": {}}, "size": 0, "track_total_hits": True})
    if resp.status_code == 404:
        return 0
    resp.raise_for_status()
    return resp.json()["hits"]["total"]["value"]


def _xcoms(dag_id: str, run_id: str) -> dict[tuple[str, str], object]:
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        rows = session.scalars(select(XComModel).where(
            XComModel.dag_id == dag_id, XComModel.run_id == run_id)).all()
        return {(x.task_id, x.key): x.value for x in rows}


def _keys(s3, bucket: str, prefix: str) -> list[str]:
    return [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(
        Bucket=bucket, Prefix=prefix) for o in page.get("Contents", [])]


def test_a_dry_run_previews_and_stops_without_writing_or_creating(dag, airflow_env):
    devstack = airflow_env
    s3, bucket = devstack.s3.client(), devstack.s3.bucket
    prefix = "input/preview-dry-run/"
    bodies = {prefix + "a.jsonl": jsonl(records(1, 300, "a")),
              prefix + "b.jsonl.gz": gzip.compress(jsonl(records(2, 200, "b"))),
              prefix + "c.parquet": parquet(records(3, 123, "c"))}
    for key, body in bodies.items():
        s3.put_object(Bucket=bucket, Key=key, Body=body)
    runs_before = set(_keys(s3, bucket, "runs/"))
    jobs_before = [j["TransformJobName"] for j in transform_jobs(devstack)]
    models_before, tasks_before = _ml_count(devstack, "models"), _ml_count(devstack, "tasks")

    dagrun = run(dag, datetime(2026, 4, 20, tzinfo=UTC),
                 {"input_uri": f"s3://{bucket}/{prefix}", "index_name": "preview-dry",
                  "dry_run": True, "shards": 3, "index_docs_per_s": 100})

    assert dagrun.state == "success"
    states = {ti.task_id: ti.state for ti in dagrun.get_task_instances()}
    assert states.pop("plan") == "success"
    assert set(states.values()) == {"skipped"}, states  # report, cleanup, ... included
    assert {"report", "cleanup", "restore_index", "check_outputs", "stage"} <= set(states)

    xcoms = _xcoms(dag.dag_id, dagrun.run_id)
    found = xcoms[("plan", "preview")]
    if isinstance(found, str):
        found = json.loads(found)
    assert found["input"]["files"] == 3
    assert found["input"]["bytes"] == sum(len(b) for b in bodies.values())
    # every file is under 1 MiB, so each is read whole: the count is exact
    assert found["records"] == {**found["records"], "total": 623, "exact": True}
    assert found["shards"] == {"count": 3, "records_per_shard": 208}
    assert found["transform"]["jobs"] == 1 and found["indexing"]["wall_s"] == 6.2
    assert found["staging"]["groups"] == 1

    # nothing written: no object under the run's prefix (nor any new run), no report
    plan = xcoms[("plan", "return_value")]
    if isinstance(plan, str):
        plan = json.loads(plan)
    assert plan["dry_run"] and plan["preview"] == found
    assert _keys(s3, bucket, plan["run_prefix"]) == []
    assert set(_keys(s3, bucket, "runs/")) == runs_before
    assert reports(devstack, "preview-dry") == []
    assert asset_events(dagrun.run_id) == []  # report skipped: no event for an index
    # nothing created: no transform job, no ML Commons model or task, no index
    assert [j["TransformJobName"] for j in transform_jobs(devstack)] == jobs_before
    assert (_ml_count(devstack, "models"), _ml_count(devstack, "tasks")) == (models_before,
                                                                           tasks_before)
    head = os_session(devstack).head(devstack.endpoints["opensearch"] + "/preview-dry", timeout=30)
    assert head.status_code == 404


def test_a_dry_run_of_an_empty_prefix_fails_the_plan_saying_so(dag, airflow_env, monkeypatch):
    from airflow.sdk.execution_time import supervisor

    devstack, errors, real = airflow_env, [], supervisor.run_task_in_process

    def spy(ti, task):  # dag.test only logs a task's exception
        result = real(ti=ti, task=task)
        if result.error is not None and ti.task_id == "plan":
            errors.append(result.error)
        return result

    monkeypatch.setattr(supervisor, "run_task_in_process", spy)
    uri = f"s3://{devstack.s3.bucket}/input/preview-nothing-here/"
    dagrun = run(dag, datetime(2026, 4, 21, tzinfo=UTC),
                 {"input_uri": uri, "index_name": "preview-none", "dry_run": True})
    assert dagrun.state == "failed"
    plan_ti = next(ti for ti in dagrun.get_task_instances() if ti.task_id == "plan")
    assert plan_ti.state == "failed"
    [error] = errors  # one try: a retry cannot make objects appear
    assert str(error) == f"dry run: cannot read input_uri: no input objects under {uri}"
    assert reports(devstack, "preview-none") == []
