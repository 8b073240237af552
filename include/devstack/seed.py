"""What a user sets up once in their AWS account, done for the devstack the way the README
tells users to do it: `python -m batchvec.sagemaker_model` (the package with batchvec's
inference code uploaded to S3, the SageMaker model, and the real-time endpoint neural
queries use). Rerunning it reuses everything (same package hash)."""

from __future__ import annotations

import boto3

DEFAULT_MODEL = "minilm-embedder"
DEFAULT_ENDPOINT = "devstack-minilm"
EXECUTION_ROLE = "arn:aws:iam::000000000000:role/devstack-sagemaker-execution"


def clients(endpoints: dict) -> tuple:
    kw = dict(region_name=endpoints["region"], aws_access_key_id=endpoints["aws_access_key_id"],
              aws_secret_access_key=endpoints["aws_secret_access_key"])
    return (boto3.client("s3", endpoint_url=endpoints["s3"], **kw),
            boto3.client("sagemaker", endpoint_url=endpoints["sagemaker"], **kw))


def ensure_sagemaker_model(endpoints: dict, name: str = DEFAULT_MODEL,
                           endpoint: str | None = DEFAULT_ENDPOINT, quiet: bool = True) -> str:
    from batchvec.sagemaker_model.cli import main

    argv = ["--name", name, "--bucket", endpoints["bucket"], "--role-arn", EXECUTION_ROLE,
            "--region", endpoints["region"]]
    if endpoint:
        argv += ["--endpoint", endpoint]
    main(argv, clients=clients(endpoints), say=None if not quiet else (lambda msg: None))
    return name
