"""The one backoff rule for calls a server may take later (429, 5xx, a dropped connection):
exponential with full jitter, ``uniform(0, min(cap, base * 2**attempt))``, with the server's
``Retry-After`` as a floor (capped too, so a bad header cannot stall a task for hours).

`call` retries a whole request with tenacity (the OpenSearch hook's requests). The bulk
writer resends only the items a response refused and keeps its own loop (index/bulk_writer.py),
but waits by the same `delay`.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import Any, TypeVar

from tenacity import RetryCallState, Retrying, retry_if_exception_type, stop_after_attempt
from tenacity.wait import wait_base

log = logging.getLogger(__name__)

BASE_S = 0.5
CAP_S = 30.0

T = TypeVar("T")


def delay(attempt: int, retry_after: float | None = None, *, base: float = BASE_S,
          cap: float = CAP_S, rng: Any = random) -> float:
    """Seconds to wait before retry number `attempt` + 1 (attempt counts from 0)."""
    wait = rng.uniform(0, min(cap, base * 2**attempt))
    if retry_after:
        wait = max(wait, min(retry_after, cap))
    return wait


def retry_after_seconds(header: str | None) -> float | None:
    """A `Retry-After` header in seconds (the HTTP-date form is not used by OpenSearch)."""
    return float(header) if header and header.isdigit() else None


class Retry(Exception):
    """Raised inside a call `call` retries: try again. `final` is what the caller sees when
    the attempts run out; `retry_after` is the server's floor in seconds, if it sent one."""

    def __init__(self, what: str, final: Exception, retry_after: float | None = None):
        super().__init__(what)
        self.final, self.retry_after = final, retry_after


class _Wait(wait_base):
    def __call__(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        return delay(state.attempt_number - 1, getattr(exc, "retry_after", None))


def _log_retry(state: RetryCallState) -> None:
    exc = state.outcome.exception() if state.outcome else None
    wait = state.next_action.sleep if state.next_action else 0.0
    log.warning("%s; retrying in %.1fs", exc, wait)


def call(fn: Callable[[], T], *, attempts: int,
         sleep: Callable[[float], None] = time.sleep) -> T:
    """`fn()`, called again after `delay` while it raises `Retry`, at most `attempts` times
    in all; then the last `Retry`'s `final` is raised. Other exceptions pass through at once."""
    retrying = Retrying(stop=stop_after_attempt(max(1, attempts)), wait=_Wait(),
                        retry=retry_if_exception_type(Retry), sleep=sleep,
                        before_sleep=_log_retry, reraise=True)
    try:
        return retrying(fn)
    except Retry as exc:
        raise exc.final from None
