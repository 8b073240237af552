"""Retries of batch_predict without a server. A killed try whose `_batch_predict` POST was
still in flight: the request can create the job after the try died, between the retry's
look-up and its own submit; the retry must attach to that job (found by name), not fail or
submit a second one. A retry that finds its job already completed returns without deferring."""

from __future__ import annotations

import pytest
from airflow.exceptions import TaskDeferred

from batchvec.batch import operators
from batchvec.batch.operators import BatchJobFailed, BatchPredictOperator
from batchvec.hooks import mlcommons
from batchvec.hooks.opensearch import OpenSearchError

# The real node's answer (400 status_exception) when SageMaker refuses a taken name.
TAKEN = ('Error from remote service: {"__type": "ValidationException", "message": "Job name '
         'must be unique within an AWS account and region, and a job with this name already '
         'exists (arn:aws:sagemaker:us-east-1:000000000000:transform-job/k)"}')


# What ML Commons 3.6 answers (tests/test_batch_job.py sees them from the real node): SageMaker's
# ThrottlingException passed back as 400, and its own limit on live batch tasks as 429.
SAGEMAKER_THROTTLED = ("remote_connector_throttling_exception", 400,
                       "Error from remote service: The request was denied due to remote server "
                       "throttling. To change the retry policy and behavior, please update the "
                       "connector client_config.")
TASK_LIMIT = ("status_exception", 429, "Exceeded maximum limit for BATCH_PREDICTION tasks. To "
              "increase the limit, update the plugins.ml_commons.max_batch_inference_tasks setting.")
EXPIRED = ('Error from remote service: {"__type": "ExpiredTokenException", "message": "The '
           'security token included in the request is expired"}')


class FailingHook:
    def __init__(self, reason: str, status: int = 400, err_type: str = "status_exception"):
        self.reason, self.status, self.type = reason, status, err_type

    def request(self, method, path, body=None, retries=None):
        raise OpenSearchError(self.status, self.type, self.reason, method, path)


def test_a_taken_job_name_is_told_apart_from_other_errors():
    with pytest.raises(mlcommons.JobNameTaken):
        mlcommons.batch_predict(FailingHook(TAKEN), "m", {})
    for err_type, status, reason in (SAGEMAKER_THROTTLED, TASK_LIMIT):
        with pytest.raises(mlcommons.ThrottledError, match="^(Error from remote|Exceeded)"):
            mlcommons.batch_predict(FailingHook(reason, status, err_type), "m", {})
    for reason in (EXPIRED, "model not deployed"):  # not worth waiting for: fails the try
        with pytest.raises(OpenSearchError):
            mlcommons.batch_predict(FailingHook(reason), "m", {})


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


class SelfManagedCluster:
    """The hook as execute() sees it: a self-managed cluster, whose connector signs with the
    AWS connection's keys; KeyRefresher pushes are recorded instead of sent."""

    def __init__(self, monkeypatch):
        self.pushes = []
        monkeypatch.setattr(operators, "OpenSearchDomainHook", lambda conn_id: self)
        refresher = type("Refresher", (), {"push_if_changed": lambda _self: self.pushes.append("push")})
        monkeypatch.setattr(operators, "KeyRefresher", lambda *args: refresher())

    def target(self):
        return {"connector_credentials": "aws_keys"}


def test_a_retry_that_finds_its_job_completed_returns_without_deferring(monkeypatch, op):
    cluster = SelfManagedCluster(monkeypatch)
    script(monkeypatch, op, [("task-1", "COMPLETED")], [])
    assert op.execute({}) == {"job_name": "k", "task_id": "task-1", "output_s3_uri": "s3://bkt/o/",
                              "elapsed": 0.0, "job_group": 0}
    assert cluster.pushes == ["push"]  # fresh keys on the model before anything else


def test_a_retry_that_finds_its_job_running_defers_to_wait(monkeypatch, op):
    SelfManagedCluster(monkeypatch)
    script(monkeypatch, op, [("task-1", "RUNNING")], [])
    with pytest.raises(TaskDeferred) as deferred:
        op.execute({})
    assert deferred.value.trigger.refresh_keys  # and the trigger keeps them fresh


def test_keys_are_put_on_the_model_again_right_before_each_submit(monkeypatch, op):
    """ML Commons signs CreateTransformJob with the model's keys: short-lived keys pushed
    before the look-up may have expired by the submit, or during a throttling backoff."""
    cluster = SelfManagedCluster(monkeypatch)
    order = cluster.pushes
    monkeypatch.setattr(op, "_existing", lambda hook, name: order.append("look") or None)
    answers = iter([mlcommons.ThrottledError("throttled"), {"task_id": "task-1"}])

    def submit(hook, model_id, params):
        order.append("submit")
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    monkeypatch.setattr(mlcommons, "batch_predict", submit)
    monkeypatch.setattr(operators.time, "sleep", lambda s: None)
    with pytest.raises(TaskDeferred):
        op.execute({})
    assert order == ["push", "look", "push", "submit", "push", "submit"]
