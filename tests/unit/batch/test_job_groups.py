"""Jobs per group of shards: the cut, the names, the manifest body, the state rules."""

from __future__ import annotations

import pytest

from batchvec.batch import job_groups as jg
from batchvec.plan import naming


def _shards(*counts):
    return [(f"shard-{i:05d}", n) for i, n in enumerate(counts)]


def test_one_group_when_the_records_fit_one_job():
    assert jg.group_shards(_shards(10, 20, 30), 100, 64) == [["shard-00000", "shard-00001",
                                                             "shard-00002"]]


def test_groups_are_contiguous_about_equal_and_cover_every_shard_to_embed():
    counts = [100] * 12
    groups = jg.group_shards(_shards(*counts), 300, 64)
    assert len(groups) == 4
    assert [len(g) for g in groups] == [3, 3, 3, 3]
    flat = [n for g in groups for n in g]
    assert flat == [f"shard-{i:05d}" for i in range(12)]  # in shard order, each once


def test_max_jobs_caps_the_count_and_the_groups_grow_past_max_records():
    groups = jg.group_shards(_shards(*[100] * 12), 100, 3)
    assert [len(g) for g in groups] == [4, 4, 4]


def test_shards_with_nothing_to_embed_belong_to_no_group_and_none_yields_no_job():
    groups = jg.group_shards(_shards(50, 0, 50, 0), 50, 64)
    assert groups == [["shard-00000"], ["shard-00002"]]
    assert jg.group_shards(_shards(0, 0), 10, 64) == []


def test_a_shard_larger_than_max_records_is_one_group_of_its_own():
    groups = jg.group_shards(_shards(10, 1000, 10), 100, 64)
    assert ["shard-00001"] in groups
    assert sum(len(g) for g in groups) == 3
    assert all(g for g in groups)  # empty groups are dropped


def test_job_names_keep_the_run_key_for_one_group_and_fit_sagemaker_for_many():
    key = naming.run_key("batch_embeddings", "manual__2026-12-02T10:00:00+00:00")
    assert jg.job_base(key, 0, 1) == key
    names = {naming.transform_job_name(jg.job_base(key, g, jg.MAX_JOBS), attempt)
             for g in range(jg.MAX_JOBS) for attempt in (1, 2, 20)}
    assert len(names) == 3 * jg.MAX_JOBS  # per group and attempt, never shared
    assert f"{key}-j7-r2" in names


def test_the_manifest_lists_the_objects_relative_to_the_input_prefix():
    assert jg.manifest_body("s3://b/runs/k/input", ["shard-00000", "shard-00003"]) == [
        {"prefix": "s3://b/runs/k/input/"}, "shard-00000", "shard-00003"]


def test_a_group_waits_while_max_parallel_lower_groups_are_unfinished():
    states = {"batch_predict_0": "deferred", "batch_predict_1": "running",
              "batch_predict_2": "scheduled", "batch_predict_3": None}
    assert jg.may_submit(states, 0, 2)
    assert jg.may_submit(states, 1, 2)
    assert not jg.may_submit(states, 2, 2)
    assert not jg.may_submit(states, 3, 2)
    states["batch_predict_0"] = "success"
    assert jg.may_submit(states, 2, 2)
    states["batch_predict_1"] = "up_for_retry"  # its job failed: it is not done with it
    assert not jg.may_submit(states, 3, 2)
    states["batch_predict_1"] = "failed"
    assert jg.may_submit(states, 3, 2)


def test_before_expansion_the_unmapped_try_stands_for_every_group():
    assert jg.state_of({"batch_predict": "upstream_failed"}, 5) == "upstream_failed"
    assert jg.is_done(jg.state_of({"batch_predict": "skipped"}, 0))  # no jobs at all
    assert not jg.is_done(jg.state_of({}, 0))
    assert not jg.is_done("up_for_retry") and not jg.is_done("deferred")


@pytest.mark.parametrize("name,value", [("max_jobs", 0), ("max_jobs", jg.MAX_JOBS + 1),
                                        ("max_records_per_job", 0),
                                        ("max_parallel_jobs", True), ("max_parallel_jobs", 1.5)])
def test_bad_values_are_named(name, value):
    values, problems = jg.resolve({name: value})
    assert len(problems) == 1 and problems[0].startswith(name)
    assert values[name] == jg.schema()[name]["default"]
