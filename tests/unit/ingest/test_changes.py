"""Fingerprints, versions and the per-shard diff (batchvec.ingest.changes), without servers."""

from __future__ import annotations

import random
import zlib

import orjson
import pytest

from batchvec.index.bulk_format import classify_item
from batchvec.index.bulk_writer import BulkWriter
from batchvec.ingest import changes, staging
from batchvec.ingest.records import RecordSpec, make_validator
from batchvec.outputs.convert import ActionBuilder


def staged(doc: dict, stamp, version: int = 100) -> bytes:
    doc_id, line = make_validator(RecordSpec(metadata_fields=("lang",)))(doc)
    return stamp(doc_id, line, version)


def hits_of(lines: list[bytes]) -> list[dict]:
    """What a scan of the index returns once these staged records are its documents."""
    out = []
    for line in lines:
        rec = orjson.loads(line)
        out.append({"_id": rec["_id"], "_source": {"batchvec": rec["batchvec"]}})
    return out


def test_shards_are_crc_ranges_that_cover_every_id_once():
    ids = [f"doc-{i}" for i in range(5000)]
    for shards in (1, 2, 7, 256):
        bounds = [changes.shard_crc_range(i, shards) for i in range(shards)]
        assert bounds[0][0] == 0 and bounds[-1][1] == changes.CRC_SPACE
        assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:], strict=False))
        for doc_id in ids[:500]:
            n = changes.shard_of(doc_id, shards)
            lo, hi = bounds[n]
            assert lo <= zlib.crc32(doc_id.encode()) < hi
            assert staging.shard_of(doc_id, shards) == n


def test_fingerprint_follows_text_metadata_and_model_not_version():
    stamp = changes.make_stamper("model-a", "src-1")
    base = {"id": "d1", "text": "hello", "lang": "en"}
    fp = orjson.loads(staged(base, stamp))["batchvec"]["fp"]
    assert orjson.loads(staged(base, stamp, version=999))["batchvec"]["fp"] == fp
    assert orjson.loads(staged({**base, "text": "hello!"}, stamp))["batchvec"]["fp"] != fp
    assert orjson.loads(staged({**base, "lang": "fr"}, stamp))["batchvec"]["fp"] != fp
    other = changes.make_stamper("model-b", "src-1")
    assert orjson.loads(staged(base, other))["batchvec"]["fp"] != fp
    rec = orjson.loads(staged(base, stamp, version=7))
    assert rec["batchvec"]["v"] == 7 and rec["batchvec"]["src"] == "src-1"
    assert rec["batchvec"]["crc"] == zlib.crc32(b"d1") and rec["text"] == "hello"


def test_diff_sends_only_new_and_changed_and_counts_the_rest():
    stamp = changes.make_stamper("m", "s")
    docs = [{"id": f"d{i}", "text": f"text {i}"} for i in range(100)]
    indexed = [staged(d, stamp, version=100) for d in docs]
    state = changes.load_state(hits_of(indexed))
    random.Random(3).shuffle(docs)
    run = [staged({**d, "text": d["text"] + " (edited)"} if d["id"] in ("d3", "d40") else d,
                  stamp, version=200) for d in docs]
    run.append(staged({"id": "new-1", "text": "brand new"}, stamp, version=200))
    sent: list[bytes] = []
    diff = changes.diff_lines(run, state, sent.append)
    assert sorted(orjson.loads(s)["_id"] for s in sent) == ["d3", "d40", "new-1"]
    assert (diff.records, diff.embed, diff.unchanged, diff.superseded) == (101, 3, 98, 0)
    assert diff.distinct == 101


def test_an_older_version_is_superseded_not_sent_even_when_it_differs():
    stamp = changes.make_stamper("m", "s")
    state = changes.load_state(hits_of([staged({"id": "a", "text": "new"}, stamp, 300)]))
    sent: list[bytes] = []
    diff = changes.diff_lines([staged({"id": "a", "text": "old"}, stamp, 200)], state, sent.append)
    assert (diff.embed, diff.superseded, sent) == (0, 1, [])


def test_documents_without_fingerprints_count_as_changed():
    stamp = changes.make_stamper("m", "s")
    state = changes.load_state([{"_id": "a", "_source": {}}])  # written before fingerprints
    sent: list[bytes] = []
    diff = changes.diff_lines([staged({"id": "a", "text": "t"}, stamp)], state, sent.append)
    assert diff.embed == 1 and len(sent) == 1


def test_absent_ids_are_those_the_input_no_longer_has():
    stamp = changes.make_stamper("m", "s")
    indexed = [staged({"id": f"d{i}", "text": "t"}, stamp) for i in range(10)]
    state = changes.load_state(hits_of(indexed))
    diff = changes.diff_lines(indexed[:7], state, lambda _: None)
    gone = list(changes.absent_ids(hits_of(indexed), state, diff.seen))
    assert gone == ["d7", "d8", "d9"]


def test_version_reader_takes_integers_and_iso_dates():
    read = changes.version_reader("updated")
    assert read({"updated": 17}) == 17 and read({"updated": "42"}) == 42
    assert read({"updated": "2026-12-01"}) == 1796083200
    assert read({"updated": "2026-12-01T00:00:00Z"}) == 1796083200
    assert read({}) is None and read({"updated": "soon"}) is None and read({"updated": -1}) is None


def test_a_bad_version_field_rejects_the_record_at_staging():
    from batchvec.ingest.staging import _stamping

    check = _stamping(make_validator(RecordSpec()), changes.make_stamper("m", "s"), 5,
                      changes.version_reader("v"))
    assert check({"id": "a", "text": "t", "v": "nope"}).reason == "bad_version"
    assert orjson.loads(check({"id": "a", "text": "t", "v": 9})[1])["batchvec"]["v"] == 9


def test_actions_carry_the_records_external_version():
    stamp = changes.make_stamper("m", "s")
    line = staged({"id": "d1", "text": "t"}, stamp, version=1234)[:-2] + b',"SageMakerOutput":[[0.5,0.25]]}'
    doc_id, action = ActionBuilder("idx", "embedding", 2)(line)
    head, source = action.split(b"\n")[:2]
    assert orjson.loads(head) == {"index": {"_index": "idx", "_id": "d1", "version": 1234,
                                            "version_type": "external_gte"}}
    assert orjson.loads(source)["batchvec"]["v"] == 1234
    # lines without the block (outputs from before fingerprints) index as before
    _, plain = ActionBuilder("idx", "embedding", 2)(b'{"_id":"x","SageMakerOutput":[[1,2]]}')
    assert orjson.loads(plain.split(b"\n")[0]) == {"index": {"_index": "idx", "_id": "x"}}


def test_a_version_conflict_is_stale_and_a_gone_document_is_deleted():
    conflict = {"index": {"status": 409, "error": {"type": "version_conflict_engine_exception",
                                                   "reason": "current version [5] is higher"}}}
    assert classify_item(conflict)[0] == "stale"
    assert classify_item({"delete": {"status": 404, "result": "not_found"}})[0] == "updated"
    assert classify_item({"delete": {"status": 200, "result": "deleted"}})[0] == "updated"


@pytest.mark.parametrize("stale_ids", [["b"], []])
def test_the_writer_counts_stale_writes_apart_from_failures(stale_ids):
    def send(body: bytes) -> dict:
        items = []
        for head in body.split(b"\n")[::2]:
            if not head:
                continue
            doc_id = orjson.loads(head)["index"]["_id"]
            items.append({"index": {"status": 409, "error": {
                "type": "version_conflict_engine_exception", "reason": "newer"}}}
                if doc_id in stale_ids else {"index": {"status": 201, "result": "created"}})
        return {"items": items}

    seen: list[str] = []
    actions = [(i, b'{"index":{"_id":"%s"}}\n{}\n' % i.encode()) for i in "abc"]
    counts = BulkWriter(send, concurrency=1, on_stale=seen.append).write(actions)
    assert counts.stale == len(stale_ids) and seen == stale_ids
    assert counts.created == 3 - len(stale_ids) and counts.failed == 0
    assert counts.sent == counts.created + counts.updated + counts.stale + counts.failed


def test_reembed_all_sends_every_line_and_still_marks_what_the_input_has():
    stamp = changes.make_stamper("m", "s")
    indexed = [staged({"id": f"d{i}", "text": "t"}, stamp) for i in range(5)]
    state = changes.load_state(hits_of(indexed))
    sent: list[bytes] = []
    diff = changes.diff_lines(indexed[:3], state, sent.append, everything=True)
    assert (diff.embed, diff.unchanged, len(sent)) == (3, 0, 3)
    assert list(changes.absent_ids(hits_of(indexed), state, diff.seen)) == ["d3", "d4"]
