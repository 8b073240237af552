"""Which failures a retry can fix, in one place.

Final (a retry would only say it again): `fail_for_good` raises Airflow's fail-without-retry
exception for bad params, an input with nothing to read, a build that fails verification or
a report that does not balance; a job that ended Failed is not resubmitted under its name
(batch.job: the next attempt is `-r<n>`). Everything else a task raises is retried under the
DAG's retries: connection errors, and 429/5xx once the client's own backoff (util.backoff) is
spent, a killed worker. Where each kind is raised:

  OpenSearchError (.retryable)   hooks/opensearch.py   an HTTP error with OpenSearch's type
  BulkTransientError, BulkUnavailable  index/bulk_writer.py  a whole `_bulk` request refused
  ShardFailed                    here                  a shard's output cannot be indexed
  BatchJobFailed                 batch/job.py          a job ended Failed, timed out, or its
                                                       name is taken by another's job
  RunFailed (.retryable)         report/assemble.py    the report says the run is off
  InputError, OutputShapeError   ingest/sources.py, outputs/convert.py  bad input or output
"""

from __future__ import annotations


def fail_for_good(message: str) -> Exception:
    """For problems a retry cannot fix (bad params, nothing to read): no retries."""
    from airflow.sdk.exceptions import AirflowFailException

    return AirflowFailException(message)


class ShardFailed(Exception):
    """A shard's output cannot be indexed (missing, empty, shorter than its input): the
    shard fails with the reason, its records counted as failed."""
