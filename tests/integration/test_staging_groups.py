"""Staging in parallel groups against the devstack's real S3 and OpenSearch: a group killed after
a committed segment resumes past it, and any grouping stages exactly what one group does
(the grouping rules alone are in tests/unit/ingest/test_staging_groups.py)."""

from __future__ import annotations

import orjson
import pytest

from batchvec.ingest import staging_groups as groups
from tests.helpers.dag_helpers import write_jsonl


def _plan(airflow_env, tmp, run: str, **params) -> dict:
    from batchvec.tasks.planning import make_plan

    class _Dag:
        dag_id = "batch_embeddings"

    from datetime import UTC, datetime

    when = datetime(2026, 3, 20, tzinfo=UTC)
    return make_plan({"input_uri": str(tmp), "index_name": run, "shards": 3,
                      **params}, {"dag": _Dag, "run_id": run, "logical_date": when,
                                  "ds": "2026-03-20"})


def _files(tmp):
    """Six files; ids repeat across files with other texts, so order decides the winner."""
    tmp.mkdir(exist_ok=True)
    for f in range(6):
        write_jsonl(tmp / f"f{f}.jsonl", [{"id": f"d{(f * 7 + i) % 25}", "text": f"f{f} line {i}"}
                                          for i in range(12)])
    return tmp


def _stage_all(plan_data, before_group=None):
    from batchvec.tasks import staging

    listed = staging.list_input(plan_data)
    for g in listed["groups"]:
        if before_group:
            before_group(g)
        staging.stage_group(plan_data, g)
    for n in listed["shards"]:
        staging.stage_shard(plan_data, n)
    return listed, staging.stage(plan_data)


def _shard_lines(s3, bucket, plan_data, manifest):
    out = {}
    for shard in manifest["shards"]:
        key = f"{plan_data['run_prefix']}/input/{shard['name']}"
        out[shard["name"]] = s3.get_object(Bucket=bucket, Key=key)["Body"].read().splitlines()
    return out


@pytest.mark.devstack
def test_a_group_resumes_after_its_committed_segment_and_any_grouping_stages_the_same(
        airflow_env, tmp_path):
    from batchvec.tasks import staging

    devstack = airflow_env
    s3 = devstack.s3.client()
    bucket = devstack.s3.bucket
    src = _files(tmp_path / "in")
    one = _plan(devstack, src, "groups-one")
    _, single = _stage_all(one)
    assert single["records_in"] == 72 and single["accepted"] == 72

    many = _plan(devstack, src, "groups-many", staging_group_mb=0.0005, staging_commit_mb=0)
    listed = staging.list_input(many)
    assert listed["groups"] == [0, 1, 2]  # two files of ~500 bytes each
    staging.stage_group(many, 0)
    # Group 1 dies in its second file (it vanished), after its first file was committed...
    second = src / "f3.jsonl"
    saved = second.read_bytes()
    second.unlink()
    with pytest.raises(OSError):
        staging.stage_group(many, 1)
    prefix = groups.segment_prefix(many["run_prefix"], 1, 0)
    assert s3.head_object(Bucket=bucket, Key=f"{prefix}/{groups.COMMIT}")
    # ... and its retry does not read that file again: it is gone now, the lost one is back.
    second.write_bytes(saved)
    first = src / "f2.jsonl"
    kept = first.read_bytes()
    first.unlink()
    try:
        assert staging.stage_group(many, 1)["records_in"] == 24
    finally:
        first.write_bytes(kept)
    staging.stage_group(many, 2)
    for n in listed["shards"]:
        staging.stage_shard(many, n)
    manifest = staging.stage(many)
    assert manifest["records_in"] == 72 and manifest["embed_total"] == 72
    full = staging.stage(many)  # a retry of the last task reuses the manifest
    assert full == manifest
    run_manifest = orjson.loads(s3.get_object(
        Bucket=bucket, Key=f"{many['run_prefix']}/manifest.json")["Body"].read())
    assert run_manifest["groups"] == 3 and run_manifest["segments"] == 6
    assert [r["name"].rsplit("/", 1)[1] for r in run_manifest["sources"]] == [
        f"f{i}.jsonl" for i in range(6)]

    # Same lines in the same order per shard, however the input was grouped (the stamps
    # are the same: same model, source and version).
    assert _shard_lines(s3, bucket, many, manifest) == _shard_lines(s3, bucket, one, single)
    last = {}
    for lines in _shard_lines(s3, bucket, many, manifest).values():
        for line in lines:
            doc = orjson.loads(line)
            last[doc["_id"]] = doc["text"]
    assert last["d0"] == "f3 line 4"  # d0's last line in input order: in group 1, not 0

