"""Staging in parallel groups (staging_groups.py): the grouping rules alone, without S3 (the
staging tasks against the devstack are in tests/integration/test_staging_groups.py)."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import pytest

from batchvec.ingest import staging_groups as groups
from batchvec.plan import run_plan as plan_module


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


def test_staging_params_are_validated():
    with pytest.raises(ValueError) as err:
        plan_module.resolve_plan({"staging_group_mb": 0, "staging_commit_mb": -1,
                                  "max_staging_tasks": 0, "input_uri": "s3://b/in/"},
                                 dag_id="d", run_id="r", ds="2026-03-20", region="us-east-1")
    text = str(err.value)
    assert "staging_group_mb: must be a number of MB" in text
    assert "staging_commit_mb: must be a number of MB >= 0" in text
    assert "max_staging_tasks: must be an integer in 1..1024" in text

