"""Input formats and staging's progress line, without S3: local JSONL, gzip and CSV
sources, format detection and the progress/ETA text (the S3 half is tests/integration/test_staging.py)."""

from __future__ import annotations

import gzip
from pathlib import Path

import orjson
import pytest

from batchvec.ingest import sources
from batchvec.ingest.records import RecordSpec, Rejected
from batchvec.ingest.sources import InputError, detect_format, open_input
from tests.helpers.staging_helpers import GOOD, MIXED, SPEC, items, jsonl


def test_detect_format() -> None:
    assert detect_format("a/b.jsonl") == ("jsonl", False)
    assert detect_format("a/b.JSONL.GZ") == ("jsonl", True)
    assert detect_format("b.ndjson.gz") == ("jsonl", True)
    assert detect_format("b.csv.gz") == ("csv", True)
    assert detect_format("b.parquet") == ("parquet", False)
    assert detect_format("b.txt", "jsonl") == ("jsonl", False)
    assert detect_format("b.txt", "jsonl.gz") == ("jsonl", True)
    for name, fmt in [("b.txt", "auto"), ("b.parquet.gz", "auto"), ("b.jsonl", "xml")]:
        with pytest.raises(InputError):
            detect_format(name, fmt)


def test_local_jsonl_lines(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_bytes(b"".join(MIXED))
    got = items(str(path))
    assert [line for _, line, _ in got] == list(range(1, len(MIXED) + 1))
    assert got[0][2].startswith(b"\xef\xbb\xbf") and got[-1][2].endswith(b"end\"}")
    assert {src for src, _, _ in got} == {str(path)}


def test_local_dir_sorted_skips_hidden(tmp_path: Path) -> None:
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "2.jsonl").write_bytes(jsonl(GOOD[2:3]))
    (tmp_path / "a.jsonl").write_bytes(jsonl(GOOD[:2]))
    (tmp_path / "_SUCCESS").write_bytes(b"")
    (tmp_path / ".a.jsonl.crc").write_bytes(b"junk")
    (tmp_path / "c.jsonl.gz").write_bytes(gzip.compress(jsonl(GOOD[3:5])))
    inp = open_input(str(tmp_path), spec=SPEC)
    assert [Path(f.name).name for f in inp.files] == ["a.jsonl", "2.jsonl", "c.jsonl.gz"]
    assert [orjson.loads(p)["id"] for _, _, p in inp] == ["d0", "d1", "d2", "d3", "d4"]
    assert inp.bytes_read == sum(f.size for f in inp.files)


def test_gzip_multi_member_and_truncated(tmp_path: Path) -> None:
    body = jsonl(GOOD)
    (tmp_path / "multi.jsonl.gz").write_bytes(gzip.compress(body[:500]) + gzip.compress(body[500:]))
    assert b"".join(p + b"\n" for _, _, p in items(str(tmp_path / "multi.jsonl.gz"))) == body
    big = jsonl([{"id": i, "text": "word " * 40} for i in range(3000)])
    packed = gzip.compress(big)
    (tmp_path / "cut.jsonl.gz").write_bytes(packed[: len(packed) // 2])
    got = items(str(tmp_path / "cut.jsonl.gz"))
    *lines, last = got
    assert lines and all(isinstance(p, bytes) for _, _, p in lines)
    assert all(orjson.loads(p) for _, _, p in lines)  # complete lines only
    assert isinstance(last[2], Rejected) and last[2].reason == "truncated_gzip"
    assert last[1] == len(lines) + 1
    # says how far it got; the excerpt is the cut-off line
    assert f"lines 1-{len(lines)} were read" in last[2].detail
    assert last[2].raw and orjson.loads(big.splitlines()[len(lines)]) and \
        big.splitlines()[len(lines)].decode().startswith(last[2].raw)
    (tmp_path / "bad.jsonl.gz").write_bytes(packed[:100] + b"\x00garbage" * 50)
    assert items(str(tmp_path / "bad.jsonl.gz"))[-1][2].reason == "corrupt_gzip"


def test_overlong_line_is_skipped(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(sources, "MAX_LINE_BYTES", 100)
    path = tmp_path / "long.jsonl"
    path.write_bytes(jsonl(GOOD[:1]) + b'{"id": "long", "text": "' + b"z" * 1000 + b'"}\n'
                     + jsonl(GOOD[1:3]))
    got = list(open_input(str(path), chunk_size=64))
    assert [line for _, line, _ in got] == [1, 2, 3, 4]
    assert got[1][2].reason == "line_too_long" and got[1][2].raw.startswith('{"id": "long"')
    assert [orjson.loads(got[i][2])["id"] for i in (0, 2, 3)] == ["d0", "d1", "d2"]


def test_progress_line_gives_records_mb_rate_and_eta():
    from batchvec.ingest.staging import format_eta, progress_line

    p = {"records": 1_234_567, "accepted": 1_234_000, "rejected": 567, "mb": 420.5,
         "elapsed_s": 10.0, "mb_per_s": 42.1, "records_per_s": 123_456}
    assert progress_line(p, 3_400_000_000) == (
        "1,234,567 records (567 rejected), 420.5/3400.0 MB (12%), 123,456 records/s, "
        "42.1 MB/s, ETA 1m11s")
    assert progress_line({**p, "mb_per_s": 0.0}, None).endswith("0.0 MB/s")
    assert [format_eta(s) for s in (0, 59.6, 185, 7620)] == ["0s", "1m00s", "3m05s", "2h07m"]


def test_csv_metadata_types_are_inferred_per_file_and_a_misfit_stays_text(tmp_path):
    (tmp_path / "m.csv").write_text("id,text,n,x,ok,zip\n1,a,3,1.5,true,01234\n2,b,4,2,false,9\n")
    spec = RecordSpec("id", "text", ("n", "x", "ok", "zip"))
    rows = [p for _, _, p in open_input(str(tmp_path / "m.csv"), spec=spec)]
    assert rows[0] == {"id": "1", "text": "a", "n": 3, "x": 1.5, "ok": True, "zip": "01234"}
    assert rows[1]["x"] == 2.0 and rows[1]["ok"] is False and rows[1]["zip"] == "9"


def test_an_input_of_blank_lines_only_says_so():
    from airflow.sdk.exceptions import AirflowFailException

    from batchvec.plan import run_plan
    from batchvec.tasks import staging

    model = {"sagemaker_model_name": "minilm-embedder", "sagemaker_endpoint_name": "minilm-rt"}
    p = run_plan.resolve_plan(model, dag_id="d", run_id="r", ds="2026-04-06", region="us-east-1")
    manifest = {"shards": [], "records_in": 0, "rejected": {}, "rejected_keys": [],
                "sources": [{"name": "a.jsonl"}, {"name": "b.jsonl"}]}
    with pytest.raises(AirflowFailException, match="no records in s3://batchvec/input/"
                       r"ds=2026-04-06/: its 2 file\(s\) are empty or hold only blank lines"):
        staging._require_records(p, manifest)
