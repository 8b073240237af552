"""Pure parts of planning, blueprints and job status: no servers."""

from __future__ import annotations

import json

import pytest

from batchvec import connectors, mlcommons, plan
from batchvec.connectors import ModelSpec

SPEC = ModelSpec(role_arn="arn:aws:iam::123456789012:role/ml-sagemaker", region="eu-west-1",
                 model_name="minilm-embedder", endpoint_name="minilm-rt")


def resolve(tmp_path, **params):
    source = tmp_path / "in.jsonl"
    source.write_text('{"id": 1, "text": "x"}\n')
    return plan.resolve_plan({"input_uri": str(source), **params}, dag_id="batch_embeddings",
                             run_id="manual__2026-02-01T00:00:00+00:00", ds="2026-02-01",
                             region="eu-west-1")


def test_default_input_is_the_runs_own_day_partition():
    p = plan.resolve_plan({}, dag_id="d", run_id="scheduled__2026-03-02T00:00:00+00:00",
                          ds="2026-03-02", region="us-east-1")
    assert p.input_uri == "s3://batchvec/input/ds=2026-03-02/"
    assert p.run_prefix == f"runs/{p.run_key}"
    assert p.shards == 2  # 2 x one instance


def test_same_run_same_plan_names_other_run_other_names(tmp_path):
    a, b = resolve(tmp_path), resolve(tmp_path)
    assert a == b
    other = plan.resolve_plan({"input_uri": a.input_uri}, dag_id="batch_embeddings",
                              run_id="manual__2026-02-02T00:00:00+00:00", ds="2026-02-02",
                              region="eu-west-1")
    assert other.run_key != a.run_key and other.run_prefix != a.run_prefix


@pytest.mark.parametrize("params, fragment", [
    ({"input_uri": "s3://UPPER_bucket/x"}, "input_uri"),
    ({"input_uri": "ftp://host/x"}, "neither s3:// nor a local path"),
    ({"input_uri": "/no/such/file.jsonl"}, "does not exist"),
    ({"index_name": "Bad Index"}, "index_name"),
    ({"index_name": "_private"}, "index_name"),
    ({"shards": -1}, "shards"),
    ({"instance_count": 0}, "instance_count"),
    ({"max_reject_ratio": 2}, "max_reject_ratio"),
    ({"input_format": "xml"}, "input_format"),
    ({"metadata_fields": ["_id"]}, "metadata_fields"),
    ({"sagemaker_model_name": 'x", "injected": "y'}, "sagemaker_model_name"),
    ({"connector_role_arn": "not-an-arn"}, "role_arn"),
    ({"instance_type": "m5.large"}, "instance_type"),
])
def test_bad_params_fail_before_anything_runs(tmp_path, params, fragment):
    source = tmp_path / "in.jsonl"
    source.write_text("{}\n")
    params = {"input_uri": str(source), **params}
    with pytest.raises(ValueError, match="invalid params") as err:
        plan.resolve_plan(params, dag_id="d", run_id="r", ds="2026-01-01", region="us-east-1")
    assert fragment in str(err.value)


def test_all_bad_params_reported_at_once(tmp_path):
    with pytest.raises(ValueError) as err:
        resolve(tmp_path, index_name="BAD", shards=-2, space_type="hamming")
    text = str(err.value)
    assert "index_name" in text and "shards" in text and "space_type" in text


def test_blueprint_renders_typed_values_and_leaves_ml_commons_placeholders():
    definition = connectors.connector_definition(SPEC)
    params = definition["parameters"]
    assert params["TransformResources"] == {"InstanceCount": 1, "InstanceType": "ml.m5.xlarge"}
    assert params["sagemaker_api_url"] == "https://api.sagemaker.eu-west-1.amazonaws.com"
    assert definition["credential"] == {"roleArn": SPEC.role_arn}
    batch = next(a for a in definition["actions"] if a["action_type"] == "batch_predict")
    assert batch["url"] == "${parameters.sagemaker_api_url}/CreateTransformJob"
    assert "${parameters.TransformInput}" in batch["request_body"]
    assert {a["action_type"] for a in definition["actions"]} == {
        "predict", "batch_predict", "batch_predict_status", "cancel_batch_predict"}
    assert "${" not in json.dumps(definition).replace("${parameters.", "")


def test_connector_name_follows_the_definition():
    same = connectors.connector_definition(SPEC)["name"]
    assert connectors.connector_definition(SPEC)["name"] == same
    bigger = ModelSpec(**{**SPEC.__dict__, "instance_type": "ml.g5.xlarge"})
    assert connectors.connector_definition(bigger)["name"] != same
    local = ModelSpec(**{**SPEC.__dict__, "sagemaker_api_url": "http://127.0.0.1:18090"})
    assert connectors.connector_definition(local)["name"] != same


def test_task_status_trusts_sagemaker_when_ml_commons_lags():
    # 2.18 leaves a failed job RUNNING: the client reads the remote status itself.
    task = {"state": "RUNNING", "remote_job": {"TransformJobStatus": "Failed",
                                                "FailureReason": "ClientError: bad input"}}
    status = mlcommons.status_from_task(task)
    assert status.failed and status.failure_reason == "ClientError: bad input"
    assert mlcommons.status_from_task({"state": "COMPLETED", "remote_job": {}}).done
    running = mlcommons.status_from_task({"state": "RUNNING",
                                          "remote_job": {"TransformJobStatus": "InProgress"}})
    assert not running.terminal
    stopping = mlcommons.status_from_sagemaker({"TransformJobStatus": "Stopping"})
    assert stopping.state == "CANCELLING" and not stopping.terminal
    assert mlcommons.status_from_sagemaker({"TransformJobStatus": "Stopped"}).failed
