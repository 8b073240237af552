"""The benchmark harness compares equal work and prints the table it promises (fast: P1 only)."""

from __future__ import annotations

import json
import sys

import pytest

from tests.helpers.paths import REPO

if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench import p1_convert, run  # noqa: E402
from bench.common import OutLines, Row  # noqa: E402
from bench.table import COLUMNS, render, summary  # noqa: E402


def test_converter_output_equals_the_naive_output_once_parsed():
    lines = list(OutLines().lines(3000))
    assert p1_convert.same_actions(lines) == 0
    doc_id, body = p1_convert.ours()(lines[5])
    head, source = (json.loads(part) for part in body.splitlines())
    assert doc_id == "doc-5" and head == {"index": {"_index": "bench-index", "_id": "doc-5"}}
    assert len(source["embedding"]) == 384 and source["text"].startswith("doc 5:")


def test_generated_out_lines_are_sagemaker_join_format():
    line = json.loads(OutLines().line(42))
    assert list(line) == ["_id", "text", "SageMakerOutput"]
    assert len(line["SageMakerOutput"]) == 1 and len(line["SageMakerOutput"][0]) == 384
    assert 250 <= len(line["text"]) <= 300


def test_quick_p1_prints_the_table(capsys):
    assert run.main(["--quick", "--only", "P1", "--p1-docs", "3000", "--repeats", "1"]) == 0
    out = capsys.readouterr().out.splitlines()
    header = [c.strip() for c in out[0].split("|")]
    assert header == list(COLUMNS)
    row = [c.strip() for c in out[2].split("|")]
    assert row[0] == "P1" and row[2] == "docs/s" and row[-1] in ("yes", "NO")
    assert float(row[3].replace(",", "")) > float(row[4].replace(",", ""))  # ours beats stdlib
    assert out[-1].startswith("bench: ")


def test_summary_names_missed_and_crashed_rows():
    rows = [Row("P1", "x", "u", met=True), Row("P2", "y", "u", met=False),
            Row("P3", "z", "u", error="boom")]
    text = render(rows)
    assert "ERROR boom" in text and "| NO" in text
    assert summary(rows) == "bench: goals missed: P2; rows that crashed: P3"
    assert summary(rows[:1]) == "bench: every goal met"


def test_unknown_rows_are_refused():
    with pytest.raises(SystemExit):
        run.parse_args(["--only", "P9"])


def test_p3n_is_a_row_and_both_clients_write_the_same_documents_to_the_given_index():
    from bench.p3_bulk import Docs

    assert run.parse_args(["--quick", "--only", "P3n"]).only == ["P3N"]
    assert run.parse_args(["--quick"]).p3n_docs == 5_000
    docs = Docs(3, "bench-p3n-ours")
    (doc_id, action), first = next(docs.actions()), next(docs.dicts())
    head, source = (json.loads(part) for part in action.splitlines())
    assert head == {"index": {"_index": "bench-p3n-ours", "_id": doc_id}} and first["_id"] == doc_id
    assert first["_index"] == "bench-p3n-ours" and source == first["_source"]


def test_p8_is_a_row_and_a_rerun_that_sends_anything_to_the_model_is_an_error():
    from bench.p8_incremental import check

    assert run.parse_args(["--quick", "--only", "p8"]).only == ["P8"]
    assert run.parse_args(["--quick"]).p8_docs == 5_000
    assert run.parse_args(["--only", "P8"]).p8_docs == 100_000

    def result(sent: int, created: int, unchanged: int) -> dict:
        return {"state": "success", "tasks": {}, "report": {
            "sagemaker_records": sent, "totals": {"created": created, "unchanged": unchanged}}}

    check(10, {"full": result(10, 10, 0), "rerun": result(0, 0, 10)})
    with pytest.raises(RuntimeError, match="sent 3 records to the model, not 0"):
        check(10, {"full": result(10, 10, 0), "rerun": result(3, 0, 7)})
    with pytest.raises(RuntimeError, match="the rerun run ended not run"):
        check(10, {"full": result(10, 10, 0)})
    with pytest.raises(RuntimeError, match="created 9, not 10"):
        check(10, {"full": result(10, 9, 0), "rerun": result(0, 0, 10)})


def test_p7_is_a_row_with_its_size_option():
    assert run.parse_args(["--only", "p7"]).only == ["P7"]
    assert run.parse_args([]).p7_docs == 1_000_000
    assert run.parse_args(["--quick"]).p7_docs == 5_000
    assert run.parse_args(["--only", "P7", "--p7-docs", "1234"]).p7_docs == 1234


@pytest.mark.devstack
@pytest.mark.airflow
def test_p7_smoke_real_airflow_run_indexes_every_record_and_samples_every_task_kind():
    """P7 at a few thousand documents: a real Airflow (scheduler, LocalExecutor, triggerer)
    runs the DAG on the devstack; every input record is indexed and every task kind that ran
    has its peak runner RSS sampled."""
    from bench import p7_airflow

    docs = 3000
    result = p7_airflow.measure(docs)
    assert "success" in result["state"], result["not_success"]
    assert result["indexed"] == docs
    assert result["report"]["totals"]["records_in"] == docs
    assert result["report"]["totals"]["created"] == docs
    assert result["files"] == p7_airflow.FILES and result["groups"] == 4
    assert result["stages"]["stage_group"]["n"] == 4
    assert result["stages"]["index_shard"]["n"] == p7_airflow.SHARDS
    kinds = set(result["stages"])
    assert {"plan", "list_input", "stage_group", "stage_shard", "stage", "ensure_model",
            "batch_predict", "check_outputs", "prepare_index", "index_shard"} <= kinds
    for kind in kinds:
        assert result["memory"][kind]["rss_mb"] > 0, (kind, result["memory"])
        assert result["memory"][kind]["uss_mb"] > 0, (kind, result["memory"])
    assert "unmatched" not in result["memory"]
    assert result["wall_s"] > 0 and result["read_s"] > 0 and result["index_s"] > 0
    assert result["ratio"] == pytest.approx(result["wall_s"] / (result["read_s"] + result["index_s"]))
    assert not result["left_alive"]
    row = p7_airflow.row(result)
    text = render([row])
    assert text.splitlines()[2].startswith("P7 ") and "peak RSS" in text
