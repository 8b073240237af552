"""Submit an ML Commons batch job (or attach to the one an earlier try made) and wait for it.

The job name is derived from the run key, so a retry finds its own job instead of starting a
second one (XComs are cleared between tries). A job that ended Failed or Stopped is never
resubmitted under the same name: the next attempt gets `<name>-r<n>`. If the name turns out
taken when we submit (a killed try's request landed late), we attach to that job.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from airflow.providers.standard.triggers.temporal import TimeDeltaTrigger
from airflow.sdk import BaseOperator

from batchvec.batch import job_groups
from batchvec.batch.job import (
    MAX_JOB_ATTEMPTS,
    BatchJobFailed,
    cancel_job,
    poll_job,
    transform_parameters,
)
from batchvec.batch.triggers import BatchJobTrigger
from batchvec.hooks import mlcommons
from batchvec.hooks.opensearch import OpenSearchDomainHook
from batchvec.hooks.sagemaker import describe_transform_job
from batchvec.model.connectors import KeyRefresher
from batchvec.plan import naming
from batchvec.util.redact import scrub

log = logging.getLogger(__name__)
class BatchPredictOperator(BaseOperator):
    """Run `_batch_predict` for staged input and wait (deferrable by default) for the job.

    Returns `{"job_name", "task_id", "output_s3_uri", "elapsed", "job_group"}`. On timeout
    the job is cancelled and the task fails; so does a job that ends Failed, with
    SageMaker's reason.

    :param model_id: the ML Commons remote model (ensure_model) whose connector runs the job
    :param run_key: names the job (`naming.transform_job_name`: `-r<n>` after a Failed one)
    :param input_s3_uri: the staged input: an S3 prefix, or with `input_data_type`
        ManifestFile a manifest of the objects (one job per group of shards, job_groups)
    :param job_group: the group this try runs (the DAG maps the task over the groups)
    :param max_parallel_jobs: a group submits a new job only while fewer than this many lower
        groups are unfinished (job_groups.may_submit); it waits deferred, holding no slot
    :param records_to_embed: 0 submits nothing (staging found nothing new or changed)
    :param output_s3_uri: where SageMaker writes the `.out` files (one per input object)
    :param opensearch_conn_id: the OpenSearch domain with ML Commons (OpenSearchDomainHook)
    :param aws_conn_id: reads the SageMaker job directly (its status is authoritative) and
        stops it when ML Commons cannot; None polls ML Commons alone
    :param wait_timeout: seconds (or a templated value) from submit; past it the job is
        cancelled and the task fails
    :param poll_interval: seconds between looks at the job (and between submit-window looks)
    :param submit_retry_window: seconds to keep retrying a `_batch_predict` that ML Commons
        refuses as throttled (`max_batch_inference_tasks`), with backoff
    :param deferrable: wait in the triggerer (BatchJobTrigger) rather than in a worker slot
    :param content_type: ContentType of the job's input (`transform_settings.CONTENT_TYPES`)
    :param accept: Accept of its output, likewise
    :param input_data_type: `S3Prefix` (every object under `input_s3_uri`) or `ManifestFile`
    """

    template_fields: Sequence[str] = ("model_id", "run_key", "input_s3_uri", "output_s3_uri",
                                      "wait_timeout", "content_type", "accept",
                                      "records_to_embed", "max_parallel_jobs")

    def __init__(self, *, model_id: str, run_key: str, input_s3_uri: str, output_s3_uri: str,
                 opensearch_conn_id: str = "opensearch_default", aws_conn_id: str | None = "aws_default",
                 wait_timeout: float | str = 6 * 3600, poll_interval: float = 30.0,
                 submit_retry_window: float = 600.0, deferrable: bool = True,
                 content_type: str = "application/jsonlines",
                 accept: str = "application/jsonlines", records_to_embed: int | None = None,
                 input_data_type: str = "S3Prefix", job_group: int = 0,
                 max_parallel_jobs: int | str | None = None, **kwargs):
        super().__init__(**kwargs)
        self.input_data_type, self.job_group = input_data_type, job_group
        self.max_parallel_jobs = max_parallel_jobs
        # 0: staging found nothing new or changed, so no job is submitted (and nothing paid).
        self.records_to_embed = records_to_embed
        self.content_type, self.accept = content_type, accept
        self.model_id = model_id
        self.run_key = run_key
        self.input_s3_uri = input_s3_uri
        self.output_s3_uri = output_s3_uri
        self.opensearch_conn_id = opensearch_conn_id
        self.aws_conn_id = aws_conn_id
        self.wait_timeout = wait_timeout
        self.poll_interval = poll_interval
        self.submit_retry_window = submit_retry_window
        self.deferrable = deferrable
        self._job: tuple[str, str | None] | None = None
        self._refresher: KeyRefresher | None = None  # set by execute() for aws_keys connectors
        self._attached_state: str | None = None  # state of the job an earlier try made

    # -- submit or attach -----------------------------------------------------------------
    def _existing(self, hook: OpenSearchDomainHook, job_name: str) -> tuple[str | None, str | None] | None:
        """(task_id, current state) of a job with this name, from ML Commons or SageMaker."""
        found = mlcommons.find_batch_task(hook, self.model_id, job_name)
        task_id = found[0] if found else None
        if found is None and self.aws_conn_id:
            try:
                describe_transform_job(self.aws_conn_id, job_name)
            except Exception as exc:  # not found (or no permission): nothing to attach to
                if "ResourceNotFound" not in str(exc) and "ValidationException" not in str(exc):
                    log.warning("DescribeTransformJob %s: %s", job_name, scrub(exc))
                return None
        elif found is None:
            return None
        # _search returns the state as last stored; observe the job now, as the trigger does.
        return task_id, poll_job(self.opensearch_conn_id, self.aws_conn_id, task_id, job_name).state

    def _submit(self, hook: OpenSearchDomainHook, job_name: str) -> str:
        params = transform_parameters(job_name, self.input_s3_uri, self.output_s3_uri,
                                      self.content_type, self.accept, self.input_data_type)
        deadline = time.monotonic() + self.submit_retry_window
        delay = 2.0
        while True:
            if self._refresher is not None:  # ML Commons signs CreateTransformJob with these:
                self._refresher.push_if_changed()  # the look-up (or a backoff) may outlast them
            try:
                resp = mlcommons.batch_predict(hook, self.model_id, params)
                break
            except mlcommons.ThrottledError as exc:
                if time.monotonic() + delay > deadline:
                    raise BatchJobFailed(f"_batch_predict still throttled after "
                                         f"{self.submit_retry_window:.0f}s: {exc}") from None
                log.warning("_batch_predict throttled (%s); retrying in %.0fs", exc, delay)
                time.sleep(delay)
                delay = min(delay * 2, 60.0)
        task_id = resp.get("task_id")
        log.info("submitted transform job %s (ML Commons task %s)", job_name, task_id)
        return task_id

    def submit_or_attach(self, hook: OpenSearchDomainHook,
                         may_submit=lambda: True) -> tuple[str, str | None] | None:
        """The job to wait for: an earlier try's, or a new one. None: a new one is due but
        `may_submit()` says not yet (the submit window is full)."""
        self._attached_state = None
        for attempt in range(1, MAX_JOB_ATTEMPTS + 1):
            job_name = naming.transform_job_name(self.run_key, attempt)
            existing = self._existing(hook, job_name)
            if existing is None:
                if not may_submit():
                    return None
                try:
                    return job_name, self._submit(hook, job_name)
                except mlcommons.JobNameTaken as exc:
                    # An earlier try's request created it after that try died (its POST was
                    # still in flight), between our look-up and our submit: attach to it.
                    existing = self._existing(hook, job_name)
                    if existing is None:
                        raise BatchJobFailed(f"job {job_name} already exists but cannot be "
                                             f"read: {exc}") from None
                    log.warning("job %s appeared while this try submitted it (an earlier "
                                "try's request landed late)", job_name)
            task_id, state = existing
            if state in mlcommons.FAILED_STATES:
                log.info("job %s ended %s on an earlier try; the next attempt gets a new name",
                         job_name, state)
                continue
            log.info("attaching to job %s from an earlier try (state %s)", job_name, state)
            self._attached_state = state
            return job_name, task_id
        raise BatchJobFailed(f"{MAX_JOB_ATTEMPTS} jobs for run {self.run_key} failed; giving up")

    # -- execute ----------------------------------------------------------------------------
    def _may_submit(self, context) -> bool:
        if not self.max_parallel_jobs or context is None or not self.job_group:
            return True
        ti = context["ti"]
        states = ti.get_task_states(dag_id=ti.dag_id, task_ids=[job_groups.JOB_TASK],
                                    run_ids=[ti.run_id]).get(ti.run_id, {})
        if job_groups.may_submit(states, int(self.job_group), int(self.max_parallel_jobs)):
            return True
        log.info("group %s waits: %s lower groups may run at once (max_parallel_jobs)",
                 self.job_group, self.max_parallel_jobs)
        return False

    def execute(self, context, event=None) -> dict:  # event: resumed after a submit wait
        if self.records_to_embed is not None and int(self.records_to_embed) == 0:
            why = "no transform job: every record is unchanged or superseded in the index"
            log.info("%s", why)
            return {"job_name": None, "task_id": None, "output_s3_uri": self.output_s3_uri,
                    "elapsed": 0.0, "skipped": why, "job_group": self.job_group}
        hook = OpenSearchDomainHook(self.opensearch_conn_id)
        refresh_keys = bool(self.aws_conn_id) and \
            hook.target()["connector_credentials"] == "aws_keys"
        if refresh_keys:  # ML Commons signs its calls to SageMaker with the model's keys
            self._refresher = KeyRefresher(self.aws_conn_id, self.opensearch_conn_id, self.model_id)
            self._refresher.push_if_changed()  # before the look-up: it refreshes tasks too
        job = self.submit_or_attach(hook, lambda: self._may_submit(context))
        if job is None:  # look again later, deferred (no worker slot held meanwhile)
            self.defer(trigger=TimeDeltaTrigger(timedelta(seconds=max(1.0, self.poll_interval))),
                       method_name="execute")
        job_name, task_id = job
        self._job = (job_name, task_id)
        started = time.time()
        timeout = float(self.wait_timeout)
        if self._attached_state in mlcommons.DONE_STATES:
            # Nothing to wait for (a retry after the job finished). Not deferring also keeps the
            # retry clear of Airflow's race where a trigger that fires at once makes the
            # scheduler fail the task (apache/airflow#66374, #67287, #71580).
            return self.execute_complete(context, {
                "status": "success", "job_name": job_name, "task_id": task_id, "elapsed": 0.0,
                "message": f"job {job_name} had already completed"})
        if self.deferrable:
            self.defer(
                trigger=BatchJobTrigger(
                    job_name=job_name, task_id=task_id, opensearch_conn_id=self.opensearch_conn_id,
                    aws_conn_id=self.aws_conn_id, poll_interval=self.poll_interval,
                    deadline=started + timeout, started_at=started, model_id=self.model_id,
                    refresh_keys=refresh_keys),
                method_name="execute_complete",
                # A backstop only: the trigger reports the timeout itself so we can cancel.
                timeout=timedelta(seconds=timeout + 10 * self.poll_interval + 300),
            )
        return self._wait_blocking(job_name, task_id, started, timeout, refresh_keys)

    def _wait_blocking(self, job_name: str, task_id: str | None, started: float, timeout: float,
                       refresh_keys: bool = False):
        last = None
        refresher = KeyRefresher(self.aws_conn_id, self.opensearch_conn_id, self.model_id) \
            if refresh_keys else None
        while True:
            if refresher is not None:
                refresher.push_if_changed()
            job = poll_job(self.opensearch_conn_id, self.aws_conn_id, task_id, job_name)
            if job.state != last:
                log.info("job %s: %s after %.0fs", job_name, job.state, time.time() - started)
                last = job.state
            if job.terminal or time.time() >= started + timeout:
                status = "success" if job.done else ("failed" if job.failed else "timeout")
                return self.execute_complete(None, {
                    "status": status, "job_name": job_name, "task_id": task_id,
                    "failure_reason": job.failure_reason, "state": job.state,
                    "elapsed": round(time.time() - started, 1),
                    "message": f"job {job_name} {job.state}"})
            time.sleep(self.poll_interval)

    def execute_complete(self, context, event: dict[str, Any]) -> dict:
        job_name, task_id = event["job_name"], event.get("task_id")
        if event["status"] == "success":
            log.info("%s", event["message"])
            return {"job_name": job_name, "task_id": task_id, "output_s3_uri": self.output_s3_uri,
                    "elapsed": event.get("elapsed"), "job_group": self.job_group}
        if event["status"] in ("timeout", "error"):
            self.cancel(job_name, task_id)
            raise BatchJobFailed(f"{event['message']}: cancelled it")
        raise BatchJobFailed(event["message"])

    def cancel(self, job_name: str, task_id: str | None) -> None:
        cancel_job(self.opensearch_conn_id, self.aws_conn_id, job_name, task_id)

    def on_kill(self) -> None:
        if self._job:
            self.cancel(*self._job)
