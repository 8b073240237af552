"""Driving BatchPredictOperator and its trigger on the devstack as Airflow does, shared by
tests/integration/test_batch_job.py and tests/integration/test_expiring_credentials.py."""

from __future__ import annotations

import asyncio
import json
import uuid

import pytest
from airflow.exceptions import TaskDeferred

from batchvec.batch.operators import BatchPredictOperator


def operator(devstack, run_key: str, model_id: str, **kwargs) -> BatchPredictOperator:
    s3 = devstack.s3.client()
    s3.put_object(Bucket=devstack.s3.bucket, Key=f"jobs/{run_key}/input/part-0.jsonl",
                  Body=b"\n".join(json.dumps({"_id": str(i), "text": f"doc {i}"}).encode()
                                  for i in range(5)))
    return BatchPredictOperator(
        task_id=f"wait_{run_key}", model_id=model_id, run_key=run_key,
        input_s3_uri=f"s3://{devstack.s3.bucket}/jobs/{run_key}/input/",
        output_s3_uri=f"s3://{devstack.s3.bucket}/jobs/{run_key}/output/",
        poll_interval=0.3, **kwargs)


def deferred_event(op: BatchPredictOperator, **overrides) -> dict:
    """execute() must defer; run the trigger as the triggerer would (with `overrides` on its
    kwargs), return its event."""
    with pytest.raises(TaskDeferred) as deferred:
        op.execute({})
    trigger = deferred.value.trigger
    cls_path, kwargs = trigger.serialize()  # what the triggerer stores and rebuilds from
    assert cls_path == "batchvec.batch.triggers.BatchJobTrigger"
    kwargs = {**kwargs, **overrides}

    async def first_event():
        async for event in type(trigger)(**kwargs).run():
            return event.payload

    return asyncio.run(first_event())


def jobs_named(devstack, prefix: str) -> list[dict]:
    sm = devstack.boto3_client("sagemaker")
    return [j for j in sm.list_transform_jobs(MaxResults=100)["TransformJobSummaries"]
            if j["TransformJobName"].startswith(prefix)]


def key() -> str:
    return f"t-{uuid.uuid4().hex[:10]}"
