"""AWS clients and credentials from an Airflow connection (the amazon provider's AwsBaseHook:
its credential chain, role assumption, region and endpoint overrides), so no other module
builds a boto3 client or session of its own."""

from __future__ import annotations

from batchvec.settings import AWS_CONN_ID


def aws_hook(client_type: str, aws_conn_id: str = AWS_CONN_ID):
    from airflow.providers.amazon.aws.hooks.base_aws import AwsBaseHook

    return AwsBaseHook(aws_conn_id=aws_conn_id, client_type=client_type)


def s3_client(aws_conn_id: str = AWS_CONN_ID):
    """The provider's S3Hook client; s3io streams over it (multipart writer, range reader:
    what S3Hook itself lacks)."""
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

    return S3Hook(aws_conn_id=aws_conn_id).conn


def session(aws_conn_id: str, region: str | None = None):
    """A boto3 session whose credentials botocore refreshes itself (assumed roles, instance
    profiles): hold one for a long wait instead of asking the connection again."""
    return aws_hook("sts", aws_conn_id).get_session(region)


def credentials(aws_conn_id: str):
    """The connection's current credentials (access key, secret key, session token)."""
    return aws_hook("sts", aws_conn_id).get_credentials()


def plain_s3_client(endpoint_url: str | None, region: str):
    """boto3's own credential chain, outside Airflow (the preview CLI's --endpoint-url):
    path-style addressing, which S3-compatible servers such as SeaweedFS need."""
    import boto3
    from botocore.config import Config

    return boto3.client("s3", endpoint_url=endpoint_url, region_name=region,
                        config=Config(s3={"addressing_style": "path"}))
