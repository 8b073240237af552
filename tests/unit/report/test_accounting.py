"""Run report arithmetic, JSON round trip and the task-log table."""

from __future__ import annotations

import json

from batchvec.report.accounting import RunReport, ShardReport, render_table


def _report(**kw) -> RunReport:
    shards = kw.pop(
        "shards",
        [
            ShardReport(
                "input/part-00000.jsonl",
                1000,
                created=990,
                updated=2,
                duplicates=2,
                rejected={"missing_id": 3, "bad_vector": 1},
                failed={"mapper_parsing_exception": 4},
            ),
            ShardReport("input/part-00001.jsonl", 500, created=495, rejected={"missing_id": 5}),
        ],
    )
    return RunReport(
        run_key="rk-abc",
        dag_id="embed_daily",
        run_id="scheduled__2026-01-01",
        index="docs-knn",
        model_name="m1",
        model_id="m1",
        task_id="t1",
        transform_job_name="bv-rk-abc",
        shards=shards,
        stage_seconds={"stage": 12.5, "wait": 3600.25, "outputs": 98.0},
        **kw,
    )


def test_shard_arithmetic() -> None:
    shard = ShardReport("s", 10, created=5, updated=1, rejected={"a": 2}, failed={"b": 1, "c": 1})
    assert (shard.indexed, shard.rejected_total, shard.failed_total) == (6, 2, 2)
    assert shard.accounted == 10 and shard.missing == 0 and shard.balanced
    assert ShardReport("s", 10, created=9).missing == 1
    assert ShardReport("s", 10, created=11).missing == -1
    assert not ShardReport("s", 10, created=11).balanced


def test_totals_and_ratio() -> None:
    report = _report()
    t = report.totals
    assert (t.shard, t.records_in, t.created, t.updated) == ("TOTAL", 1500, 1485, 2)
    assert t.duplicates == 2 and t.balanced  # duplicates are among the indexed, not extra
    assert t.rejected == {"missing_id": 8, "bad_vector": 1}
    assert t.failed == {"mapper_parsing_exception": 4}
    assert report.balanced and t.balanced
    assert report.reject_ratio == 9 / 1500  # rejected only: failures fail a run on their own


def test_imbalance_in_one_shard_is_not_hidden_by_another() -> None:
    report = _report(shards=[ShardReport("a", 10, created=11), ShardReport("b", 10, created=9)])
    assert report.totals.balanced  # the sums agree ...
    assert not report.balanced  # ... but records went missing in b
    assert [s.shard for s in report.unbalanced] == ["a", "b"]


def test_empty_run() -> None:
    report = _report(shards=[])
    assert report.balanced and report.reject_ratio == 0.0 and report.totals.records_in == 0
    assert "TOTAL" in render_table(report)


def test_dict_round_trip_is_json_safe() -> None:
    report = _report(extra={"sample_query": {"hit": "d1", "score": 0.9}})
    data = json.loads(json.dumps(report.to_dict()))
    assert data["totals"]["records_in"] == 1500 and data["balanced"] is True
    assert data["shards"][0]["rejected_total"] == 4
    assert data["totals"]["duplicates"] == 2
    again = RunReport.from_dict(data)
    assert again == report
    assert again.to_dict() == report.to_dict()
    minimal = RunReport.from_dict({"run_key": "k", "dag_id": "d", "run_id": "r", "index": "i"})
    assert minimal.shards == [] and minimal.model_id is None
    # reports written before the duplicates count existed still load
    old = {k: v for k, v in data["shards"][0].items() if k != "duplicates"}
    assert ShardReport.from_dict(old).duplicates == 0


def test_render_table() -> None:
    text = render_table(_report())
    lines = text.splitlines()
    assert "run            rk-abc" in lines
    header = next(line for line in lines if line.startswith("shard"))
    assert header.split() == [
        "shard",
        "records_in",
        "created",
        "updated",
        "unchanged",
        "superseded",
        "duplicates",
        "rejected",
        "failed",
        "deleted",
        "balance",
    ]
    row = next(line for line in lines if line.startswith("input/part-00000.jsonl"))
    assert row.split() == ["input/part-00000.jsonl", "1,000", "990", "2", "0", "0", "2", "4",
                           "4", "0", "ok"]
    total = next(line for line in lines if line.startswith("TOTAL"))
    assert total.split() == ["TOTAL", "1,500", "1,485", "2", "0", "0", "2", "9", "4", "0", "ok"]
    # right-aligned numbers end where their header ends
    assert row.index("1,000") + 5 == header.index("records_in") + len("records_in")
    assert total.index("1,485") + 5 == header.index("created") + len("created")
    assert "duplicates: 2 indexed records superseded" in text
    assert "rejected: missing_id=8, bad_vector=1" in text
    assert "failed:   mapper_parsing_exception=4" in text
    assert "balanced" in text and "NOT BALANCED" not in text
    assert any(
        line.split() == ["wait", "3600.2"] or line.split() == ["wait", "3600.3"] for line in lines
    )
    assert any(line.split()[:1] == ["sum"] for line in lines)


def test_render_flags_unbalanced_and_elides_many_shards() -> None:
    shards = [ShardReport(f"s{i:04d}", 10, created=10) for i in range(300)]
    shards[123] = ShardReport("s0123", 10, created=7)
    text = render_table(_report(shards=shards), max_shards=20)
    assert "MISSING 3" in text and "NOT BALANCED" in text
    assert "s0123" in text
    assert "... 280 more balanced shards not shown" in text
    shown = [line.split()[0] for line in text.splitlines() if line.startswith("s0")]
    assert shown == sorted(shown) and len(shown) == 20  # input order, 19 balanced + 1 not


def _hashes(ids: list[str]):
    from array import array

    return array("q", map(hash, ids))


def test_count_duplicates_per_id_minus_one_and_refused_copies_supersede_nothing() -> None:
    from batchvec.index.duplicates import count_duplicates

    sent = ["a", "b", "a", "c", "a", "b", "d"]  # a x3, b x2: 3 superseded
    assert count_duplicates(_hashes(sent)) == 3
    assert count_duplicates(_hashes([])) == 0 and count_duplicates(_hashes(["x"])) == 0
    assert count_duplicates(_hashes([str(i) for i in range(10_000)] * 2)) == 10_000
    # a refused copy is not in the index: one of a's refused leaves 2 copies, b's only
    # indexed copy is b's other one, d refused entirely; an unknown id changes nothing
    assert count_duplicates(_hashes(sent), _hashes(["a", "b", "d", "zz"])) == 1
    assert count_duplicates(_hashes(sent), _hashes(["a", "a", "a"])) == 1


def test_duplicate_counter_spilling_to_disk_counts_the_same_as_in_memory() -> None:
    from batchvec.index.duplicates import DuplicateCounter, count_duplicates

    ids = [f"doc-{i % 7_000}" for i in range(20_000)] + ["x", "x", "y"]  # 13,001 superseded
    refused = ["doc-1", "doc-1", "x", "never-sent"]
    expected = count_duplicates(_hashes(ids), _hashes(refused))
    for budget in (1_000, 4_096, 1 << 20):  # spilled into several partitions, or not at all
        counter = DuplicateCounter(budget=budget)
        for n, doc_id in enumerate(ids, 1):
            counter.remember(hash(doc_id))
            if not n % 500:
                counter.maybe_spill()
        for doc_id in refused:
            counter.refuse(doc_id)
        assert counter.count() == expected, budget
    assert expected == 13_001 - 2 - 1  # doc-1 lost 2 of its 3 copies, x 1 of its 2
