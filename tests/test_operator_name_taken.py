"""Retries of batch_predict without a server. A killed try whose `_batch_predict` POST was
still in flight: the request can create the job after the try died, between the retry's
look-up and its own submit; the retry must attach to that job (found by name), not fail or
submit a second one. A retry that finds its job already completed returns without deferring."""

from __future__ import annotations

import pytest
from airflow.exceptions import TaskDeferred

from batchvec import mlcommons, operators
from batchvec.opensearch_hook import OpenSearchError
from batchvec.operators import BatchJobFailed, BatchPredictOperator

TAKEN = ('Error from remote service: {"__type": "ValidationException", "message": "Job name '
         'must be unique within an AWS account and region, and a job with this name already '
         'exists (arn:aws:sagemaker:us-east-1:000000000000:transform-job/k)"}')


class FailingHook:
    def __init__(self, reason: str, status: int = 400):
        self.reason, self.status = reason, status

    def request(self, method, path, body=None, retries=None):
        raise OpenSearchError(self.status, "status_exception", self.reason, method, path)


def test_a_taken_job_name_is_told_apart_from_other_errors():
    with pytest.raises(mlcommons.JobNameTaken):
        mlcommons.batch_predict(FailingHook(TAKEN), "m", {})
    with pytest.raises(mlcommons.ThrottledError):
        mlcommons.batch_predict(FailingHook("Too many requests", 429), "m", {})
    with pytest.raises(OpenSearchError):
        mlcommons.batch_predict(FailingHook("model not deployed"), "m", {})


@pytest.fixture
def op():
    return BatchPredictOperator(task_id="batch_predict", model_id="m", run_key="k",
                                input_s3_uri="s3://bkt/i/", output_s3_uri="s3://bkt/o/")


def script(monkeypatch, op, looks: list, submits: list) -> list[str]:
    """`_existing` answers from `looks`; `_batch_predict` raises or returns from `submits`."""
    looks, submits, names = iter(looks), iter(submits), []
    monkeypatch.setattr(op, "_existing", lambda hook, name: next(looks))

    def submit(hook, model_id, params):
        names.append(params["TransformJobName"])
        answer = next(submits)
        if isinstance(answer, Exception):
            raise answer
        return answer

    monkeypatch.setattr(mlcommons, "batch_predict", submit)
    return names


def test_job_created_meanwhile_by_a_killed_try_is_attached(monkeypatch, op):
    names = script(monkeypatch, op, [None, ("task-1", "RUNNING")], [mlcommons.JobNameTaken(TAKEN)])
    assert op.submit_or_attach(hook=None) == ("k", "task-1")
    assert names == ["k"]  # one submit, refused; no second name tried


def test_job_created_meanwhile_and_already_failed_gets_the_next_name(monkeypatch, op):
    names = script(monkeypatch, op, [None, ("task-1", "FAILED"), None],
                   [mlcommons.JobNameTaken(TAKEN), {"task_id": "task-2"}])
    assert op.submit_or_attach(hook=None) == ("k-r2", "task-2")
    assert names == ["k", "k-r2"]


def test_a_taken_name_that_cannot_be_read_fails_clearly(monkeypatch, op):
    script(monkeypatch, op, [None, None], [mlcommons.JobNameTaken(TAKEN)])
    with pytest.raises(BatchJobFailed, match="already exists but cannot be read"):
        op.submit_or_attach(hook=None)


def test_a_retry_that_finds_its_job_completed_returns_without_deferring(monkeypatch, op):
    monkeypatch.setattr(operators, "OpenSearchHook", lambda conn_id: None)
    script(monkeypatch, op, [("task-1", "COMPLETED")], [])
    assert op.execute({}) == {"job_name": "k", "task_id": "task-1", "output_s3_uri": "s3://bkt/o/",
                              "elapsed": 0.0}


def test_a_retry_that_finds_its_job_running_defers_to_wait(monkeypatch, op):
    monkeypatch.setattr(operators, "OpenSearchHook", lambda conn_id: None)
    script(monkeypatch, op, [("task-1", "RUNNING")], [])
    with pytest.raises(TaskDeferred):
        op.execute({})
