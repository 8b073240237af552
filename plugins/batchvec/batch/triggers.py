"""Async wait for a batch job: polls the ML Commons task and the SageMaker job behind it
(batch/job.py's `JobWatcher`, one per trigger run, polled in a thread).

Lives in plugins/ because the triggerer imports triggers from outside the dag bundle. It has
no side effects (a trigger may run more than once): cancelling on timeout is the operator's
job when it resumes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from batchvec.batch.job import JobWatcher, cancel_job
from batchvec.hooks.mlcommons import JobStatus
from batchvec.util.redact import scrub

log = logging.getLogger(__name__)

# Give up only after this many polls in a row AND this long with neither ML Commons nor
# SageMaker answering: a restart of either (minutes) must not fail a long job.
MAX_BLIND_POLLS = 30
MAX_BLIND_SECONDS = 600.0


class BatchJobTrigger(BaseTrigger):
    """Polls one transform job until it ends or `deadline` passes; fires one event (success,
    failed, timeout, error) that BatchPredictOperator resumes on.

    :param job_name: the SageMaker transform job
    :param task_id: its ML Commons task (None: poll SageMaker alone)
    :param opensearch_conn_id: the domain with ML Commons
    :param aws_conn_id: reads the SageMaker job (None: ML Commons alone)
    :param poll_interval: seconds between polls
    :param deadline: epoch seconds; the wait_timeout, kept across triggerer restarts
    :param started_at: epoch seconds of the submit, for the elapsed time in events
    :param model_id: the remote model, for `refresh_keys`
    :param refresh_keys: put the AWS connection's keys on the model's connector whenever they
        change (connectors.KeyRefresher): ML Commons never refreshes them itself
    """

    def __init__(self, *, job_name: str, task_id: str | None, opensearch_conn_id: str,
                 aws_conn_id: str | None, poll_interval: float, deadline: float,
                 started_at: float, model_id: str | None = None,
                 refresh_keys: bool = False):
        super().__init__()
        # With `refresh_keys`, the AWS connection's keys are put on the model's connector
        # whenever they change (connectors.KeyRefresher): ML Commons never refreshes them.
        self.model_id = model_id
        self.refresh_keys = bool(refresh_keys and model_id and aws_conn_id)
        self.job_name = job_name
        self.task_id = task_id
        self.opensearch_conn_id = opensearch_conn_id
        self.aws_conn_id = aws_conn_id
        self.poll_interval = poll_interval
        self.deadline = deadline  # epoch seconds: the wait_timeout, across trigger restarts
        self.started_at = started_at

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return ("batchvec.batch.triggers.BatchJobTrigger", {
            "job_name": self.job_name, "task_id": self.task_id,
            "opensearch_conn_id": self.opensearch_conn_id, "aws_conn_id": self.aws_conn_id,
            "poll_interval": self.poll_interval, "deadline": self.deadline,
            "started_at": self.started_at, "model_id": self.model_id,
            "refresh_keys": self.refresh_keys,
        })

    def _event(self, status: str, job: JobStatus | None, message: str) -> TriggerEvent:
        return TriggerEvent({
            "status": status, "job_name": self.job_name, "task_id": self.task_id,
            "state": job.state if job else None, "remote_status": job.remote_status if job else None,
            "failure_reason": job.failure_reason if job else None, "message": message,
            "elapsed": round(time.time() - self.started_at, 1),
        })

    async def on_kill(self) -> None:
        """The user killed the deferred task (mark failed / clear): stop the job too. Not
        called on triggerer restarts, where the wait simply moves to another triggerer."""
        await asyncio.to_thread(cancel_job, self.opensearch_conn_id, self.aws_conn_id,
                                self.job_name, self.task_id)

    async def _refresh_keys(self, refresher) -> None:
        try:
            if await asyncio.to_thread(refresher.push_if_changed):
                self.log.info("job %s: put fresh AWS keys on model %s (%d so far)",
                              self.job_name, self.model_id, refresher.pushes)
        except Exception as exc:  # the poll below says what that costs
            self.log.warning("job %s: could not put fresh AWS keys on model %s: %s",
                             self.job_name, self.model_id, scrub(exc))

    async def run(self):
        from batchvec.model.connectors import KeyRefresher

        last_state = None
        blind, blind_since = 0, 0.0
        refresher = (KeyRefresher(self.aws_conn_id, self.opensearch_conn_id, self.model_id)
                     if self.refresh_keys else None)
        watcher = JobWatcher(self.opensearch_conn_id, self.aws_conn_id, self.task_id,
                             self.job_name)
        while True:
            if refresher is not None:
                await self._refresh_keys(refresher)
            try:
                job = await asyncio.to_thread(watcher.poll)
                blind = 0
            except Exception as exc:
                blind += 1
                blind_since = blind_since if blind > 1 else time.time()
                self.log.warning("poll %d of %s failed: %s", blind, self.job_name, scrub(exc))
                if blind >= MAX_BLIND_POLLS and time.time() - blind_since >= MAX_BLIND_SECONDS:
                    yield self._event("error", None,
                                      f"job {self.job_name} unreachable: {scrub(exc)}")
                    return
                job = None
            elapsed = time.time() - self.started_at
            if job and (job.state, job.remote_status) != last_state:
                self.log.info("job %s: %s (SageMaker %s) after %.0fs", self.job_name, job.state,
                              job.remote_status or "-", elapsed)
                last_state = (job.state, job.remote_status)
            if job and job.done:
                yield self._event("success", job, f"job {self.job_name} completed in {elapsed:.0f}s")
                return
            if job and job.failed:
                yield self._event("failed", job, f"job {self.job_name} ended {job.state}: "
                                  f"{job.failure_reason or 'no reason given'}")
                return
            if time.time() >= self.deadline:
                state = f"{job.state} (SageMaker {job.remote_status or '-'})" if job else "unknown"
                yield self._event("timeout", job, f"job {self.job_name} still {state} after "
                                  f"{elapsed:.0f}s, past the wait_timeout")
                return
            await asyncio.sleep(min(self.poll_interval, max(0.1, self.deadline - time.time())))
