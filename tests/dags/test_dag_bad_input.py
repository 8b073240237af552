"""Bad input through the real DAG on the devstack (dag.test, SeaweedFS, the SageMaker stand-in and
the real OpenSearch node): every kind of bad record gets its own reason in the report and in the
rejected file, the good records around them are indexed intact, duplicate ids are counted and
the last one wins, and runs that cannot work fail early with a clear message."""


from __future__ import annotations

import gzip
import io
import json
from collections import Counter
from datetime import UTC, datetime

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batchvec.ingest.records import DEFAULT_MAX_TEXT_BYTES
from batchvec.plan import naming
from tests.helpers.dag_helpers import load_dag, os_get, reports, run, transform_jobs

pytestmark = [pytest.mark.devstack, pytest.mark.airflow]


BLANK = "blank"  # not a record at all


@pytest.fixture
def task_errors(monkeypatch):
    """task_id -> the exception of each failed try (dag.test only logs them)."""
    from airflow.sdk.execution_time import supervisor

    errors: dict[str, list[BaseException]] = {}
    real = supervisor.run_task_in_process

    def spy(ti, task):
        result = real(ti=ti, task=task)
        if result.error is not None:
            errors.setdefault(ti.task_id, []).append(result.error)
        return result

    monkeypatch.setattr(supervisor, "run_task_in_process", spy)
    return errors


def states(dagrun) -> dict[str, str]:
    return {ti.task_id: ti.state for ti in dagrun.get_task_instances()}


def parquet_bytes(columns: dict) -> bytes:
    sink = io.BytesIO()
    pq.write_table(pa.table(columns), sink)
    return sink.getvalue()


# One JSONL file with CRLF endings and a BOM: each line and what it must become (a reject
# reason, BLANK, or None for a good record).
JSONL_LINES: list[tuple[bytes, str | None]] = [
    (b'\xef\xbb\xbf{"id": "g-bom", "text": "a file that starts with a BOM"}', None),
    (b'{"id": "g-crlf", "text": "a line ending in CRLF"}', None),
    (b"", BLANK),
    (b"   \t", BLANK),
    (b'{"id": "dup", "text": "dup version 1"}', None),
    (b"{this is not json", "invalid_json"),
    (b'["an", "array"]', "not_an_object"),
    (b'"just a string"', "not_an_object"),
    (b'{"text": "no id at all"}', "missing_id"),
    (b'{"id": "no-text"}', "missing_text"),
    (b'{"id": "num-text", "text": 42}', "bad_text_type"),
    (b'{"id": "empty", "text": ""}', "empty_text"),
    (b'{"id": "blank", "text": " \\t\\n "}', "empty_text"),
    (b'{"id": "huge", "text": "' + b"x" * (DEFAULT_MAX_TEXT_BYTES + 1) + b'"}', "text_too_long"),
    (b'{"id": true, "text": "boolean id"}', "bad_id_type"),
    (b'{"id": 1.5, "text": "float id"}', "bad_id_type"),
    (b'{"id": {"a": 1}, "text": "object id"}', "bad_id_type"),
    (b'{"id": "dup", "text": "dup version 2"}', None),
    (b'{"id": "latin1", "text": "caf\xe9 au lait"}', "invalid_utf8"),
    (b"", BLANK),
    (b'{"id": 7, "text": "an integer id"}', None),
]


DUP_LAST = "dup version 3, the last"


def bad_input() -> dict[str, bytes]:
    """The files of one input prefix (read in name order) holding every bad kind."""
    gz_lines = b"".join(b'{"id": "gz-%d", "text": "gzip line %d"}\n' % (i, i) for i in range(300))
    packed = gzip.compress(gz_lines)
    return {
        "a.jsonl": b"\r\n".join(line for line, _ in JSONL_LINES) + b"\r\n",
        "b.jsonl.gz": packed[: len(packed) // 2],  # truncated mid-stream
        "c.parquet": parquet_bytes({"id": ["p1", "p2", "p3"], "body": ["x", "y", "z"]}),
        "d.parquet": parquet_bytes({"id": ["dup", "pq-1"], "text": [DUP_LAST, "a parquet row"]}),
    }


def put_files(devstack, prefix: str, files: dict[str, bytes]) -> str:
    s3 = devstack.s3.client()
    for name, body in files.items():
        s3.put_object(Bucket=devstack.s3.bucket, Key=f"{prefix}/{name}", Body=body)
    return f"s3://{devstack.s3.bucket}/{prefix}/"


def read_jsonl_under(devstack, uri_prefix: str) -> list[dict]:
    s3, bucket = devstack.s3.client(), devstack.s3.bucket
    rows = []
    prefix = uri_prefix.removeprefix(f"s3://{bucket}/")
    for obj in s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", []):
        body = s3.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
        rows += [json.loads(line) for line in body.splitlines() if line]
    return rows


def doc(devstack, index: str, doc_id: str) -> dict | None:
    found = os_get(devstack, f"/{index}/_search", {"query": {"ids": {"values": [doc_id]}}})
    hits = found["hits"]["hits"]
    return hits[0]["_source"] if hits else None


def test_every_bad_kind_has_its_reason_and_the_good_records_are_indexed(dag, airflow_env,
                                                                       task_errors):
    devstack = airflow_env
    uri = put_files(devstack, "bad-input/mix", bad_input())
    dagrun = run(dag, datetime(2026, 4, 1, tzinfo=UTC),
                 {"input_uri": uri, "index_name": "bad-mix", "max_reject_ratio": 0.05})

    # Everything was indexed; only the report fails the run, on the reject ratio.
    assert states(dagrun)["index_shard"] == "success" and states(dagrun)["report"] == "failed"
    assert dagrun.state == "failed"
    (rep,) = reports(devstack, "bad-mix")  # written before the report task raised
    t = rep["totals"]
    assert rep["balanced"] and t["failed_total"] == 0
    assert rep["reject_ratio"] == t["rejected_total"] / t["records_in"] > 0.05
    (error,) = task_errors["report"]  # final: no retry just to say it again
    message = str(error)
    assert message.startswith(f"rejected ratio {rep['reject_ratio']:.4f} exceeds max_reject_ratio "
                              f"0.05 ({t['rejected_total']} of {t['records_in']}); ")
    assert "missing_id: no 'id' field" in message  # the first detail of each reason

    rejected = read_jsonl_under(devstack, rep["extra"]["rejected_uri"])
    by_source: dict[str, list[dict]] = {}
    for row in rejected:
        assert row["detail"] and row["raw"] and not row["raw"].endswith("\r"), row
        by_source.setdefault(row["source"].rsplit("/", 1)[1], []).append(row)
    # JSONL: each bad line at its own line number with its reason; blank lines are nothing
    want = [(n, why) for n, (_, why) in enumerate(JSONL_LINES, 1) if why not in (None, BLANK)]
    assert [(r["line"], r["reason"]) for r in by_source["a.jsonl"]] == want
    for row in by_source["a.jsonl"]:
        raw = JSONL_LINES[row["line"] - 1][0]
        assert raw.decode("utf-8", "replace").startswith(row["raw"]), row
    # the truncated gzip: one rejection after the last whole line, which were all staged
    [cut] = by_source["b.jsonl.gz"]
    assert cut["reason"] == "truncated_gzip" and 1 < cut["line"] < 300
    assert f"lines 1-{cut['line'] - 1} were read" in cut["detail"]
    # the Parquet file without the text column: all its rows, the columns it does have
    [nocol] = by_source["c.parquet"]
    assert (nocol["reason"], nocol["line"], nocol["count"]) == ("missing_column", 0, 3)
    assert "no column 'text'" in nocol["detail"] and nocol["raw"] == "columns: id, body"
    assert "d.parquet" not in by_source

    # The report's totals by reason are exactly the rejected file's, and every record counts.
    reasons = Counter()
    for row in rejected:
        reasons[row["reason"]] += row.get("count", 1)
    assert t["rejected"] == dict(reasons)
    good_jsonl = [line for line, why in JSONL_LINES if why is None]
    assert t["records_in"] == (sum(why != BLANK for _, why in JSONL_LINES)
                               + cut["line"] + 3 + 2)
    indexed = len(good_jsonl) + (cut["line"] - 1) + 2
    assert t["created"] + t["updated"] == indexed

    # Duplicate ids: counted, and the last one (from a later file) wins.
    versions = sum(b'"id": "dup"' in line for line in good_jsonl) + 1
    assert t["duplicates"] == versions - 1 == 2
    assert t["updated"] >= t["duplicates"]
    assert doc(devstack, "bad-mix", "dup")["text"] == DUP_LAST
    assert os_get(devstack, "/bad-mix/_count")["count"] == indexed - t["duplicates"]

    # Good records next to bad ones keep exactly their text: no BOM, no "\r".
    assert doc(devstack, "bad-mix", "g-bom")["text"] == "a file that starts with a BOM"
    assert doc(devstack, "bad-mix", "g-crlf")["text"] == "a line ending in CRLF"
    assert doc(devstack, "bad-mix", "7")["text"] == "an integer id"
    assert doc(devstack, "bad-mix", f"gz-{cut['line'] - 2}")["text"] == f"gzip line {cut['line'] - 2}"
    assert doc(devstack, "bad-mix", "pq-1")["text"] == "a parquet row"
    for bad in ("no-text", "num-text", "empty", "blank", "huge", "latin1", "p1"):
        assert doc(devstack, "bad-mix", bad) is None, bad


def test_an_input_prefix_with_no_objects_fails_at_once(dag, airflow_env, task_errors):
    devstack = airflow_env
    jobs = len(transform_jobs(devstack))
    prefix = f"s3://{devstack.s3.bucket}/bad-input/nothing-here/"
    dagrun = run(dag, datetime(2026, 4, 2, tzinfo=UTC), {"input_uri": prefix, "index_name": "bad-empty"})
    assert dagrun.state == "failed"
    [error] = task_errors["list_input"]  # one try: a retry cannot make objects appear
    assert str(error) == f"cannot read input_uri: no input objects under {prefix}"
    assert states(dagrun)["batch_predict"] == "upstream_failed"
    assert len(transform_jobs(devstack)) == jobs
    [why] = task_errors["report"]
    assert f"nothing was staged from {prefix}" in str(why)
    assert reports(devstack, "bad-empty") == []


def test_an_input_whose_every_record_is_rejected_fails_with_its_report(dag, airflow_env,
                                                                      task_errors):
    devstack = airflow_env
    jobs = len(transform_jobs(devstack))
    uri = put_files(devstack, "bad-input/all-bad", {
        "x.jsonl": b'{"id": 1}\n\nnot json\n{"id": 2, "text": " "}\n'})
    dagrun = run(dag, datetime(2026, 4, 3, tzinfo=UTC), {"input_uri": uri, "index_name": "bad-all"})
    assert dagrun.state == "failed"
    assert states(dagrun)["batch_predict"] == "upstream_failed"
    assert len(transform_jobs(devstack)) == jobs  # no job for an empty input
    [error] = task_errors["stage"]
    (rep,) = reports(devstack, "bad-all")
    rejected = read_jsonl_under(devstack, rep["extra"]["rejected_uri"])
    assert [(r["line"], r["reason"]) for r in rejected] == [
        (1, "missing_text"), (3, "invalid_json"), (4, "empty_text")]
    assert str(error).startswith(
        f"every record in {uri} was rejected (3 of 3: empty_text=1, invalid_json=1, "
        "missing_text=1); empty_text: 'text' is empty or whitespace; invalid_json: ")
    assert ("; missing_text: no 'text' field; each one with its reason in "
            + rep["extra"]["rejected_uri"]) in str(error)
    assert rep["totals"]["records_in"] == 3 and rep["reject_ratio"] == 1.0 and rep["balanced"]
    assert "rejected ratio 1.0000 exceeds max_reject_ratio 0.01" in str(task_errors["report"][-1])


def test_records_keyed_by_another_field_name_say_which_param_to_set(dag, airflow_env, task_errors):
    devstack = airflow_env
    uri = put_files(devstack, "bad-input/underscore-id", {
        "x.jsonl": b"".join(b'{"_id": "u%d", "text": "a record keyed by _id"}\n' % i
                            for i in range(3))})
    dagrun = run(dag, datetime(2026, 4, 6, tzinfo=UTC), {"input_uri": uri, "index_name": "bad-uid"})
    assert dagrun.state == "failed"
    [error] = task_errors["stage"]
    assert ("(3 of 3: missing_id=3); missing_id: no 'id' field, but the record has '_id': set "
            "id_field to '_id' if that is it") in str(error)
    (rep,) = reports(devstack, "bad-uid")
    rejected = read_jsonl_under(devstack, rep["extra"]["rejected_uri"])
    assert {r["detail"] for r in rejected} == {
        "no 'id' field, but the record has '_id': set id_field to '_id' if that is it"}


def test_params_that_make_no_sense_fail_the_plan_with_one_message(dag, airflow_env, task_errors):
    from airflow.sdk.exceptions import ParamValidationError

    devstack = airflow_env
    bad = {"input_uri": "s3://Not_A_Bucket/in/", "index_name": "_Bad*Index", "bucket": "x",
           "id_field": "body", "text_field": "body", "metadata_fields": ["embedding"]}
    when = datetime(2026, 4, 4, tzinfo=UTC)
    dagrun = run(dag, when, bad)
    assert dagrun.state == "failed"
    [error] = task_errors["plan"]  # one try: params do not change on retry
    lines = str(error).splitlines()
    assert lines[0] == "invalid params:"
    assert sorted(line.strip().split(":")[0] for line in lines[1:]) == sorted(
        ["input_uri", "index_name", "bucket", "id_field/text_field", "metadata_fields"])
    after = states(dagrun)
    assert after["list_input"] == after["stage"] == after["ensure_model"] == \
        after["batch_predict"] == "upstream_failed"
    assert after["restore_index"] == "success"  # nothing to restore, and no crash saying so
    assert "no report: the plan task failed" in str(task_errors["report"][0])
    assert "restore_index" not in task_errors
    key = naming.run_key("batch_embeddings", dagrun.run_id)
    staged = devstack.s3.client().list_objects_v2(Bucket=devstack.s3.bucket, Prefix=f"runs/{key}/")
    assert staged.get("KeyCount", 0) == 0
    # Out-of-range numbers never get that far: the trigger form's schema refuses them.
    for conf in ({"shards": -1}, {"instance_count": 0}, {"max_reject_ratio": 1.5}):
        with pytest.raises(ParamValidationError, match=next(iter(conf))):
            run(load_dag(), datetime(2026, 4, 5, tzinfo=UTC), conf)

