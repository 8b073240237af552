"""AWS clients from the Airflow connection (the amazon provider's AwsBaseHook: its credential
chain, region and endpoint overrides), so no task builds a boto3 client of its own."""

from __future__ import annotations

from batchvec.settings import AWS_CONN_ID


def aws_hook(client_type: str):
    from airflow.providers.amazon.aws.hooks.base_aws import AwsBaseHook

    return AwsBaseHook(aws_conn_id=AWS_CONN_ID, client_type=client_type)


def s3_client():
    return aws_hook("s3").conn
