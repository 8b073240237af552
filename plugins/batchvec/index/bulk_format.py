"""The `_bulk` wire format, without I/O: grouping actions into request bodies and reading
what the server said about each item. Pure functions, tested without a server; the writer
in `bulk_writer.py` does the sending, retrying and ordering.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

DEFAULT_MAX_BYTES = 10 * 1024 * 1024  # 5-15 MiB requests index best
DEFAULT_MAX_ACTIONS = 5000
MAX_REASON_CHARS = 2000

Action = tuple[str, bytes]  # (doc_id, action pair bytes)

# Error types the server raises when it is overloaded rather than when the document is bad.
RETRYABLE_TYPES = frozenset(
    """es_rejected_execution_exception opensearch_rejected_execution_exception
    rejected_execution_exception circuit_breaking_exception unavailable_shards_exception
    process_cluster_event_timeout_exception no_shard_available_action_exception""".split()
)



def join_body(batch: list[Action]) -> bytes:
    return b"".join(action for _, action in batch)


Span = tuple[str, int, int]  # (doc_id, start, end) of one action inside a request body


def join_spans(batch: list[Action]) -> tuple[bytes, list[Span]]:
    """The request body and where each action lies in it."""
    spans, pos = [], 0
    for doc_id, action in batch:
        spans.append((doc_id, pos, pos + len(action)))
        pos += len(action)
    return join_body(batch), spans


class Batcher:
    """Accumulates actions into a request that respects both limits."""

    def __init__(self, max_bytes: int, max_actions: int) -> None:
        if max_bytes < 1 or max_actions < 1:
            raise ValueError("max_bytes and max_actions must be positive")
        self.max_bytes = max_bytes
        self.max_actions = max_actions
        self.items: list[Action] = []
        self.size = 0

    def add(self, item: Action) -> list[Action] | None:
        """Add one action; returns the previous batch when this one did not fit."""
        n = len(item[1])
        full = None
        if self.items and (self.size + n > self.max_bytes or len(self.items) >= self.max_actions):
            full = self.take()
        self.items.append(item)
        self.size += n
        return full

    def take(self) -> list[Action]:
        items, self.items, self.size = self.items, [], 0
        return items


def iter_bulk_bodies(
    actions: Iterable[Action],
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_actions: int = DEFAULT_MAX_ACTIONS,
) -> Iterator[list[Action]]:
    """Group actions into requests of at most max_bytes / max_actions (an oversized single
    action goes alone); ``b"".join`` of the action bytes is the request body."""
    batcher = Batcher(max_bytes, max_actions)
    for item in actions:
        full = batcher.add(item)
        if full:
            yield full
    if batcher.items:
        yield batcher.take()


def error_reason(error: Any) -> tuple[str, str]:
    """(type, "<type>: <reason> (caused by ...)") from a bulk item's error field."""
    if not isinstance(error, dict):
        return "error", f"error: {error}"[:MAX_REASON_CHARS]
    etype = str(error.get("type") or "error")
    text = f"{etype}: {error.get('reason') or ''}"
    cause = error.get("caused_by")
    if isinstance(cause, dict):  # mapper errors put the useful detail here
        text += f" (caused by {cause.get('type')}: {cause.get('reason')})"
    return etype, text[:MAX_REASON_CHARS]


def classify_item(item: dict) -> tuple[str, str | None]:
    """One entry of a `_bulk` response's ``items`` -> (outcome, reason).

    outcome is ``created``, ``updated`` (any other success, and a delete of a document
    already gone), ``stale`` (a newer external version stands: the write is superseded, not
    failed), ``retry`` (overload: 429, 5xx, rejected execution, circuit breaker) or
    ``failed`` (the document itself is refused).
    """
    op, result = next(iter(item.items()), (None, None)) if isinstance(item, dict) else (None, None)
    if not isinstance(result, dict):
        return "failed", f"malformed_item: {str(item)[:200]}"
    status = result.get("status")
    error = result.get("error")
    if error is None and isinstance(status, int) and 200 <= status < 300:
        if result.get("result", "created" if status == 201 else "updated") == "created":
            return "created", None
        return "updated", None
    if error is None and status == 404 and result.get("result") == "not_found":
        return "updated", None  # a delete's document is already gone (an earlier try)
    etype, reason = error_reason(error) if error is not None else ("", f"http_{status}")
    # Only a versioned write or delete can be outrun by a newer version; a `create` of an
    # existing id conflicts for another reason (the document exists) and fails.
    if status == 409 and etype == "version_conflict_engine_exception" and op in ("index", "delete"):
        return "stale", reason
    if status == 429 or (isinstance(status, int) and status >= 500) or etype in RETRYABLE_TYPES:
        return "retry", reason
    return "failed", reason


def reason_key(reason: str) -> str:
    return reason.split(":", 1)[0]
