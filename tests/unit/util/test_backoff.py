"""util.backoff: the one backoff rule and the tenacity-driven retry of whole requests."""

from __future__ import annotations

import random

import pytest

from batchvec.util import backoff


def test_delay_is_full_jitter_under_the_cap_with_retry_after_as_a_floor() -> None:
    rng = random.Random(7)
    for attempt in range(12):
        waits = [backoff.delay(attempt, rng=rng) for _ in range(200)]
        assert 0 <= min(waits) and max(waits) <= min(backoff.CAP_S, backoff.BASE_S * 2**attempt)
    assert min(backoff.delay(0, 7.0, rng=rng) for _ in range(50)) == 7.0
    assert backoff.delay(0, 3600.0, rng=rng) == backoff.CAP_S  # a bad header cannot stall a task


def test_retry_after_header_in_seconds_only() -> None:
    assert backoff.retry_after_seconds("12") == 12.0
    assert backoff.retry_after_seconds(None) is None
    assert backoff.retry_after_seconds("Wed, 21 Oct 2026 07:28:00 GMT") is None


def test_call_retries_then_raises_the_final_error() -> None:
    calls, slept = [], []

    def flaky():
        calls.append(1)
        raise backoff.Retry("503", final=RuntimeError("gave up"), retry_after=2.0)

    with pytest.raises(RuntimeError, match="gave up"):
        backoff.call(flaky, attempts=4, sleep=slept.append)
    assert len(calls) == 4 and len(slept) == 3 and all(s >= 2.0 for s in slept)


def test_call_returns_once_it_succeeds_and_passes_other_errors_through() -> None:
    answers = iter([backoff.Retry("429", final=RuntimeError()), "ok"])

    def once():
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    assert backoff.call(once, attempts=3, sleep=lambda s: None) == "ok"
    with pytest.raises(KeyError):
        backoff.call(lambda: {}["x"], attempts=3, sleep=lambda s: None)
