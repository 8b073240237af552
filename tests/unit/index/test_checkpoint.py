"""The pure parts of resumable indexing (batchvec.index.checkpoint): the contiguous-ack prefix,
line offsets, the checkpoint's (de)serialisation, and BulkWriter telling each action's fate
by its input position."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import threading

import pytest

from batchvec.index import checkpoint
from batchvec.index.bulk_writer import BulkWriter
from batchvec.index.checkpoint import AckPrefix, Checkpoint, StreamState


def _prefix(dlq=None):
    return AckPrefix(StreamState(), threading.Lock(), dlq)


def test_prefix_advances_only_over_contiguous_acks():
    dlq: list[bytes] = []
    p = _prefix(dlq.append)
    for end in (10, 20, 30):
        p.action(end)
    p.line(40, ("failed", "output_invalid_json", b"bad line\n"))  # final when read
    p.action(50)
    p.ack(2, "created")
    p.ack(1, "stale")
    assert (p.state.line, p.state.offset, dlq) == (0, 0, [])  # line 1 still out
    p.ack(0, "updated")
    assert (p.state.line, p.state.offset) == (4, 40)  # through the conversion failure
    assert dlq == [b"bad line\n"]
    assert (p.state.created, p.state.updated, p.state.stale) == (1, 1, 1)
    assert p.state.failed == {"output_invalid_json": 1}
    p.ack(3, ("failed", "mapper_parsing_exception", b"refused\n"))
    assert (p.state.line, p.state.offset, p.in_flight) == (5, 50, 0)
    assert p.state.acknowledged == 5 and dlq[-1] == b"refused\n"


def test_prefix_random_order_folds_everything_once():
    rng = random.Random(3)
    p = _prefix()
    seqs = list(range(500))
    for s in seqs:
        p.action((s + 1) * 7)
    rng.shuffle(seqs)
    for s in seqs:
        p.ack(s, "created")
    assert (p.state.line, p.state.offset, p.state.created, p.in_flight) == (500, 3500, 500, 0)


def test_prefix_resumes_from_a_saved_state():
    state = StreamState(line=7, offset=123, created=7)
    p = AckPrefix(state, threading.Lock())
    p.action(150)
    p.ack(0, "created")  # seq counts this try's actions from 0
    assert (state.line, state.offset, state.created) == (8, 150, 8)


def test_checkpoint_round_trip_and_format_check():
    cp = Checkpoint("shard-00001", {"index": "i", "output": ["etag", 10]},
                    output=StreamState(line=3, offset=99, created=2, failed={"x": 1}),
                    dlq_parts=1, dlq_lines=1, sample_id="a", saves=2)
    data = cp.to_dict()
    assert data["format"] == checkpoint.FORMAT
    assert Checkpoint.from_dict(data) == cp
    with pytest.raises(ValueError, match="format"):
        Checkpoint.from_dict({**data, "format": 99})


def test_checkpoint_every_setting(monkeypatch):
    monkeypatch.delenv("BATCHVEC_CHECKPOINT_LINES", raising=False)
    assert checkpoint.checkpoint_every() == checkpoint.DEFAULT_CHECKPOINT_LINES
    monkeypatch.setenv("BATCHVEC_CHECKPOINT_LINES", "0")
    with pytest.raises(ValueError):
        checkpoint.checkpoint_every()


def test_writer_reports_each_actions_fate_once_by_input_position():
    """Lanes answer in any order; items retried, superseded or refused still come back
    exactly once each, with their input position."""
    rng = random.Random(5)
    lock = threading.Lock()
    attempts: dict[str, int] = {}

    def send(body: bytes) -> dict:
        items = []
        lines = body.split(b"\n")[:-1]
        for head in lines[0::2]:
            doc_id = head.split(b'"_id":"')[1].split(b'"')[0].decode()
            with lock:
                attempts[doc_id] = attempts.get(doc_id, 0) + 1
                first = attempts[doc_id] == 1
            if doc_id.endswith("7"):
                items.append({"index": {"status": 400, "error": {"type": "mapper_parsing_exception",
                                                                 "reason": "bad"}}})
            elif first and rng.random() < 0.3:
                items.append({"index": {"status": 429, "error": {
                    "type": "es_rejected_execution_exception", "reason": "busy"}}})
            else:
                items.append({"index": {"status": 201, "result": "created"}})
        return {"items": items}

    seen: dict[int, str] = {}

    def on_done(finals):
        for seq, outcome, _doc_id, action, _reason in finals:
            assert seq not in seen
            seen[seq] = outcome
            assert (action is not None) == (outcome == "failed")

    ids = [f"d{i}" for i in range(300)]
    actions = [(i, b'{"index":{"_id":"%s"}}\n{}\n' % i.encode()) for i in ids]
    counts = BulkWriter(send, concurrency=4, max_actions=7, backoff_base=0, sleep=lambda s: None,
                        on_done=on_done).write(actions)
    assert sorted(seen) == list(range(300))
    assert sum(o == "failed" for o in seen.values()) == counts.failed == 30
    assert all(seen[i] == ("failed" if ids[i].endswith("7") else "created") for i in seen)


def test_indexed_digests_fold_in_order_and_skip_writes_that_indexed_nothing():
    got: list[str] = []
    p = AckPrefix(StreamState(), threading.Lock(), None, got.append)
    for end in (1, 2, 3, 4):
        p.action(end)
    p.ack(1, "stale", "b")
    p.ack(2, "updated", "c")
    p.ack(3, ("failed", "x", b"dlq\n"))
    assert got == []
    p.ack(0, "created", "a")
    assert got == ["a", "c"]


def test_id_digest_is_the_same_in_every_process():
    """hash() of a str changes with PYTHONHASHSEED; the saved digests must not."""
    code = "from batchvec.index.checkpoint import id_digest; print(id_digest('d-1'))"
    outs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           check=True, env={**os.environ, "PYTHONHASHSEED": seed}).stdout
            for seed in ("1", "2")}
    assert outs == {f"{checkpoint.id_digest('d-1')}\n"}
