"""The job-states trigger's import path before 0.2 (now `batchvec.batch.job_waits`), kept for
one release so sensors deferred before an upgrade still load in the triggerer."""

from batchvec.batch.job_waits import JobStatesTrigger

__all__ = ["JobStatesTrigger"]
