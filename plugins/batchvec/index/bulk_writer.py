"""Bulk-indexing actions with bounded concurrency, per-item retries and per-id ordering.

Independent of HTTP: the caller injects ``send(body) -> response dict`` (the OpenSearch
hook's ``bulk``), which raises :class:`BulkTransientError` when the whole request may be
retried (429, 5xx, connection errors).

Ordering: duplicate ids resolve as "last in input wins". Each action is routed to one of
``concurrency`` lanes by a stable hash of its id, and a lane sends its requests one after
another, resolving every retry of a request before the next, so two versions of one id
are never in flight at the same time. Within one request, a retryable item whose id
succeeds later in the same request is not resent (that would put the older version back).
"""

from __future__ import annotations

import queue
import random
import threading
import time
import zlib
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from batchvec.index.bulk_format import (
    DEFAULT_MAX_ACTIONS,
    DEFAULT_MAX_BYTES,
    Action,
    Batcher,
    Span,
    classify_item,
    iter_bulk_bodies,
    join_spans,
    reason_key,
)
from batchvec.util import backoff

__all__ = [
    "BulkCounts",
    "BulkTransientError",
    "BulkUnavailable",
    "BulkWriter",
    "classify_item",
    "iter_bulk_bodies",
]

# (seq, outcome, doc_id, the action bytes of a failed one else None, reason or None);
# outcome is created, updated (superseded ones included), stale or failed.
Final = tuple[int, str, str, "bytes | None", "str | None"]


class BulkTransientError(Exception):
    """The whole `_bulk` request failed in a way worth retrying (429, 5xx, connection)."""

    def __init__(self, message: str, *, retry_after: float | None = None,
                 throttled: bool = False) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.throttled = throttled  # a 429: the cluster asks us to slow down, not failing


class BulkUnavailable(RuntimeError):
    """Whole requests kept failing (429/5xx/connection) past the retries: the cluster is
    unavailable, not the documents bad. Raised rather than dead-lettering healthy documents,
    so the task fails and its retry re-indexes the shard (idempotent by _id)."""


class BulkProtocolError(RuntimeError):
    """A `_bulk` response that does not answer the request (never retried)."""


@dataclass
class BulkCounts:
    """What happened to the actions given to :meth:`BulkWriter.write`.

    ``sent == created + updated + stale + failed`` once a write returns. ``stale`` counts
    writes refused because the document has a newer external version. ``retries`` counts
    item resends, ``superseded`` the retryable items dropped because a later action for the
    same id succeeded (already included in ``updated``), ``bytes`` the input action bytes.
    ``failed_reasons`` is keyed by error type so it stays small; full reasons go to
    ``on_failed``.
    """

    sent: int = 0
    created: int = 0
    updated: int = 0
    stale: int = 0
    failed: int = 0
    retries: int = 0
    superseded: int = 0
    requests: int = 0
    bytes: int = 0
    failed_reasons: dict[str, int] = field(default_factory=dict)

    @property
    def indexed(self) -> int:
        return self.created + self.updated

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class _Stopped(Exception):
    """Internal: another lane or the producer failed; abandon this batch."""


_END = object()


class BulkWriter:
    """Writes actions through ``send`` with ``concurrency`` ordered lanes (threads)."""

    def __init__(
        self,
        send: Callable[[bytes], dict],
        *,
        concurrency: int = 4,
        max_bytes: int = DEFAULT_MAX_BYTES,
        max_actions: int = DEFAULT_MAX_ACTIONS,
        max_retries: int = 8,
        backoff_base: float = 0.5,
        backoff_max: float = 30.0,
        throttle_window: float = 900.0,
        on_failed: Callable[[str, bytes, str], None] | None = None,
        on_stale: Callable[[str], None] | None = None,
        on_done: Callable[[list[Final]], None] | None = None,
        sleep: Callable[[float], None] = time.sleep,
        progress: Callable[[dict], None] | None = None,
        progress_interval: float = 5.0,
        queue_depth: int = 1,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        if concurrency < 1 or max_retries < 0 or queue_depth < 1:
            raise ValueError("concurrency and queue_depth must be >= 1, max_retries >= 0")
        Batcher(max_bytes, max_actions)  # validates the limits
        self._send = send
        self.concurrency = concurrency
        self.max_bytes = max_bytes
        self.max_actions = max_actions
        self.max_retries = max_retries
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        # A whole request refused with 429 (indexing pressure: every lane of every shard
        # indexing at once) backs off for up to this many seconds, past max_retries.
        self.throttle_window = throttle_window
        self._on_failed = on_failed
        self._on_stale = on_stale
        # Once per response, the actions whose fate is now final (see Final): seq is an
        # action's place in the input, so a caller can tell which prefix is all done.
        self._on_done = on_done
        self._sleep = sleep
        self._progress = progress
        self._progress_interval = progress_interval
        self._queue_depth = queue_depth
        self._clock = clock
        self._rng = rng or random.Random()

    # ---- producer ------------------------------------------------------------------------

    def write(self, actions: Iterable[Action]) -> BulkCounts:
        """Send every action; returns the counts. Memory is bounded by
        concurrency x (queue_depth + 2) requests. Re-raises the first error of ``send`` that
        is not a BulkTransientError, or of the ``actions`` iterator, after stopping the lanes.
        """
        self._counts = BulkCounts()
        self._lock = threading.Lock()
        self._failed_lock = threading.Lock()
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._last_progress = self._clock()
        queues: list[queue.Queue] = [
            queue.Queue(self._queue_depth) for _ in range(self.concurrency)
        ]
        lanes = [
            threading.Thread(target=self._lane, args=(q,), name=f"bulk-lane-{i}", daemon=True)
            for i, q in enumerate(queues)
        ]
        for lane in lanes:
            lane.start()
        try:
            self._produce(actions, queues)
        except BaseException as exc:
            self._fail_fast(exc)
        finally:
            for q in queues:
                q.put(_END)  # lanes drain without sending once stopped, so this cannot hang
            for lane in lanes:
                lane.join()
        if self._error is not None:
            raise self._error
        if self._progress:
            self._progress(self._snapshot())
        return self._counts

    def _produce(self, actions: Iterable[Action], queues: list[queue.Queue]) -> None:
        n = self.concurrency
        batchers = [Batcher(self.max_bytes, self.max_actions) for _ in range(n)]
        seqs: list[list[int]] = [[] for _ in range(n)]  # input positions, beside each batch
        for seq, item in enumerate(actions):
            # crc32, not hash(): the same id goes to the same lane in every process.
            lane = zlib.crc32(item[0].encode("utf-8", "surrogatepass")) % n if n > 1 else 0
            full = batchers[lane].add(item)
            if full:
                if self._stop.is_set():
                    return
                full_seqs, seqs[lane] = seqs[lane], []
                self._dispatch(queues[lane], full, full_seqs)
            seqs[lane].append(seq)
        for q, batcher, lane_seqs in zip(queues, batchers, seqs, strict=True):
            if batcher.items and not self._stop.is_set():
                self._dispatch(q, batcher.take(), lane_seqs)

    def _dispatch(self, q: queue.Queue, batch: list[Action], seqs: list[int]) -> None:
        with self._lock:
            self._counts.sent += len(batch)
            self._counts.bytes += sum(len(action) for _, action in batch)
        q.put((batch, seqs))

    def _fail_fast(self, exc: BaseException) -> None:
        with self._lock:
            if self._error is None:
                self._error = exc
        self._stop.set()

    # ---- lanes ---------------------------------------------------------------------------

    def _lane(self, q: queue.Queue) -> None:
        while True:
            got = q.get()
            if got is _END:
                return
            if self._stop.is_set():
                continue
            try:
                self._send_batch(*got)
            except _Stopped:
                pass
            except BaseException as exc:  # re-raised by write()
                self._fail_fast(exc)

    def _send_batch(self, batch: list[Action], seqs: list[int]) -> None:
        """Send one request; resend its retryable items (in order) until done or exhausted.

        The batch list is emptied once joined, so a lane holds one copy of its request (the
        body), not two; actions needed again (resends, failures) are sliced from the body.
        """
        body, pending = join_spans(batch)
        batch.clear()
        attempt = 0
        throttled_since = None
        while pending:
            try:
                response = self._send(body)
            except BulkTransientError as exc:
                self._count(requests=1)
                if exc.throttled:
                    throttled_since = throttled_since or self._clock()
                within = exc.throttled and self._clock() - throttled_since < self.throttle_window
                if attempt >= self.max_retries and not within:
                    raise BulkUnavailable(
                        f"bulk request failed {attempt + 1} times, last: {exc}") from None
                self._backoff(attempt, exc.retry_after)
                attempt += 1
                self._count(retries=len(pending))
                continue
            retry = self._settle(body, pending, seqs, response)
            if not retry:
                return
            if attempt >= self.max_retries:
                self._give_up(retry)
                return
            self._backoff(attempt, None)
            attempt += 1
            self._count(retries=len(retry))
            body, pending = join_spans([(doc_id, action) for doc_id, action, _, _ in retry])
            seqs = [seq for *_, seq in retry]

    def _settle(
        self, body: bytes, pending: list[Span], seqs: list[int], response: dict
    ) -> list[tuple[str, bytes, str, int]]:
        """Count a response's outcomes; returns the items to resend, in request order."""
        items = response.get("items") if isinstance(response, dict) else None
        if not isinstance(items, list) or len(items) != len(pending):
            got = len(items) if isinstance(items, list) else "no"
            raise BulkProtocolError(f"bulk response has {got} items for {len(pending)} actions")
        outcomes = [classify_item(item) for item in items]
        created = updated = superseded = 0
        stale: list[str] = []
        retry: list[tuple[str, bytes, str, int]] = []
        failed: list[tuple[str, bytes, str, int]] = []
        done: list[Final] = []  # for on_done
        later_ok: set[str] = set()
        # Walk backwards so we know whether an id succeeds later in this same request.
        for (doc_id, start, end), seq, (outcome, reason) in zip(
            reversed(pending), reversed(seqs), reversed(outcomes), strict=True
        ):
            if outcome == "created":
                created += 1
                later_ok.add(doc_id)
            elif outcome == "updated":
                updated += 1
                later_ok.add(doc_id)
            elif outcome == "stale":
                stale.append(doc_id)
            elif outcome == "retry" and doc_id in later_ok:
                superseded += 1  # resending it would overwrite the newer version
                outcome = "updated"
            elif outcome == "retry":
                retry.append((doc_id, body[start:end], reason or "retry", seq))
                continue
            else:
                failed.append((doc_id, body[start:end], reason or "failed", seq))
                continue
            done.append((seq, outcome, doc_id, None, reason))
        retry.reverse()
        failed.reverse()
        self._count(
            requests=1, created=created, updated=updated + superseded, superseded=superseded,
            stale=len(stale),
        )
        if stale and self._on_stale:
            with self._failed_lock:
                for doc_id in stale:
                    self._on_stale(doc_id)
        self._give_up(failed)
        if done and self._on_done:
            with self._failed_lock:
                self._on_done(done)
        return retry

    def _give_up(self, failures: list[tuple[str, bytes, str, int]]) -> None:
        if not failures:
            return
        with self._lock:
            counts = self._counts
            counts.failed += len(failures)
            for _, _, reason, _ in failures:
                key = reason_key(reason)
                counts.failed_reasons[key] = counts.failed_reasons.get(key, 0) + 1
        if self._on_failed or self._on_done:
            with self._failed_lock:  # callers' DLQ writers need not be thread-safe
                if self._on_failed:
                    for doc_id, action, reason, _ in failures:
                        self._on_failed(doc_id, action, reason)
                if self._on_done:
                    self._on_done([(seq, "failed", doc_id, action, reason)
                                   for doc_id, action, reason, seq in failures])

    def _backoff(self, attempt: int, retry_after: float | None) -> None:
        """util.backoff's rule; a stop (another lane failed) cuts the wait short."""
        delay = backoff.delay(attempt, retry_after, base=self.backoff_base, cap=self.backoff_max,
                              rng=self._rng)
        if self._sleep is time.sleep:
            stopped = self._stop.wait(delay)  # wakes up at once when another lane fails
        else:
            self._sleep(delay)
            stopped = self._stop.is_set()
        if stopped:
            raise _Stopped

    # ---- counts and progress ---------------------------------------------------------------

    def _count(self, **deltas: int) -> None:
        report = None
        with self._lock:
            for name, value in deltas.items():
                setattr(self._counts, name, getattr(self._counts, name) + value)
            now = self._clock()
            if self._progress and now - self._last_progress >= self._progress_interval:
                self._last_progress = now
                report = self._counts.as_dict()
        if report is not None:
            self._progress(report)

    def _snapshot(self) -> dict:
        with self._lock:
            return self._counts.as_dict()
