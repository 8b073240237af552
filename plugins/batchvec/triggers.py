"""The trigger's import path before 0.2 (now `batchvec.batch.triggers`), kept for one release.

A task deferred before an upgrade is stored with the classpath its trigger serialised, and the
triggerer loads that path after the upgrade; this re-export keeps those tasks resuming.
"""

from batchvec.batch.triggers import BatchJobTrigger

__all__ = ["BatchJobTrigger"]
