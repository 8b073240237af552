"""s3io, sources and staging against a real S3 (SeaweedFS from the shared ``s3_stack``)."""


from __future__ import annotations

import gzip
import io
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batchvec.hooks.s3io import (
    MIN_PART_SIZE,
    S3LineWriter,
    S3RangeFile,
    get_json,
    iter_object_chunks,
    list_keys,
    put_json,
)
from batchvec.ingest.records import RecordSpec, Rejected
from batchvec.ingest.sources import InputError, open_input
from batchvec.ingest.staging import Manifest, shard_name, shard_of, stage
from tests.helpers.staging_helpers import GOOD, MIXED, MIXED_REASONS, SPEC, items, jsonl

pytestmark = pytest.mark.devstack


@pytest.fixture
def s3(s3_stack):
    return s3_stack.client()


def test_line_writer_small_object_is_one_put(s3, fresh_bucket) -> None:
    with S3LineWriter(s3, fresh_bucket, "a/small.jsonl") as w:
        w.write(b"one\n")
        w.write(b"two\n")
    assert w.parts == 0 and w.bytes_written == 8
    assert s3.get_object(Bucket=fresh_bucket, Key="a/small.jsonl")["Body"].read() == b"one\ntwo\n"


@pytest.mark.parametrize("threads", [0, 2])
def test_line_writer_multipart(s3, fresh_bucket, threads: int) -> None:
    lines = [b"%06d %s\n" % (i, b"x" * (1 << 16)) for i in range(180)]  # ~11.3 MiB
    pool = ThreadPoolExecutor(threads) if threads else None
    with S3LineWriter(s3, fresh_bucket, "big.jsonl", part_size=MIN_PART_SIZE, executor=pool) as w:
        for line in lines:
            w.write(line)
    assert w.parts == 3
    assert "-" in s3.head_object(Bucket=fresh_bucket, Key="big.jsonl")["ETag"]  # multipart
    body = b"".join(iter_object_chunks(s3, fresh_bucket, "big.jsonl", chunk_size=777_777))
    assert body == b"".join(lines)
    assert len(next(iter_object_chunks(s3, fresh_bucket, "big.jsonl", 10_000))) == 10_000
    with pytest.raises(ValueError, match="part_size"):
        S3LineWriter(s3, fresh_bucket, "k", part_size=1000)


def test_line_writer_aborts_on_error(s3, fresh_bucket) -> None:
    with pytest.raises(RuntimeError, match="boom"):
        with S3LineWriter(s3, fresh_bucket, "broken.jsonl", part_size=MIN_PART_SIZE) as w:
            w.write(b"x" * (MIN_PART_SIZE + 10))
            assert w.parts == 1
            raise RuntimeError("boom")
    assert list_keys(s3, fresh_bucket, "") == []
    assert not s3.list_multipart_uploads(Bucket=fresh_bucket).get("Uploads")
    with pytest.raises(ValueError, match="closed"):
        w.write(b"more")


def test_list_keys_paginates_and_json_roundtrip(s3, fresh_bucket) -> None:
    for key in ["p/c", "p/a", "p/b/d", "q/x", "p/e"]:
        s3.put_object(Bucket=fresh_bucket, Key=key, Body=b"1")
    assert list_keys(s3, fresh_bucket, "p/", page_size=2) == ["p/a", "p/b/d", "p/c", "p/e"]
    put_json(s3, fresh_bucket, "doc.json", {"a": [1, 2], "b": "é"})
    assert get_json(s3, fresh_bucket, "doc.json") == {"a": [1, 2], "b": "é"}


def test_range_file(s3, fresh_bucket) -> None:
    data = bytes(range(256)) * 10
    s3.put_object(Bucket=fresh_bucket, Key="r.bin", Body=data)
    with S3RangeFile(s3, fresh_bucket, "r.bin") as f:
        assert f.size == len(data)
        assert f.read(10) == data[:10]
        f.seek(-5, io.SEEK_END)
        assert f.read() == data[-5:] and f.read(3) == b""
        f.seek(100)
        assert f.read(1000) == data[100:1100] and f.tell() == 1100


def write_parquet(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink, row_group_size=7)
    return sink.getvalue()


def test_parquet_local_and_s3(tmp_path: Path, s3, fresh_bucket) -> None:
    table = pa.table({"id": list(range(20)), "text": [f"t{i}" if i % 5 else None for i in range(20)],
                      "lang": ["en"] * 20, "unused": [1.5] * 20})
    (tmp_path / "x.parquet").write_bytes(write_parquet(table))
    s3.put_object(Bucket=fresh_bucket, Key="pq/x.parquet", Body=write_parquet(table))
    for got in (items(str(tmp_path / "x.parquet")), items(f"s3://{fresh_bucket}/pq/", s3)):
        assert len(got) == 20 and got[1][1:] == (2, {"id": 1, "text": "t1", "lang": "en"})
        assert got[0][2]["text"] is None
    no_text = pa.table({"id": list(range(13)), "body": ["b"] * 13})
    (tmp_path / "y.parquet").write_bytes(write_parquet(no_text))
    [(_, line, rej)] = items(str(tmp_path / "y.parquet"))
    assert (line, rej.reason, rej.count) == (0, "missing_column", 13)
    assert "no column 'text'" in rej.detail and rej.raw == "columns: id, body"  # what it has
    (tmp_path / "z.parquet").write_bytes(b"PAR1 not really")
    assert items(str(tmp_path / "z.parquet"))[0][2].reason == "unreadable_file"


def test_csv(tmp_path: Path, s3, fresh_bucket) -> None:
    body = (b"id,text,lang,other\n007,hello,en,x\n8,\"multi\nline, quoted\",,y\n"
            b"9,,de,z\n10,\xff\xfe,en,w\n")
    (tmp_path / "a.csv").write_bytes(body)
    s3.put_object(Bucket=fresh_bucket, Key="c/a.csv.gz", Body=gzip.compress(body))
    for got in (items(str(tmp_path / "a.csv")), items(f"s3://{fresh_bucket}/c/a.csv.gz", s3)):
        rows = [p for _, _, p in got]
        assert rows[0] == {"id": "007", "text": "hello", "lang": "en"}
        assert rows[1] == {"id": "8", "text": "multi\nline, quoted", "lang": ""}
        assert rows[2]["text"] == ""
        assert isinstance(rows[3], Rejected) and rows[3].reason == "invalid_utf8"
        assert [line for _, line, _ in got] == [1, 2, 3, 4]
    (tmp_path / "b.csv").write_bytes(b"id,body\n1,a\n2,b\n3,c\n")
    [(_, _, rej)] = items(str(tmp_path / "b.csv"))
    assert (rej.reason, rej.count, rej.raw) == ("missing_column", 3, "columns: id, body")


def test_s3_prefix_object_and_errors(s3, fresh_bucket, tmp_path: Path) -> None:
    b = fresh_bucket
    s3.put_object(Bucket=b, Key="in/day=2/p.jsonl", Body=jsonl(GOOD[2:4]))
    s3.put_object(Bucket=b, Key="in/day=1/p.jsonl", Body=jsonl(GOOD[:2]))
    s3.put_object(Bucket=b, Key="in/day=1/_SUCCESS", Body=b"")
    s3.put_object(Bucket=b, Key="in-other/p.jsonl", Body=jsonl(GOOD[9:10]))
    ids = lambda got: [orjson.loads(p)["id"] for _, _, p in got]  # noqa: E731
    assert ids(items(f"s3://{b}/in", s3)) == ["d0", "d1", "d2", "d3"]  # directory semantics
    assert ids(items(f"s3://{b}/in/", s3)) == ["d0", "d1", "d2", "d3"]
    assert ids(items(f"s3://{b}/in/day=2/p.jsonl", s3)) == ["d2", "d3"]
    assert ids(items(f"s3://{b}/in-o", s3)) == ["d9"]  # a plain key prefix works too
    with pytest.raises(InputError, match=f"no input objects under s3://{b}/nothing"):
        open_input(f"s3://{b}/nothing/", s3_client=s3)
    with pytest.raises(InputError, match="bucket name"):
        open_input("s3://Bad_Bucket/x", s3_client=s3)
    with pytest.raises(InputError, match="does not exist"):
        open_input(str(tmp_path / "missing"))
    with pytest.raises(InputError, match="no input objects"):
        open_input(str(tmp_path))


def read_jsonl(s3, bucket: str, key: str) -> list[dict]:
    body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    return [orjson.loads(line) for line in body.splitlines()]


def run_stage(s3, bucket: str, source, **kw) -> Manifest:
    opts = {"s3_client": s3, "bucket": bucket, "prefix": "runs/k1", "shards": 4,
            "id_field": "id", "text_field": "text", "metadata_fields": ["lang"]}
    return stage(source, **{**opts, **kw})


def test_stage_jsonl_accounting_and_layout(s3, fresh_bucket, tmp_path: Path) -> None:
    (tmp_path / "a.jsonl").write_bytes(b"".join(MIXED))
    (tmp_path / "b.jsonl.gz").write_bytes(gzip.compress(jsonl(GOOD)))
    seen: list[dict] = []
    m = run_stage(s3, fresh_bucket, open_input(str(tmp_path), spec=SPEC), progress=seen.append,
                  progress_every_s=0)
    assert m.accepted == len(GOOD) + 3  # bom, crlf, last
    assert m.rejected == MIXED_REASONS
    assert m.records_in == m.accepted + m.rejected_total == len(GOOD) + len(MIXED) - 2
    assert [s["records"] for s in m.sources] == [len(MIXED) - 2, len(GOOD)]
    assert m.sources[1]["gzip"] and m.bytes_in == sum(s["bytes"] for s in m.sources)
    assert seen and seen[-1]["records"] == m.records_in
    # shards: only non-empty ones, counts and sizes match the objects
    keys = list_keys(s3, fresh_bucket, "runs/k1/")
    assert set(keys) == {s["key"] for s in m.shards} | {"runs/k1/manifest.json",
                                                       "runs/k1/rejected/rejected.jsonl"}
    staged = {}
    for shard in m.shards:
        rows = read_jsonl(s3, fresh_bucket, shard["key"])
        assert len(rows) == shard["records"]
        assert shard["bytes"] == s3.head_object(Bucket=fresh_bucket, Key=shard["key"])["ContentLength"]
        for row in rows:
            assert shard_name(shard_of(row["_id"], 4)) == shard["name"]
            staged[row["_id"]] = row
    assert staged["bom"] == {"_id": "bom", "text": "first line with a BOM"}
    assert staged["1"]["text"] == "crlf line" and staged["d3"]["lang"] == "en"
    rejected = read_jsonl(s3, fresh_bucket, m.rejected_key)
    assert Counter(r["reason"] for r in rejected) == MIXED_REASONS
    bad_json = next(r for r in rejected if r["reason"] == "invalid_json")
    assert bad_json == {"source": str(tmp_path / "a.jsonl"), "line": 5, "reason": "invalid_json",
                        "detail": bad_json["detail"], "raw": "{not json}"}
    assert Manifest.from_dict(get_json(s3, fresh_bucket, "runs/k1/manifest.json")) == m
    assert m.input_uri == f"s3://{fresh_bucket}/runs/k1/input/"


def test_stage_duplicates_same_shard_in_order(s3, fresh_bucket) -> None:
    rows = [{"id": f"k{i % 7}", "text": f"version {i}"} for i in range(70)]
    src = [("mem", n, orjson.dumps(r)) for n, r in enumerate(rows, 1)]
    m = run_stage(s3, fresh_bucket, src, shards=3)
    assert m.accepted == 70 and m.rejected == {} and m.rejected_key is None
    assert m.bytes_in == sum(len(p) + 1 for _, _, p in src)
    for shard in m.shards:
        got = read_jsonl(s3, fresh_bucket, shard["key"])
        for doc_id in {r["_id"] for r in got}:
            versions = [r["text"] for r in got if r["_id"] == doc_id]
            assert len(versions) == 10 and versions == sorted(versions, key=lambda t: int(t[8:]))
    # the same ids go to the same shards on every run
    again = run_stage(s3, fresh_bucket, src, shards=3, prefix="runs/k2")
    assert [s["records"] for s in again.shards] == [s["records"] for s in m.shards]


def test_stage_parquet_csv_s3_and_rerun(s3, fresh_bucket) -> None:
    b = fresh_bucket
    table = pa.table({"id": list(range(400)), "text": ["some text " * 10] * 399 + [""],
                      "lang": ["en"] * 400})
    s3.put_object(Bucket=b, Key="src/a.parquet", Body=write_parquet(table))
    s3.put_object(Bucket=b, Key="src/b.parquet",
                  Body=write_parquet(pa.table({"id": [1, 2], "body": ["x", "y"]})))
    s3.put_object(Bucket=b, Key="src/c.csv", Body=b"id,text\nc1,hello\nc2,\n")
    source = open_input(f"s3://{b}/src/", s3_client=s3, spec=SPEC)
    m = run_stage(s3, b, source, shards=2)
    assert m.accepted == 399 + 1
    assert m.rejected == {"empty_text": 2, "missing_column": 2}
    assert m.records_in == 404 == m.accepted + m.rejected_total
    assert sum(len(read_jsonl(s3, b, s["key"])) for s in m.shards) == 400
    assert m.bytes_in == sum(s["bytes"] for s in m.sources)
    assert [s["records"] for s in m.sources] == [399 + 1, 2, 2]
    # a retry with fewer shards leaves no stale shard behind
    m2 = run_stage(s3, b, [("mem", 1, b'{"id": 1, "text": "only"}')], shards=1)
    assert list_keys(s3, b, "runs/k1/") == ["runs/k1/input/part-00000.jsonl",
                                            "runs/k1/manifest.json"]
    assert m2.records_in == 1


def big_source(n: int, fail: bool = False):
    text = b"y" * 150
    for i in range(n):
        yield "mem", i + 1, b'{"id": %d, "text": "%s"}' % (i, text)
    if fail:
        raise OSError("source went away")


def test_stage_multipart_shards(s3, fresh_bucket) -> None:
    m = run_stage(s3, fresh_bucket, big_source(75_000), shards=1, part_size=MIN_PART_SIZE)
    [shard] = m.shards
    assert shard["records"] == 75_000 and shard["bytes"] > 2 * MIN_PART_SIZE
    head = s3.head_object(Bucket=fresh_bucket, Key=shard["key"])
    assert head["ContentLength"] == shard["bytes"] and "-" in head["ETag"]


def test_stage_failure_leaves_no_manifest(s3, fresh_bucket) -> None:
    put_json(s3, fresh_bucket, "runs/k1/manifest.json", {"stale": True})
    with pytest.raises(OSError, match="went away"):
        run_stage(s3, fresh_bucket, big_source(40_000, fail=True), shards=1,
                  part_size=MIN_PART_SIZE)
    assert list_keys(s3, fresh_bucket, "runs/k1/") == []
    assert not s3.list_multipart_uploads(Bucket=fresh_bucket).get("Uploads")


def test_stage_param_errors(s3, fresh_bucket) -> None:
    with pytest.raises(ValueError, match="shards"):
        run_stage(s3, fresh_bucket, [], shards=0)
    with pytest.raises(ValueError, match="reserved"):
        run_stage(s3, fresh_bucket, [], metadata_fields=["SageMakerOutput"])
    with pytest.raises(ValueError, match="part_size"):
        run_stage(s3, fresh_bucket, [], part_size=1 << 20)


OWN = RecordSpec("doc_id", "body", ("lang", "year"))


def own_columns_files(tmp_path: Path) -> Path:
    pq.write_table(pa.table({"doc_id": ["p1", "p2"], "body": ["parquet one", "parquet two"],
                             "lang": ["en", "de"], "year": [2021, 2022]}), tmp_path / "a.parquet")
    (tmp_path / "b.csv").write_text("doc_id,body,lang,year\n007,csv one,fr,2023\nc2,csv two,en,\n")
    return tmp_path


def test_parquet_and_csv_honour_the_field_params_and_keep_metadata_types(s3, fresh_bucket, tmp_path):
    source = open_input(str(own_columns_files(tmp_path)), spec=OWN)
    manifest = stage(source, s3_client=s3, bucket=fresh_bucket, prefix="run", shards=1, spec=OWN)
    assert (manifest.records_in, manifest.accepted, manifest.rejected) == (4, 4, {})
    body = s3.get_object(Bucket=fresh_bucket, Key=manifest.shards[0]["key"])["Body"].read()
    staged = {d["_id"]: d for d in map(orjson.loads, body.splitlines())}
    assert staged["p1"] == {"_id": "p1", "text": "parquet one", "lang": "en", "year": 2021}
    assert staged["007"] == {"_id": "007", "text": "csv one", "lang": "fr", "year": 2023}
    assert staged["c2"] == {"_id": "c2", "text": "csv two", "lang": "en"}  # empty cell: absent


def test_staging_refuses_an_input_opened_for_other_fields(s3, fresh_bucket, tmp_path):
    source = open_input(str(own_columns_files(tmp_path)))  # the default id/text spec
    with pytest.raises(ValueError, match="opened with"):
        stage(source, s3_client=s3, bucket=fresh_bucket, prefix="run", shards=1, spec=OWN)

