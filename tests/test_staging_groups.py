"""Staging in parallel groups (staging_groups.py, stage_steps.py): the grouping rules alone,
then the staging tasks against the devstack's real S3 and OpenSearch: a group killed after a
committed segment resumes past it, and any grouping stages exactly what one group does."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import orjson
import pytest

from batchvec.ingest import staging_groups as groups
from batchvec.plan import run_plan as plan_module
from tests.dag_helpers import write_jsonl


def test_groups_follow_listing_order_and_never_split_a_file():
    assert groups.group_files([10] * 5, 25, 10) == [(0, 3), (3, 5)]
    assert groups.group_files([100, 1, 1, 100], 50, 10) == [(0, 1), (1, 4)]
    assert groups.group_files([], 10, 3) == []
    assert groups.group_files([5, 5], 10**9, 4) == [(0, 2)]


def test_past_max_groups_the_groups_grow():
    found = groups.group_files([10] * 100, 1, 7)
    assert len(found) <= 7
    assert list(itertools.chain.from_iterable(range(a, b) for a, b in found)) == list(range(100))


def test_segments_end_at_the_first_boundary_past_the_commit_size():
    assert groups.segments([10, 10, 10, 10, 10], 0, 5, 15) == [(0, 2), (2, 4), (4, 5)]
    assert groups.segments([10, 10, 10], 1, 3, 0) == [(1, 2), (2, 3)]  # 0: every file
    assert groups.segments([10, 10, 10], 0, 3, 10**9) == [(0, 3)]


@dataclass(frozen=True)
class _File:
    name: str
    size: int
    format: str = "jsonl"
    gzip: bool = False


def test_the_listing_names_each_group_and_its_segments():
    doc = groups.listing_doc([_File(f"f{i}", 10) for i in range(4)], 20, 8, 0)
    assert doc["bytes"] == 40 and [f["name"] for f in doc["files"]] == ["f0", "f1", "f2", "f3"]
    assert [(g["start"], g["end"], g["bytes"], g["segments"]) for g in doc["groups"]] == [
        (0, 2, 20, [(0, 1), (1, 2)]), (2, 4, 20, [(2, 3), (3, 4)])]


def _commit(shards, records, rejected=None, rejected_key=None):
    return {"shards": shards, "records_in": records + sum((rejected or {}).values()),
            "accepted": records, "rejected": rejected or {}, "rejected_key": rejected_key,
            "rejected_examples": {k: "why" for k in rejected or {}}, "bytes_in": 7,
            "sources": [{"name": f"s{records}", "records": records}]}


def test_a_group_summary_keeps_pieces_in_segment_order():
    first = _commit([{"name": "part-00000.jsonl", "key": "a", "records": 2, "bytes": 9}], 2)
    second = _commit([{"name": "part-00000.jsonl", "key": "b", "records": 1, "bytes": 4},
                      {"name": "part-00001.jsonl", "key": "c", "records": 3, "bytes": 8}], 4,
                     {"invalid_json": 1}, "r1")
    summary = groups.group_summary(3, [first, second])
    assert summary["pieces"]["part-00000.jsonl"] == [
        {"key": "a", "records": 2, "bytes": 9}, {"key": "b", "records": 1, "bytes": 4}]
    assert (summary["records_in"], summary["accepted"], summary["rejected"]) == (7, 6, {"invalid_json": 1})
    assert summary["rejected_keys"] == ["r1"] and summary["segments"] == 2
    assert [s["name"] for s in summary["sources"]] == ["s2", "s4"]


# -- against the devstack ------------------------------------------------------------------


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


def test_staging_params_are_validated():
    with pytest.raises(ValueError) as err:
        plan_module.resolve_plan({"staging_group_mb": 0, "staging_commit_mb": -1,
                                  "max_staging_tasks": 0, "input_uri": "s3://b/in/"},
                                 dag_id="d", run_id="r", ds="2026-03-20", region="us-east-1")
    text = str(err.value)
    assert "staging_group_mb: must be a number of MB" in text
    assert "staging_commit_mb: must be a number of MB >= 0" in text
    assert "max_staging_tasks: must be an integer in 1..1024" in text
