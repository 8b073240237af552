"""What a user sets up once in their AWS account, done for the devstack: the SageMaker model
that transform jobs run (on AWS: a model with the embedding container and an execution role)."""

from __future__ import annotations

import boto3

DEFAULT_MODEL = "minilm-embedder"


def ensure_sagemaker_model(endpoints: dict, name: str = DEFAULT_MODEL) -> str:
    client = boto3.client(
        "sagemaker", endpoint_url=endpoints["sagemaker"], region_name=endpoints["region"],
        aws_access_key_id=endpoints["aws_access_key_id"],
        aws_secret_access_key=endpoints["aws_secret_access_key"],
    )
    try:
        client.describe_model(ModelName=name)
    except client.exceptions.ClientError:
        client.create_model(
            ModelName=name,
            ExecutionRoleArn="arn:aws:iam::000000000000:role/devstack-sagemaker-execution",
            PrimaryContainer={"Image": "devstack/sentence-transformers:cpu",
                              "Environment": {"HF_MODEL_ID": "sentence-transformers/all-MiniLM-L6-v2"}},
        )
    return name
