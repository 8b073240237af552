"""The hash embedder through the devstack SageMaker: a model whose HF_MODEL_ID names
batchvec/hash-embedder-256 (seed.ensure_hash_model) embeds with HashEmbedder in transform jobs
and on its endpoint, vector for vector (the vectors are exact, so is the comparison)."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from devstack import seed
from devstack.model import HashEmbedder
from tests.helpers.sagemaker_helpers import (
    job_request,
    keys,
    put_jsonl,
    read_lines,
    unique_name,
    wait,
)

pytestmark = [pytest.mark.devstack]

NAME = "hash-embedder-256"
TEXTS = ["a cat napping in the sun", "Stock markets fell sharply after the decision.",
         "ünïcödé ✓ naïve café", "?!", "the the THE the"]


@pytest.fixture(scope="module")
def hash_model(devstack):
    first = seed.ensure_hash_model(devstack.endpoints, NAME)
    assert seed.ensure_hash_model(devstack.endpoints, NAME) == first  # idempotent
    return first


def test_model_names_the_hash_embedder(devstack, hash_model):
    model_name, endpoint = hash_model
    assert (model_name, endpoint) == (NAME, f"devstack-{NAME}")
    desc = devstack.boto3_client("sagemaker").describe_model(ModelName=model_name)
    assert desc["PrimaryContainer"]["Environment"] == {"HF_MODEL_ID": seed.HASH_MODELS[NAME][0]}
    assert "ModelDataUrl" not in desc["PrimaryContainer"]  # in-process: no model container


def test_transform_job_embeds_with_hash_embedder(devstack, hash_model):
    model_name, _ = hash_model
    s3, sm = devstack.s3.client(), devstack.boto3_client("sagemaker")
    bucket = unique_name("hash")
    s3.create_bucket(Bucket=bucket)
    records = [{"_id": f"d{i}", "text": text} for i, text in enumerate(TEXTS)]
    put_jsonl(s3, bucket, "in/docs.jsonl", records)
    name = unique_name("hash")
    sm.create_transform_job(**job_request(name, bucket, ModelName=model_name))
    desc = wait(sm, name)
    assert desc["TransformJobStatus"] == "Completed", desc.get("FailureReason")

    assert keys(s3, bucket, "out/") == ["out/docs.jsonl.out"]
    lines = read_lines(s3, bucket, "out/docs.jsonl.out")
    assert [line["_id"] for line in lines] == [r["_id"] for r in records]
    got = np.array([line["SageMakerOutput"][0] for line in lines], dtype=np.float32)
    assert got.shape == (len(TEXTS), 256)
    assert np.array_equal(got, HashEmbedder(256).embed(TEXTS))


def test_endpoint_embeds_with_hash_embedder(devstack, hash_model):
    _, endpoint = hash_model
    sm, rt = devstack.boto3_client("sagemaker"), devstack.boto3_client("sagemaker-runtime")
    deadline = time.monotonic() + 30
    while (status := sm.describe_endpoint(EndpointName=endpoint)["EndpointStatus"]) != "InService":
        assert status == "Creating" and time.monotonic() < deadline, status
        time.sleep(0.2)

    def embed(payload) -> np.ndarray:
        resp = rt.invoke_endpoint(EndpointName=endpoint, Body=json.dumps(payload).encode(),
                                  ContentType="application/json", Accept="application/json")
        return np.array(json.loads(resp["Body"].read()), dtype=np.float32)

    want = HashEmbedder(256).embed(TEXTS)
    assert np.array_equal(embed(TEXTS), want)
    assert np.array_equal(embed({"inputs": TEXTS[1]}), want[1:2])
