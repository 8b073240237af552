"""One transform job through ML Commons: the `_batch_predict` request, and observing or
cancelling the job (its ML Commons task and the SageMaker job behind it).

Synchronous and free of Airflow's context: the operator submits and attaches with these, the
trigger polls through one `JobWatcher` per run, in a thread.
"""

from __future__ import annotations

import logging

from batchvec.hooks import mlcommons, sagemaker
from batchvec.hooks.mlcommons import JobStatus
from batchvec.hooks.opensearch import OpenSearchDomainHook
from batchvec.plan import naming
from batchvec.plan.transform_settings import CONTENT_TYPES
from batchvec.util.redact import scrub

log = logging.getLogger(__name__)

MAX_JOB_ATTEMPTS = 20
INPUT_DATA_TYPES = ("S3Prefix", "ManifestFile")


class BatchJobFailed(Exception):
    """The job ended Failed or Stopped, ran past wait_timeout (cancelled), or could not be
    submitted (its name taken by a job this run cannot read, throttled past the window)."""


def transform_parameters(job_name: str, input_s3_uri: str, output_s3_uri: str,
                         content_type: str = "application/jsonlines",
                         accept: str = "application/jsonlines",
                         input_data_type: str = "S3Prefix") -> dict:
    """`_batch_predict` parameters. ML Commons pastes them into the connector's request
    template, so each user-derived value is checked against an allow-list first.
    application/jsonlines by default: the stock toolkit's application/json decoder fails a
    MultiRecord body ("Extra data"); batchvec's inference.py reads both. `input_data_type`
    ManifestFile: `input_s3_uri` is a manifest listing the job's input objects."""
    naming.validate_job_name(job_name)
    if input_data_type not in INPUT_DATA_TYPES:
        raise ValueError(f"input_data_type: {input_data_type!r} not one of {INPUT_DATA_TYPES}")
    naming.validate_request_s3_uri(input_s3_uri)
    naming.validate_request_s3_uri(output_s3_uri)
    for name, value in (("content_type", content_type), ("accept", accept)):
        if value not in CONTENT_TYPES:
            raise ValueError(f"{name}: {value!r} not one of {CONTENT_TYPES}")
    return {
        "TransformJobName": job_name,
        "TransformInput": {
            "ContentType": content_type, "SplitType": "Line",
            "DataSource": {"S3DataSource": {"S3DataType": input_data_type, "S3Uri": input_s3_uri}},
        },
        "TransformOutput": {"S3OutputPath": output_s3_uri, "Accept": accept,
                            "AssembleWith": "Line"},
    }


class JobWatcher:
    """Observes one job with clients made once (the trigger polls through one per run, not
    new hooks on every poll). A client whose call failed is dropped and made again at the
    next poll: a changed connection or credentials that cannot refresh are picked up."""

    def __init__(self, opensearch_conn_id: str, aws_conn_id: str | None, task_id: str | None,
                 job_name: str):
        self.opensearch_conn_id, self.aws_conn_id = opensearch_conn_id, aws_conn_id
        self.task_id, self.job_name = task_id, job_name
        self._opensearch: OpenSearchDomainHook | None = None
        self._sagemaker = None

    def poll(self) -> JobStatus:
        """One synchronous observation. SageMaker's own status wins when we can read it: it
        is authoritative, and older ML Commons releases map failed jobs to RUNNING."""
        task_status = sm_status = None
        errors = []
        if self.task_id:
            try:
                if self._opensearch is None:
                    self._opensearch = OpenSearchDomainHook(self.opensearch_conn_id, max_retries=1)
                task_status = mlcommons.status_from_task(
                    mlcommons.get_task(self._opensearch, self.task_id))
            except Exception as exc:  # keep polling through blips; counted by the caller
                self._opensearch = None
                errors.append(f"ML Commons: {scrub(exc)}")
                # Said even when SageMaker answers: ML Commons' own refreshes failing (say,
                # with expired keys) end in UNREACHABLE after ten of them.
                log.warning("ML Commons could not refresh task %s: %s", self.task_id, scrub(exc))
        if self.aws_conn_id:
            try:
                if self._sagemaker is None:
                    self._sagemaker = sagemaker.client(self.aws_conn_id)
                sm_status = mlcommons.status_from_sagemaker(
                    self._sagemaker.describe_transform_job(TransformJobName=self.job_name))
            except Exception as exc:
                self._sagemaker = None
                errors.append(f"SageMaker: {scrub(exc)}")  # AWS echoes the signed token
        if sm_status and (sm_status.terminal or not task_status or not task_status.terminal):
            return sm_status
        if task_status:
            return task_status
        raise ConnectionError("; ".join(errors) or "nothing to poll")


def poll_job(opensearch_conn_id: str, aws_conn_id: str | None, task_id: str | None,
             job_name: str) -> JobStatus:
    """One observation with clients made for it (the operator's look at an attached job)."""
    return JobWatcher(opensearch_conn_id, aws_conn_id, task_id, job_name).poll()


def cancel_job(opensearch_conn_id: str, aws_conn_id: str | None, job_name: str,
               task_id: str | None) -> None:
    """Stop the remote job (through ML Commons when it has a task), so nothing runs that
    nobody waits for. Errors are logged, not raised: the caller is already failing."""
    if task_id:
        try:
            mlcommons.cancel_task(OpenSearchDomainHook(opensearch_conn_id), task_id)
            log.warning("cancelled transform job %s (ML Commons task %s)", job_name, task_id)
            return
        except Exception as exc:  # e.g. ML Commons 3.6 refusing a private-address endpoint
            log.warning("ML Commons could not cancel task %s: %s; stopping the job in "
                        "SageMaker directly", task_id, scrub(exc))
    if not aws_conn_id:
        log.error("could not cancel job %s: no AWS connection to stop it with (stop it by "
                  "hand)", job_name)
        return
    try:
        sagemaker.stop_transform_job(aws_conn_id, job_name)
        log.warning("cancelled transform job %s", job_name)
    except Exception as exc:
        log.error("could not cancel job %s: %s (stop it by hand)", job_name, scrub(exc))
