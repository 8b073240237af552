"""Which failures a retry can fix, in one place.

Final (a retry would only say it again): `fail_for_good` raises Airflow's fail-without-retry
exception; bad params, an input with nothing to read, a job that Failed for good, a report
that does not balance. Everything else a task raises is retried under the DAG's retries:
connection errors, 429/5xx after the client's own backoff (index.bulk_writer, hooks), a
killed worker. The task bodies (batchvec.tasks) are the only code that decides.
"""

from __future__ import annotations


def fail_for_good(message: str) -> Exception:
    """For problems a retry cannot fix (bad params, nothing to read): no retries."""
    from airflow.sdk.exceptions import AirflowFailException

    return AirflowFailException(message)


class ShardFailed(Exception):
    """A shard's output cannot be indexed (missing, empty, shorter than its input): the
    shard fails with the reason, its records counted as failed."""
