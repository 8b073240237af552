"""Contract tests of batchvec's ML Commons client against the devstack's real OpenSearch 3.6
node (ML Commons, k-NN, neural-search) and its SageMaker: ensure_model with the model's own
connector, the blueprint's templates as the real ML Commons fills them, batch tasks through
get_task / status_from_task, JobNameTaken, cancel, throttling (SageMaker's and the batch task
limit), _predict and a neural query, the trusted-endpoint regex and a roleArn-only connector."""

from __future__ import annotations

import dataclasses
import json
import uuid
from contextlib import contextmanager

import numpy as np
import pytest

from batchvec.batch.job import transform_parameters
from batchvec.hooks import mlcommons
from batchvec.hooks.opensearch import OpenSearchDomainHook, OpenSearchError
from batchvec.index import lifecycle
from batchvec.index.bulk_writer import BulkWriter
from batchvec.model import connectors
from devstack import faults
from tests.helpers.contract_helpers import (
    devstack_spec,
    ml_search,
    node_get,
    stage_input,
    unique,
    wait_task,
)
from tests.helpers.dag_helpers import os_session

pytestmark = [pytest.mark.devstack, pytest.mark.airflow]

TEXTS = ["a kitten naps in the sun", "stock markets fell on rate fears",
         "bake bread with flour and yeast", "the rover drove across Mars"]
LIMIT = "plugins.ml_commons.max_batch_inference_tasks"


@pytest.fixture(scope="module")
def hook(airflow_env):
    return OpenSearchDomainHook()


@pytest.fixture(scope="module")
def keys(airflow_env):
    return connectors.aws_connection_keys("aws_default")


@pytest.fixture(scope="module")
def spec(airflow_env):
    # A tag unique to this module: its model is created here, not reused from another test.
    return devstack_spec(airflow_env.endpoints, tags=({"Key": "contract", "Value": uuid.uuid4().hex},))


@pytest.fixture(scope="module")
def model(hook, spec, keys):
    return connectors.ensure_model(hook, spec, keys)


@pytest.fixture
def state(airflow_env):
    faults.clear(airflow_env.state_dir)
    yield airflow_env.state_dir
    faults.clear(airflow_env.state_dir)


@contextmanager
def stalled(state):
    """The next transform job stays InProgress until stopped (no container work)."""
    faults.set_faults(state, stall_job={"count": 1})
    try:
        yield
    finally:
        faults.unset(state, "stall_job")


def submit(hook, model_id, devstack, name, **kw):
    in_uri, out_uri = stage_input(devstack, f"contract/{name}", TEXTS[:2])
    params = transform_parameters(name, in_uri, out_uri, **kw)
    return mlcommons.batch_predict(hook, model_id, params), in_uri, out_uri


def test_ensure_model_creates_then_reuses_one_model_with_its_own_connector(hook, spec, keys, model,
                                                                          airflow_env):
    assert model["model_created"] is True and model["credentials"] == "aws_keys"
    again = connectors.ensure_model(hook, spec, keys)
    assert (again["model_id"], again["model_created"]) == (model["model_id"], False)
    named = ml_search(airflow_env, "models", {"term": {"name.keyword": model["model_name"]}})
    assert [h["_id"] for h in named] == [model["model_id"]]
    got = hook.request("GET", f"/_plugins/_ml/models/{model['model_id']}")[1]
    assert got["model_state"] == "DEPLOYED" and got["algorithm"] == "REMOTE"
    assert "connector_id" not in got  # internal: updatable while deployed
    definition = connectors.connector_definition(spec)
    assert got["connector"]["name"] == definition["name"] == model["model_name"]
    assert [a["action_type"] for a in got["connector"]["actions"]] == [
        "PREDICT", "BATCH_PREDICT", "BATCH_PREDICT_STATUS", "CANCEL_BATCH_PREDICT"]
    # ML Commons keeps connector parameters as strings: objects and lists as compact JSON.
    params = got["connector"]["parameters"]
    assert params["MaxPayloadInMB"] == "1" and json.loads(params["Tags"]) == list(spec.tags)
    assert json.loads(params["ModelClientConfig"]) == {"InvocationsTimeoutInSeconds": 600,
                                                       "InvocationsMaxRetries": 3}


def test_the_node_gives_no_secret_back(hook, model, keys, airflow_env):
    ep = airflow_env.endpoints
    seen = {
        "GET model": hook.request("GET", f"/_plugins/_ml/models/{model['model_id']}")[1],
        "model search": ml_search(airflow_env, "models", {"ids": {"values": [model["model_id"]]}}),
        "stored document": node_get(ep, f"/.plugins-ml-model/_doc/{model['model_id']}"),
    }
    assert "credential" not in seen["GET model"]["connector"]
    stored = seen["stored document"]["_source"]["connector"]["credential"]
    assert set(stored) == {"access_key", "secret_key"}  # kept, but encrypted
    for place, answer in seen.items():
        text = json.dumps(answer)
        assert keys["secret_key"] not in text and keys["access_key"] not in text, place


def test_new_keys_sign_the_very_next_request(hook, model, keys, airflow_env):
    """update_model_credential returns once the deployed model signs with the new keys (the
    node applies them in the background after answering the PUT)."""
    wrong = {"access_key": keys["access_key"], "secret_key": "not-the-devstack-secret"}
    try:
        for _ in range(2):
            mlcommons.update_model_credential(hook, model["model_id"], wrong)
            with pytest.raises(OpenSearchError) as err:
                mlcommons.predict_embeddings(hook, model["model_id"], ["x"])
            assert err.value.status == 403 and "InvalidSignatureException" in err.value.reason
            assert wrong["secret_key"] not in str(err.value)
            mlcommons.update_model_credential(hook, model["model_id"], keys)
            assert len(mlcommons.predict_embeddings(hook, model["model_id"], ["x"])) == 1
    finally:
        mlcommons.update_model_credential(hook, model["model_id"], keys)


def test_a_role_arn_only_connector_is_refused_with_missing_credential(hook, spec):
    managed = dataclasses.replace(spec, credentials="role_arn")
    with pytest.raises(OpenSearchError) as err:
        connectors.ensure_model(hook, managed)
    assert (err.value.status, err.value.type) == (400, "illegal_argument_exception")
    assert err.value.reason == "Missing credential" and "Missing credential" in str(err.value)
    assert mlcommons.find_model(hook, connectors.connector_definition(managed)["name"]) is None


@pytest.mark.parametrize("field", ["sagemaker_api_url", "sagemaker_runtime_url"])
def test_an_untrusted_endpoint_is_refused(hook, spec, keys, field):
    untrusted = dataclasses.replace(spec, **{field: "https://sagemaker.example.com"})
    with pytest.raises(OpenSearchError) as err:
        connectors.ensure_model(hook, untrusted, keys)
    assert (err.value.status, err.value.type) == (400, "illegal_argument_exception")
    assert err.value.reason == "Connector URL is not matching the trusted connector endpoint regex"
    assert mlcommons.find_model(hook, connectors.connector_definition(untrusted)["name"]) is None


def test_the_filled_blueprint_is_the_create_transform_job_sagemaker_runs(hook, spec, keys,
                                                                         airflow_env, state):
    """Every setting from ModelSpec and transform_parameters, through the REAL ML Commons
    templating (numbers, objects, lists), arrives in SageMaker as written."""
    tags = ({"Key": "cost-center", "Value": "search/42"}, {"Key": "team", "Value": "a b+c"})
    custom = dataclasses.replace(
        spec, batch_strategy="SingleRecord", max_payload_mb=4, max_concurrent_transforms=3,
        invocations_timeout_s=90, invocations_max_retries=1, tags=spec.tags + tags,
        instance_count=2, instance_type="ml.c5.2xlarge")
    model_id = connectors.ensure_model(hook, custom, keys)["model_id"]
    name = unique("contract-fields")
    with stalled(state):
        resp, in_uri, out_uri = submit(hook, model_id, airflow_env, name,
                                       content_type="application/json", accept="application/json")
    sagemaker = airflow_env.boto3_client("sagemaker")
    try:
        job = sagemaker.describe_transform_job(TransformJobName=name)
        assert resp["status"] == "CREATED" and resp["remote_job"]["TransformJobArn"] == job["TransformJobArn"]
        assert {k: job[k] for k in ("ModelName", "BatchStrategy", "MaxPayloadInMB",
                                    "MaxConcurrentTransforms", "ModelClientConfig", "DataProcessing",
                                    "TransformInput", "TransformOutput", "TransformResources")} == {
            "ModelName": custom.model_name, "BatchStrategy": "SingleRecord", "MaxPayloadInMB": 4,
            "MaxConcurrentTransforms": 3,
            "ModelClientConfig": {"InvocationsTimeoutInSeconds": 90, "InvocationsMaxRetries": 1},
            "DataProcessing": {"InputFilter": "$.text", "JoinSource": "Input", "OutputFilter": "$"},
            "TransformInput": {"ContentType": "application/json", "SplitType": "Line",
                               "CompressionType": "None",
                               "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": in_uri}}},
            "TransformOutput": {"S3OutputPath": out_uri, "Accept": "application/json",
                                "AssembleWith": "Line"},
            "TransformResources": {"InstanceCount": 2, "InstanceType": "ml.c5.2xlarge"},
        }
        assert sagemaker.list_tags(ResourceArn=job["TransformJobArn"])["Tags"] == list(custom.tags)
    finally:
        mlcommons.cancel_task(hook, resp["task_id"])


def test_a_job_runs_to_completed_through_get_task(hook, model, airflow_env):
    name = unique("contract-run")
    resp, _, out_uri = submit(hook, model["model_id"], airflow_env, name)
    task, seen = wait_task(hook, resp["task_id"], lambda t: mlcommons.status_from_task(t).terminal)
    assert set(seen) <= {"CREATED", "RUNNING", "COMPLETED"} and seen[-1] == "COMPLETED", seen
    status = mlcommons.status_from_task(task)
    assert (status.done, status.remote_status, status.failure_reason) == (True, "Completed", None)
    assert (task["task_type"], task["function_name"], task["model_id"]) == (
        "BATCH_PREDICTION", "REMOTE", model["model_id"])
    assert task["remote_job"]["TransformJobName"] == name
    assert mlcommons.find_batch_task(hook, model["model_id"], name)[0] == resp["task_id"]
    bucket, key = out_uri.removeprefix("s3://").split("/", 1)
    out = airflow_env.s3.client().get_object(Bucket=bucket, Key=key + "part-0.jsonl.out")
    assert len(out["Body"].read().splitlines()) == 2


def test_a_failed_job_carries_sagemakers_reason(hook, model, airflow_env, state):
    faults.set_faults(state, fail_job={"count": 1, "reason": "ClientError: contract failure"})
    resp, _, _ = submit(hook, model["model_id"], airflow_env, unique("contract-fail"))
    task, seen = wait_task(hook, resp["task_id"], lambda t: t["state"] not in ("CREATED", "RUNNING"))
    assert seen[-1] == "FAILED"
    status = mlcommons.status_from_task(task)
    assert status.failed and status.remote_status == "Failed"
    # The node leaves the task's `error` unset: the reason is only in SageMaker's answer.
    assert status.failure_reason == "ClientError: contract failure" and "error" not in task


def test_name_taken_and_cancel(hook, model, airflow_env, state):
    name = unique("contract-cancel")
    with stalled(state):
        resp, _, _ = submit(hook, model["model_id"], airflow_env, name)
    with pytest.raises(mlcommons.JobNameTaken, match="a job with this name already exists"):
        submit(hook, model["model_id"], airflow_env, name)
    tasks = ml_search(airflow_env, "tasks", {"term": {"model_id": model["model_id"]}})
    assert [t["_id"] for t in tasks if t["_source"].get("remote_job", {})
            .get("TransformJobArn", "").endswith("/" + name)] == [resp["task_id"]]  # no 2nd task
    mlcommons.cancel_task(hook, resp["task_id"])
    sagemaker = airflow_env.boto3_client("sagemaker")
    assert sagemaker.describe_transform_job(TransformJobName=name)["TransformJobStatus"] in (
        "Stopping", "Stopped")
    task, seen = wait_task(hook, resp["task_id"], lambda t: t["state"] == "CANCELLED")
    assert set(seen) <= {"RUNNING", "CANCELLING", "CANCELLED"}, seen
    status = mlcommons.status_from_task(task)
    assert status.failed and status.remote_status == "Stopped"
    with pytest.raises(OpenSearchError) as err:  # SageMaker's refusal, passed through
        mlcommons.cancel_task(hook, resp["task_id"])
    assert err.value.status == 400 and "transform job is in status Stopped" in err.value.reason


def test_sagemakers_throttling_is_throttled_and_the_name_stays_free(hook, model, airflow_env, state):
    name = unique("contract-throttle")
    faults.set_faults(state, sagemaker_throttle={"count": 1})
    with pytest.raises(mlcommons.ThrottledError, match="denied due to remote server throttling"):
        submit(hook, model["model_id"], airflow_env, name)
    assert faults.current(state)["sagemaker_throttle"]["count"] == 0  # asked once: no retry
    with stalled(state):  # nothing was created: the operator's retry may reuse the name
        resp, _, _ = submit(hook, model["model_id"], airflow_env, name)
    mlcommons.cancel_task(hook, resp["task_id"])


def test_the_batch_task_limit_is_throttled(hook, model, airflow_env):
    session, url = os_session(airflow_env), airflow_env.endpoints["opensearch"] + "/_cluster/settings"
    assert session.put(url, json={"persistent": {LIMIT: 0}}, timeout=30).ok
    try:
        with pytest.raises(mlcommons.ThrottledError) as err:
            submit(hook, model["model_id"], airflow_env, unique("contract-limit"))
        assert str(err.value) == ("Exceeded maximum limit for BATCH_PREDICTION tasks. To increase "
                                  f"the limit, update the {LIMIT} setting.")
    finally:
        session.put(url, json={"persistent": {LIMIT: None}}, timeout=30).raise_for_status()
    assert LIMIT not in json.dumps(session.get(url, timeout=30).json()["persistent"])


def test_predict_answers_one_vector_per_text_in_order(hook, model):
    vectors = np.asarray(mlcommons.predict_embeddings(hook, model["model_id"], TEXTS))
    assert vectors.shape == (len(TEXTS), 384)
    alone = np.asarray(mlcommons.predict_embeddings(hook, model["model_id"], [TEXTS[2]]))[0]
    cosines = vectors @ alone / (np.linalg.norm(vectors, axis=1) * np.linalg.norm(alone))
    assert int(np.argmax(cosines)) == 2 and cosines[2] > 0.9999


def test_a_neural_query_with_the_model_id_finds_the_nearest_text(hook, model):
    index = unique("contract-neural")
    hook.create_index(index, lifecycle.index_body(384, "embedding", "cosinesimil", "lucene"))
    vectors = mlcommons.predict_embeddings(hook, model["model_id"], TEXTS)
    actions = [(f"d{i}", (json.dumps({"index": {"_index": index, "_id": f"d{i}"}}) + "\n"
                          + json.dumps({"text": t, "embedding": v}) + "\n").encode())
               for i, (t, v) in enumerate(zip(TEXTS, vectors, strict=True))]
    assert BulkWriter(hook.bulk, concurrency=1).write(actions).created == len(TEXTS)
    hook.refresh(index)
    hits = hook.search(index, {"query": {"neural": {"embedding": {
        "query_text": "a cat sleeping in sunshine", "model_id": model["model_id"], "k": 2}}},
        "_source": ["text"]})["hits"]["hits"]
    assert len(hits) == 2 and hits[0]["_id"] == "d0" and hits[0]["_source"] == {"text": TEXTS[0]}
    assert hits[0]["_score"] > hits[1]["_score"]
