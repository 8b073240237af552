"""The trigger the job waits defer on: it fires when one more watched group has ended, reads
the states again after a failed read, and survives serialisation (the triggerer rebuilds it
from `serialize()`). The states source is replaced here; the DAG tests run it for real."""

from __future__ import annotations

import asyncio
import importlib

import pytest

from batchvec.batch import job_waits


def _run(trigger, answers):
    calls = []

    def fake(**kwargs):
        calls.append(kwargs)
        answer = answers[min(len(calls), len(answers)) - 1]
        if isinstance(answer, Exception):
            raise answer
        return {trigger.run_id: answer}

    from airflow.sdk.execution_time import task_runner

    mp = pytest.MonkeyPatch()
    mp.setattr(task_runner.RuntimeTaskInstance, "get_task_states", staticmethod(fake))
    try:
        async def first():
            async for event in trigger.run():
                return event.payload
        return asyncio.run(asyncio.wait_for(first(), 10)), calls
    finally:
        mp.undo()


def _trigger(groups, done):
    return job_waits.JobStatesTrigger(dag_id="d", run_id="r", groups=groups, done=done,
                                      poll_interval=0.01)


def test_fires_when_one_more_watched_group_has_ended():
    answers = [{"batch_predict_0": "success", "batch_predict_1": "deferred",
                "batch_predict_2": "running"},
               {"batch_predict_0": "success", "batch_predict_1": "up_for_retry",
                "batch_predict_2": "running"},
               {"batch_predict_0": "success", "batch_predict_1": "failed",
                "batch_predict_2": "running"}]
    payload, calls = _run(_trigger([0, 1, 2], [0]), answers)
    assert payload == {"ended": [0, 1]}  # a retry pending is not an end; failed for good is
    assert len(calls) == 3
    assert calls[0] == {"dag_id": "d", "task_ids": ["batch_predict"], "run_ids": ["r"]}


def test_a_failed_read_is_retried_and_no_groups_fire_at_once():
    payload, calls = _run(_trigger([3], []), [ConnectionError("api server restarting"),
                                              {"batch_predict_3": "success"}])
    assert payload == {"ended": [3]} and len(calls) == 2
    assert _run(_trigger([], []), [{}])[0] == {"ended": []}


def test_before_expansion_the_unmapped_state_ends_every_group():
    payload, _ = _run(_trigger([0, 1], []), [{"batch_predict": "upstream_failed"}])
    assert payload == {"ended": [0, 1]}


def test_serialises_to_its_own_import_path():
    trigger = _trigger([1, 2], [1])
    path, kwargs = trigger.serialize()
    module, name = path.rsplit(".", 1)
    again = getattr(importlib.import_module(module), name)(**kwargs)
    assert again.serialize() == (path, kwargs)
