"""What a user sets up once in their AWS account, done for the devstack the way the README
tells users to do it: `python -m batchvec.model.container` (the package with batchvec's
inference code uploaded to S3, the SageMaker model, and the real-time endpoint neural
queries use). Rerunning it reuses everything (same package hash). Also the BATCHVEC_*
presets and the sample partitions a default run of the DAG reads."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import boto3

DEFAULT_MODEL = "minilm-embedder"
DEFAULT_ENDPOINT = "devstack-minilm"
EXECUTION_ROLE = "arn:aws:iam::000000000000:role/devstack-sagemaker-execution"
# The role ML Commons is told to assume, in the devstack's make-believe account.
CONNECTOR_ROLE_ARN = "arn:aws:iam::000000000000:role/batchvec-sagemaker"
SAMPLE = Path(__file__).resolve().parents[1] / "include" / "sample" / "documents.jsonl"
# SageMaker model name -> (devstack.model registry key its HF_MODEL_ID names, dimension).
HASH_MODELS = {"hash-embedder-256": ("batchvec/hash-embedder-256", 256),
               "hash-embedder-384": ("batchvec/hash-embedder-384", 384)}


def clients(endpoints: dict) -> tuple:
    kw = dict(region_name=endpoints["region"], aws_access_key_id=endpoints["aws_access_key_id"],
              aws_secret_access_key=endpoints["aws_secret_access_key"])
    return (boto3.client("s3", endpoint_url=endpoints["s3"], **kw),
            boto3.client("sagemaker", endpoint_url=endpoints["sagemaker"], **kw))


def ensure_sagemaker_model(endpoints: dict, name: str = DEFAULT_MODEL,
                           endpoint: str | None = DEFAULT_ENDPOINT, quiet: bool = True) -> str:
    from batchvec.model.container.cli import main

    argv = ["--name", name, "--bucket", endpoints["bucket"], "--role-arn", EXECUTION_ROLE,
            "--region", endpoints["region"]]
    if endpoint:
        argv += ["--endpoint", endpoint]
    main(argv, clients=clients(endpoints), say=None if not quiet else (lambda msg: None))
    return name


def pipeline_env() -> dict[str, str]:
    """The BATCHVEC_* presets that point the DAG's params at the devstack (production
    leaves them unset and names its own model, endpoint and role)."""
    return {"BATCHVEC_SAGEMAKER_MODEL": DEFAULT_MODEL,
            "BATCHVEC_SAGEMAKER_ENDPOINT": DEFAULT_ENDPOINT,
            "BATCHVEC_CONNECTOR_ROLE_ARN": CONNECTOR_ROLE_ARN,
            # The node's k-NN plugin comes from Maven without its native (faiss) libraries.
            "BATCHVEC_KNN_ENGINE": "lucene"}


def default_partition_days(today: dt.date | None = None) -> list[str]:
    """The days a default run reads: today (a manual trigger, and the scheduled run that
    unpausing starts) and yesterday (in case the UI's clock is past midnight UTC first)."""
    today = today or dt.datetime.now(dt.UTC).date()
    return [(today - dt.timedelta(days=n)).isoformat() for n in (1, 0)]


def stage_sample_partitions(endpoints: dict, days: list[str], bucket: str | None = None) -> list[str]:
    """Put the sample documents where the DAG's default input_uri looks for these days
    (s3://<bucket>/input/ds=<day>/), leaving a partition that already has objects alone."""
    s3 = clients(endpoints)[0]
    bucket = bucket or endpoints["bucket"]
    written = []
    for day in days:
        prefix = f"input/ds={day}/"
        if s3.list_objects_v2(Bucket=bucket, Prefix=prefix, MaxKeys=1).get("KeyCount"):
            continue
        s3.upload_file(str(SAMPLE), bucket, prefix + SAMPLE.name)
        written.append(f"s3://{bucket}/{prefix}{SAMPLE.name}")
    return written


def ensure_in_process_model(endpoints: dict, name: str = DEFAULT_MODEL,
                            endpoint: str = DEFAULT_ENDPOINT,
                            environment: dict | None = None) -> str:
    """For docker-compose, whose SageMaker stand-in runs no model containers: the model
    without a ModelDataUrl (the stand-in embeds in-process) and its real-time endpoint.
    `environment` is the container's Environment, whose HF_MODEL_ID picks the embedder
    (devstack.model); without one the stand-in uses MiniLM."""
    sm = clients(endpoints)[1]
    container = {"Image": "devstack/in-process-embedder"}
    if environment:
        container["Environment"] = dict(environment)
    try:
        existing = sm.describe_model(ModelName=name)
    except sm.exceptions.ClientError:
        sm.create_model(ModelName=name, ExecutionRoleArn=EXECUTION_ROLE, PrimaryContainer=container)
    else:
        # A model cannot be changed in place: one left with another environment would embed
        # with the wrong model without a word, so say so instead.
        have = (existing.get("PrimaryContainer") or {}).get("Environment") or {}
        if environment is not None and have != container.get("Environment", {}):
            raise RuntimeError(f"SageMaker model {name} exists with Environment {have}, not "
                               f"{environment}: delete it to have it recreated")
    try:
        sm.describe_endpoint(EndpointName=endpoint)
    except sm.exceptions.ClientError:
        sm.create_endpoint_config(EndpointConfigName=endpoint, ProductionVariants=[{
            "VariantName": "main", "ModelName": name, "InitialInstanceCount": 1,
            "InstanceType": "ml.m5.large"}])
        sm.create_endpoint(EndpointName=endpoint, EndpointConfigName=endpoint)
    return name


def ensure_hash_model(endpoints: dict, name: str) -> tuple[str, str]:
    """One of HASH_MODELS as an in-process model (devstack.model's HashEmbedder: exact,
    weightless vectors) and its endpoint `devstack-<name>`; returns (model, endpoint)."""
    key, _dimension = HASH_MODELS[name]
    endpoint = f"devstack-{name}"
    ensure_in_process_model(endpoints, name, endpoint, environment={"HF_MODEL_ID": key})
    return name, endpoint


if __name__ == "__main__":  # docker-compose's airflow-init: python -m devstack.seed
    import os

    key, secret = os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"]
    ensure_in_process_model({"region": os.environ.get("AWS_REGION", "us-east-1"),
                             "aws_access_key_id": key, "aws_secret_access_key": secret,
                             "s3": os.environ["S3_URL"], "sagemaker": os.environ["SAGEMAKER_URL"]})
    print("devstack: SageMaker model and endpoint ready")
