"""Connection ids, the S3 key layout of a run, and the BATCHVEC_* knobs read at run time.

Params (plan/run_plan.py) are what a run is asked to do; these are how a deployment runs
every run: they come from the worker's environment.
"""

from __future__ import annotations

import os
from datetime import timedelta

AWS_CONN_ID = "aws_default"
OPENSEARCH_CONN_ID = "opensearch_default"

# Under s3://<bucket>/<run prefix>/ (plan.key): the staging manifest and the run report.
MANIFEST_KEY = "manifest.json"
REPORT_KEY = "report.json"


def env_int(name: str, default: int, minimum: int = 1) -> int:
    """An integer knob from the environment, refused below `minimum` with its name."""
    value = int(os.environ.get(name, default))
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def bulk_load_lease() -> timedelta:
    """How long a run's hold on an index's bulk-load settings lasts without renewal
    (`BATCHVEC_BULK_LOAD_LEASE_HOURS`, default 48)."""
    return timedelta(hours=float(os.environ.get("BATCHVEC_BULK_LOAD_LEASE_HOURS", 48)))


def job_waits_defer() -> bool:
    """`BATCHVEC_JOB_WAIT`: `defer` (default) or `reschedule` (for dag.test: batch/job_waits)."""
    return os.environ.get("BATCHVEC_JOB_WAIT", "defer") != "reschedule"
