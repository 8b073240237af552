"""BulkWriter against an in-process fake `_bulk` endpoint: retries, failures, ordering."""

from __future__ import annotations

import json
import random
import threading
import time
from collections import defaultdict

import pytest

from batchvec.index.bulk_writer import (
    BulkProtocolError,
    BulkTransientError,
    BulkUnavailable,
    BulkWriter,
    classify_item,
    iter_bulk_bodies,
)


def _action(doc_id: str, version: int, pad: int = 0) -> tuple[str, bytes]:
    header = json.dumps({"index": {"_index": "i", "_id": doc_id}})
    source = json.dumps({"v": version, "pad": "x" * pad})
    return doc_id, f"{header}\n{source}\n".encode()


class FakeCluster:
    """Applies index actions in the order received; answers like OpenSearch's `_bulk`."""

    def __init__(
        self,
        *,
        reject_first: set[tuple[str, int]] = frozenset(),
        always_reject: set[str] = frozenset(),
        bad: set[str] = frozenset(),
        transient_first: int = 0,
        jitter: float = 0.0,
    ) -> None:
        self.lock = threading.Lock()
        self.store: dict[str, int] = {}
        self.applied: dict[str, list[int]] = defaultdict(list)
        self.rejected: set[tuple[str, int]] = set()
        self.reject_first = reject_first
        self.always_reject = always_reject
        self.bad = bad
        self.transient_left = transient_first
        self.jitter = jitter
        self.bodies: list[int] = []

    def send(self, body: bytes) -> dict:
        if self.jitter:
            time.sleep(random.uniform(0, self.jitter))  # shuffle the lanes' interleaving
        with self.lock:
            self.bodies.append(len(body))
            if self.transient_left:
                self.transient_left -= 1
                raise BulkTransientError("bulk 503 unavailable", retry_after=0.25)
        lines = body.split(b"\n")
        assert lines[-1] == b"" and len(lines) % 2 == 1
        items = []
        for header, source in zip(lines[0:-1:2], lines[1:-1:2], strict=True):
            doc_id = json.loads(header)["index"]["_id"]
            version = json.loads(source)["v"]
            items.append({"index": self._apply(doc_id, version)})
        return {"took": 1, "errors": any("error" in i["index"] for i in items), "items": items}

    def _apply(self, doc_id: str, version: int) -> dict:
        with self.lock:
            key = (doc_id, version)
            if doc_id in self.bad:
                err = {
                    "type": "mapper_parsing_exception",
                    "reason": "failed to parse",
                    "caused_by": {"type": "illegal_argument_exception", "reason": "dim"},
                }
                return {"_id": doc_id, "status": 400, "error": err}
            if doc_id in self.always_reject or (
                key in self.reject_first and key not in self.rejected
            ):
                self.rejected.add(key)
                err = {"type": "es_rejected_execution_exception", "reason": "queue full"}
                return {"_id": doc_id, "status": 429, "error": err}
            result = "updated" if doc_id in self.store else "created"
            self.store[doc_id] = version
            self.applied[doc_id].append(version)
            return {"_id": doc_id, "status": 201 if result == "created" else 200, "result": result}


class Recorder:
    def __init__(self) -> None:
        self.sleeps: list[float] = []
        self.failed: list[tuple[str, bytes, str]] = []

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)

    def on_failed(self, doc_id: str, action: bytes, reason: str) -> None:
        self.failed.append((doc_id, action, reason))


def _writer(cluster: FakeCluster, rec: Recorder, **kw) -> BulkWriter:
    kw.setdefault("concurrency", 4)
    kw.setdefault("max_actions", 10)
    return BulkWriter(
        cluster.send, sleep=rec.sleep, on_failed=rec.on_failed, rng=random.Random(0), **kw
    )


def test_ordering_per_id_under_concurrency_and_retries() -> None:
    rng = random.Random(11)
    ids = [f"d{i}" for i in range(150)]
    actions = [_action(rng.choice(ids), v) for v in range(3000)]
    reject_first = {
        (doc_id, v)
        for doc_id, v in ((a[0], json.loads(a[1].split(b"\n")[1])["v"]) for a in actions)
        if rng.random() < 0.15
    }
    cluster = FakeCluster(reject_first=reject_first, jitter=0.0005)
    rec = Recorder()
    counts = _writer(cluster, rec, max_actions=25).write(iter(actions))

    last: dict[str, int] = {}
    for doc_id, action in actions:
        last[doc_id] = json.loads(action.split(b"\n")[1])["v"]
    assert cluster.store == last, "last version in input order must win"
    for doc_id, versions in cluster.applied.items():
        assert versions == sorted(versions), f"{doc_id} applied out of order: {versions}"
    assert counts.sent == len(actions) and counts.failed == 0 and not rec.failed
    assert counts.created == len(last)
    assert counts.created + counts.updated == counts.sent
    assert counts.retries >= 1 and counts.superseded >= 1  # both paths exercised
    assert counts.retries + counts.superseded == len(reject_first)


def test_rejected_items_are_indexed_on_retry_with_backoff() -> None:
    actions = [_action(f"d{i}", i) for i in range(40)]
    cluster = FakeCluster(reject_first={("d3", 3), ("d17", 17), ("d18", 18)})
    rec = Recorder()
    counts = _writer(cluster, rec, concurrency=2, backoff_base=0.5, backoff_max=30).write(actions)
    assert cluster.store == {f"d{i}": i for i in range(40)}
    assert (counts.sent, counts.created, counts.updated, counts.failed) == (40, 40, 0, 0)
    assert counts.retries == 3
    assert rec.sleeps and all(0 <= s <= 0.5 for s in rec.sleeps)  # first retry: [0, base]
    assert counts.bytes == sum(len(a) for _, a in actions)


def test_whole_request_transient_error_is_retried() -> None:
    cluster = FakeCluster(transient_first=1)
    rec = Recorder()
    counts = _writer(cluster, rec, concurrency=1).write([_action("a", 1), _action("b", 2)])
    assert cluster.store == {"a": 1, "b": 2}
    assert rec.sleeps == [pytest.approx(0.25, abs=0.25)] and rec.sleeps[0] >= 0.25  # Retry-After
    assert counts.requests == 2 and counts.retries == 2 and counts.created == 2


def test_bad_document_goes_to_on_failed_with_reason() -> None:
    actions = [_action(f"d{i}", i) for i in range(12)]
    cluster = FakeCluster(bad={"d5"})
    rec = Recorder()
    counts = _writer(cluster, rec).write(actions)
    assert [(d, a) for d, a, _ in rec.failed] == [actions[5]]
    reason = rec.failed[0][2]
    assert reason.startswith("mapper_parsing_exception: failed to parse")
    assert "illegal_argument_exception: dim" in reason
    assert counts.failed == 1 and counts.failed_reasons == {"mapper_parsing_exception": 1}
    assert counts.created == 11 and not rec.sleeps


def test_retries_exhausted_become_failed_with_last_reason() -> None:
    cluster = FakeCluster(always_reject={"stuck"})
    rec = Recorder()
    counts = _writer(cluster, rec, max_retries=3).write([_action("ok", 1), _action("stuck", 2)])
    assert len(rec.sleeps) == 3
    for attempt, delay in enumerate(rec.sleeps):
        assert 0 <= delay <= 0.5 * 2**attempt
    assert [(d, r.split(":")[0]) for d, _, r in rec.failed] == [
        ("stuck", "es_rejected_execution_exception")
    ]
    assert (counts.created, counts.failed, counts.retries) == (1, 1, 3)


def test_transient_errors_exhausted_raise_instead_of_dead_lettering() -> None:
    cluster = FakeCluster(transient_first=100)
    rec = Recorder()
    with pytest.raises(BulkUnavailable, match="failed 3 times, last: bulk 503"):
        _writer(cluster, rec, concurrency=1, max_retries=2).write([_action("a", 1)])
    assert rec.failed == []  # healthy documents never reach the DLQ for a cluster outage
    assert len(rec.sleeps) == 2 and all(s <= 30.0 for s in rec.sleeps)


def _throttling(cluster: FakeCluster, refusals: int, now: list[float]):
    """`send` refusing the first `refusals` requests with 429, as indexing pressure does."""
    left = [refusals]

    def send(body: bytes) -> dict:
        if left[0]:
            left[0] -= 1
            raise BulkTransientError("bulk 429 rejected_execution_exception: "
                                     "coordinating_and_primary_bytes", throttled=True)
        return cluster.send(body)

    def sleep(seconds: float) -> None:
        now[0] += seconds
    return send, sleep


def _throttled_writer(refusals: int, window: float):
    """A one-lane writer whose server refuses the first `refusals` requests with a 429, on a
    fake clock that each backoff advances: (cluster, now, writer)."""
    cluster, now = FakeCluster(), [0.0]
    send, sleep = _throttling(cluster, refusals, now)
    writer = BulkWriter(send, concurrency=1, max_retries=3, backoff_max=30.0,
                        throttle_window=window, sleep=sleep, clock=lambda: now[0],
                        rng=random.Random(0))
    return cluster, now, writer


def test_429_pressure_backs_off_past_max_retries_within_the_throttle_window() -> None:
    cluster, now, writer = _throttled_writer(20, window=900.0)
    counts = writer.write([_action("a", 1), _action("b", 2)])
    assert cluster.store == {"a": 1, "b": 2} and counts.requests == 21
    assert now[0] < 900.0  # 20 refusals fit in the window; a 503 stops after 3 retries


def test_429_pressure_past_the_throttle_window_raises() -> None:
    cluster, now, writer = _throttled_writer(10_000, window=120.0)
    with pytest.raises(BulkUnavailable, match="429 rejected_execution"):
        writer.write([_action("a", 1)])
    assert 120.0 <= now[0] < 120.0 + 30.0 and cluster.store == {}


def test_unexpected_send_error_fails_fast_and_stops_reading() -> None:
    consumed = 0

    def endless():
        nonlocal consumed
        while True:
            consumed += 1
            yield _action(f"d{consumed}", consumed)

    def send(body: bytes) -> dict:
        raise ValueError("401 unauthorized")

    writer = BulkWriter(send, concurrency=2, max_actions=10, sleep=lambda s: None)
    with pytest.raises(ValueError, match="401"):
        writer.write(endless())
    assert consumed < 200  # bounded: the producer stopped soon after the lanes did


def test_producer_error_is_raised_after_lanes_stop() -> None:
    def broken():
        yield _action("a", 1)
        raise OSError("s3 read failed")

    cluster = FakeCluster()
    with pytest.raises(OSError, match="s3 read failed"):
        _writer(cluster, Recorder()).write(broken())


def test_response_not_matching_request_is_an_error() -> None:
    writer = BulkWriter(lambda body: {"items": []}, concurrency=1, sleep=lambda s: None)
    with pytest.raises(BulkProtocolError):
        writer.write([_action("a", 1)])


def test_progress_is_rate_limited_and_final() -> None:
    now = [0.0]

    def clock() -> float:
        now[0] += 1.0  # every call advances one "second"
        return now[0]

    reports: list[dict] = []
    cluster = FakeCluster()
    writer = BulkWriter(
        cluster.send,
        concurrency=1,
        max_actions=1,
        progress=reports.append,
        progress_interval=5.0,
        clock=clock,
    )
    counts = writer.write([_action(f"d{i}", i) for i in range(20)])
    assert 2 <= len(reports) <= 6
    assert reports[-1]["created"] == 20 == counts.created
    assert [r["sent"] for r in reports] == sorted(r["sent"] for r in reports)


def test_empty_input() -> None:
    counts = _writer(FakeCluster(), Recorder()).write([])
    assert counts.sent == counts.requests == 0


@pytest.mark.parametrize(
    ("item", "expected"),
    [
        ({"index": {"_id": "a", "status": 201, "result": "created"}}, ("created", None)),
        ({"index": {"_id": "a", "status": 200, "result": "updated"}}, ("updated", None)),
        ({"update": {"_id": "a", "status": 200, "result": "noop"}}, ("updated", None)),
        ({"create": {"_id": "a", "status": 201}}, ("created", None)),
        ({"index": {"status": 429}}, ("retry", "http_429")),
        (
            {
                "index": {
                    "status": 503,
                    "error": {
                        "type": "unavailable_shards_exception",
                        "reason": "primary not active",
                    },
                }
            },
            ("retry", "unavailable_shards_exception: primary not active"),
        ),
        (
            {
                "index": {
                    "status": 429,
                    "error": {"type": "circuit_breaking_exception", "reason": "parent"},
                }
            },
            ("retry", "circuit_breaking_exception: parent"),
        ),
        (
            {
                "index": {
                    "status": 400,
                    "error": {"type": "es_rejected_execution_exception", "reason": "q"},
                }
            },
            ("retry", "es_rejected_execution_exception: q"),
        ),
        (
            {
                "index": {
                    "status": 400,
                    "error": {"type": "mapper_parsing_exception", "reason": "bad"},
                }
            },
            ("failed", "mapper_parsing_exception: bad"),
        ),
        (
            {
                "index": {
                    "status": 400,
                    "error": {"type": "illegal_argument_exception", "reason": "dim"},
                }
            },
            ("failed", "illegal_argument_exception: dim"),
        ),
        (
            {
                "delete": {
                    "status": 404,
                    "error": {"type": "index_not_found_exception", "reason": "no"},
                }
            },
            ("failed", "index_not_found_exception: no"),
        ),
        ({"index": {"status": 409, "error": "conflict"}}, ("failed", "error: conflict")),
        ({}, ("failed", "malformed_item: {}")),
    ],
)
def test_classify_item(item: dict, expected: tuple[str, str | None]) -> None:
    assert classify_item(item) == expected


def test_iter_bulk_bodies_respects_limits() -> None:
    rng = random.Random(5)
    actions = [_action(f"d{i}", i, pad=rng.choice([0, 10, 500, 3000])) for i in range(500)]
    batches = list(iter_bulk_bodies(iter(actions), max_bytes=4000, max_actions=7))
    assert [a for batch in batches for a in batch] == actions
    for batch in batches:
        size = sum(len(a) for _, a in batch)
        assert len(batch) <= 7
        assert size <= 4000 or len(batch) == 1  # an oversized action goes alone
    # batches are full: the next action would not have fitted
    for batch, nxt in zip(batches, batches[1:], strict=False):
        size = sum(len(a) for _, a in batch)
        assert len(batch) == 7 or size + len(nxt[0][1]) > 4000
    assert list(iter_bulk_bodies([])) == []


def test_writer_requests_respect_limits() -> None:
    cluster = FakeCluster()
    actions = [_action(f"d{i}", i, pad=200) for i in range(200)]
    _writer(cluster, Recorder(), max_bytes=2000, max_actions=50).write(actions)
    assert max(cluster.bodies) <= 2000
