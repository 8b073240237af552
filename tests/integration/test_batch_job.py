"""Submitting and waiting for a batch job on the devstack: the operator and its trigger.

Runs the same path Airflow does (execute -> TaskDeferred -> trigger events -> execute_complete)
with the devstack's fault switches, and checks SageMaker itself for what is left running.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from airflow.exceptions import TaskDeferred

from batchvec.batch.operators import BatchJobFailed
from batchvec.hooks.opensearch import OpenSearchDomainHook
from batchvec.model import connectors
from batchvec.plan import naming
from devstack import faults
from tests.helpers import batch_task_limit
from tests.helpers.batch_job_helpers import deferred_event, jobs_named, key, operator
from tests.helpers.contract_helpers import devstack_spec

pytestmark = [pytest.mark.devstack, pytest.mark.airflow,
              pytest.mark.usefixtures("no_faults")]


@pytest.fixture(scope="module")
def model_id(airflow_env):
    spec = devstack_spec(airflow_env.endpoints)
    return connectors.ensure_model(OpenSearchDomainHook(), spec,
                                   connectors.aws_connection_keys("aws_default"))["model_id"]


def wait_status(devstack, name: str, wanted: set[str], timeout: float = 20) -> str:
    sm = devstack.boto3_client("sagemaker")
    deadline = time.monotonic() + timeout
    while True:
        status = sm.describe_transform_job(TransformJobName=name)["TransformJobStatus"]
        if status in wanted or time.monotonic() > deadline:
            return status
        time.sleep(0.3)


def test_completed_job_and_a_second_submit_attaches(airflow_env, model_id):
    run_key = key()
    op = operator(airflow_env, run_key, model_id)
    event = deferred_event(op)
    assert event["status"] == "success", event
    result = op.execute_complete({}, event)
    assert result["job_name"] == run_key
    # A retry of the task finds the same job instead of submitting another.
    assert op.submit_or_attach(OpenSearchDomainHook()) == (run_key, result["task_id"])
    assert len(jobs_named(airflow_env, run_key)) == 1


def test_wait_timeout_cancels_the_job(airflow_env, model_id):
    faults.set_faults(airflow_env.state_dir, stall_job={"count": 1})
    run_key = key()
    op = operator(airflow_env, run_key, model_id, wait_timeout=2)
    event = deferred_event(op)
    assert event["status"] == "timeout"
    with pytest.raises(BatchJobFailed, match="still"):
        op.execute_complete({}, event)
    assert wait_status(airflow_env, run_key, {"Stopped"}) == "Stopped"  # no orphan


def test_killing_the_deferred_task_cancels_the_job(airflow_env, model_id):
    faults.set_faults(airflow_env.state_dir, stall_job={"count": 1})
    run_key = key()
    op = operator(airflow_env, run_key, model_id)
    with pytest.raises(TaskDeferred) as deferred:
        op.execute({})
    # What the triggerer does when a user marks the deferred task failed or clears it.
    asyncio.run(deferred.value.trigger.on_kill())
    assert wait_status(airflow_env, run_key, {"Stopped"}) == "Stopped"


def test_failed_job_fails_with_reason_and_retry_gets_a_new_name(airflow_env, model_id):
    faults.set_faults(airflow_env.state_dir,
                      fail_job={"count": 1, "reason": "ClientError: model container crashed"})
    run_key = key()
    op = operator(airflow_env, run_key, model_id)
    event = deferred_event(op)
    assert event["status"] == "failed"
    with pytest.raises(BatchJobFailed, match="model container crashed"):
        op.execute_complete({}, event)
    # The task's retry: the failed name is never reused, the attempt number is.
    retry = operator(airflow_env, run_key, model_id)
    assert deferred_event(retry)["status"] == "success"
    assert sorted(j["TransformJobName"] for j in jobs_named(airflow_env, run_key)) == [
        run_key, naming.transform_job_name(run_key, 2)]


def test_sagemaker_throttling_backs_off_then_succeeds_once(airflow_env, model_id, caplog):
    """SageMaker's ThrottlingException comes back through ML Commons (its connector does not
    retry by default) as 400 remote_connector_throttling_exception; the submit backs off."""
    faults.set_faults(airflow_env.state_dir, sagemaker_throttle={"count": 2})
    run_key = key()
    op = operator(airflow_env, run_key, model_id, submit_retry_window=60)
    with caplog.at_level("WARNING", logger="batchvec.batch.operators"):
        assert deferred_event(op)["status"] == "success"
    backoffs = [r.getMessage() for r in caplog.records if "throttled" in r.getMessage()]
    assert len(backoffs) == 2, backoffs
    assert all("retrying in" in m and "Error from remote service: The request was denied due to "
               "remote server throttling" in m for m in backoffs), backoffs
    assert faults.current(airflow_env.state_dir)["sagemaker_throttle"]["count"] == 0
    assert len(jobs_named(airflow_env, run_key)) == 1


def test_throttling_past_the_window_fails_clearly(airflow_env, model_id):
    faults.set_faults(airflow_env.state_dir, sagemaker_throttle={"count": -1})
    op = operator(airflow_env, key(), model_id, submit_retry_window=1)
    with pytest.raises(BatchJobFailed, match="still throttled after 1s: Error from remote service"):
        op.execute({})


def test_batch_task_limit_429_waits_for_a_free_slot(airflow_env, model_id, caplog, monkeypatch):
    """ML Commons' own limit: with every slot taken (a held job of another run) the submit is
    refused 429 and backs off; once that task has ended the next try runs, one job."""
    devstack = airflow_env
    with batch_task_limit.limited_to(devstack, free_slots=1):
        blocker = batch_task_limit.hold_a_slot(devstack, model_id)
        refusals = batch_task_limit.free_on_first_refusal(monkeypatch, devstack, blocker)
        run_key = key()
        op = operator(devstack, run_key, model_id, submit_retry_window=120)
        with caplog.at_level("WARNING", logger="batchvec.batch.operators"):
            event = deferred_event(op)
    assert event["status"] == "success", event
    assert refusals == ["Exceeded maximum limit for BATCH_PREDICTION tasks. To increase the "
                        "limit, update the plugins.ml_commons.max_batch_inference_tasks setting."]
    backoffs = [r.getMessage() for r in caplog.records if "throttled" in r.getMessage()]
    assert len(backoffs) == 1 and "Exceeded maximum limit" in backoffs[0], backoffs
    assert batch_task_limit.task_state(devstack, blocker) == "COMPLETED"
    assert len(jobs_named(devstack, run_key)) == 1
