"""Deferred tasks are stored with their trigger's classpath: the 0.1 paths must still load."""

from __future__ import annotations

import importlib

from batchvec.batch.job_waits import JobStatesTrigger
from batchvec.batch.triggers import BatchJobTrigger


def import_string(path: str):
    """What the triggerer does with a stored classpath."""
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def test_the_triggers_serialise_their_new_paths() -> None:
    trigger = BatchJobTrigger(job_name="j", task_id=None, opensearch_conn_id="o",
                              aws_conn_id=None, poll_interval=1.0, deadline=0.0, started_at=0.0)
    path, kwargs = trigger.serialize()
    assert path == "batchvec.batch.triggers.BatchJobTrigger"
    assert import_string(path)(**kwargs).serialize() == (path, kwargs)


def test_the_paths_before_the_move_still_load_the_same_classes() -> None:
    assert import_string("batchvec.triggers.BatchJobTrigger") is BatchJobTrigger
    assert import_string("batchvec.job_waits.JobStatesTrigger") is JobStatesTrigger
