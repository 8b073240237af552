"""SageMaker calls, through the amazon provider's SageMakerHook (the Airflow connection's
credentials, region and endpoint override): transform jobs are read and stopped here only."""

from __future__ import annotations


def _hook(aws_conn_id: str):
    from airflow.providers.amazon.aws.hooks.sagemaker import SageMakerHook

    return SageMakerHook(aws_conn_id=aws_conn_id)


def client(aws_conn_id: str):
    """A boto3 SageMaker client from the connection (refreshable credentials where the
    connection assumes a role), for a caller that makes many calls."""
    return _hook(aws_conn_id).conn


def describe_transform_job(aws_conn_id: str, job_name: str) -> dict:
    return _hook(aws_conn_id).describe_transform_job(job_name)


def stop_transform_job(aws_conn_id: str, job_name: str) -> None:
    _hook(aws_conn_id).conn.stop_transform_job(TransformJobName=job_name)
