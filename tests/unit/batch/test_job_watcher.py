"""batch.job.JobWatcher and the trigger's use of it: clients made once per trigger run, a
failed client made again. The services are replaced (pure logic); the real clients are
exercised by the batch-job and expiring-credentials tests on the devstack."""

from __future__ import annotations

import asyncio
import time

import pytest

from batchvec.batch import job, triggers


class _SageMaker:
    def __init__(self, states):
        self.states = states

    def describe_transform_job(self, TransformJobName):  # noqa: N803 (boto3's spelling)
        state = self.states.pop(0)
        if isinstance(state, Exception):
            raise state
        return {"TransformJobStatus": state}


@pytest.fixture
def clients(monkeypatch):
    made = {"sagemaker": 0, "opensearch": 0}
    states = []

    def sagemaker_client(conn_id):
        made["sagemaker"] += 1
        return _SageMaker(states)

    def opensearch_hook(conn_id, max_retries=5):
        made["opensearch"] += 1
        return object()

    monkeypatch.setattr(job.sagemaker, "client", sagemaker_client)
    monkeypatch.setattr(job, "OpenSearchDomainHook", opensearch_hook)
    monkeypatch.setattr(job.mlcommons, "get_task", lambda hook, task_id: {"state": "RUNNING"})
    return made, states


def test_one_watcher_polls_with_the_clients_it_made_once(clients) -> None:
    made, states = clients
    states += ["InProgress", "InProgress", "Completed"]
    watcher = job.JobWatcher("opensearch_default", "aws_default", "task-1", "job-1")
    seen = [watcher.poll().remote_status for _ in range(3)]
    assert seen == ["InProgress", "InProgress", "Completed"]
    assert made == {"sagemaker": 1, "opensearch": 1}


def test_a_client_that_failed_is_made_again_at_the_next_poll(clients) -> None:
    made, states = clients
    states += [ConnectionError("reset"), "InProgress"]
    watcher = job.JobWatcher("opensearch_default", "aws_default", None, "job-1")
    with pytest.raises(ConnectionError, match="SageMaker: reset"):
        watcher.poll()
    assert watcher.poll().remote_status == "InProgress"
    assert made["sagemaker"] == 2 and made["opensearch"] == 0  # no task: ML Commons not asked


def test_the_trigger_makes_one_watcher_per_run(clients) -> None:
    made, states = clients
    states += ["InProgress"] * 4 + ["Completed"]
    trigger = triggers.BatchJobTrigger(
        job_name="job-1", task_id=None, opensearch_conn_id="opensearch_default",
        aws_conn_id="aws_default", poll_interval=0.0, deadline=time.time() + 60,
        started_at=time.time())

    async def first_event():
        async for event in trigger.run():
            return event.payload

    event = asyncio.run(first_event())
    assert event["status"] == "success" and event["remote_status"] == "Completed"
    assert made["sagemaker"] == 1 and states == []
