"""Pure parts of planning, blueprints and job status: no servers."""

from __future__ import annotations

import json
import secrets

import pytest

from batchvec.hooks import mlcommons
from batchvec.model import connectors
from batchvec.model.connectors import ModelSpec
from batchvec.plan import run_plan
from tests.helpers.paths import REPO

SPEC = ModelSpec(role_arn="arn:aws:iam::123456789012:role/ml-sagemaker", region="eu-west-1",
                 model_name="minilm-embedder", endpoint_name="minilm-rt")  # aws_keys mode


# What a deployment names (production defaults are empty): a model, an endpoint, a role.
REQUIRED = {"sagemaker_model_name": "minilm-embedder", "sagemaker_endpoint_name": "minilm-rt",
            "connector_role_arn": "arn:aws:iam::123456789012:role/ml-sagemaker"}


def resolve(tmp_path, opensearch_service=None, **params):
    source = tmp_path / "in.jsonl"
    source.write_text('{"id": 1, "text": "x"}\n')
    return run_plan.resolve_plan({"input_uri": str(source), **REQUIRED, **params},
                             dag_id="batch_embeddings",
                             run_id="manual__2026-02-01T00:00:00+00:00", ds="2026-02-01",
                             region="eu-west-1", opensearch_service=opensearch_service)


def test_default_input_is_the_runs_own_day_partition():
    p = run_plan.resolve_plan(dict(REQUIRED), dag_id="d",
                          run_id="scheduled__2026-03-02T00:00:00+00:00",
                          ds="2026-03-02", region="us-east-1")
    assert p.input_uri == "s3://batchvec/input/ds=2026-03-02/"
    assert p.run_prefix == f"runs/{p.run_key}"
    assert p.shards == 2  # 2 x one instance


def test_same_run_same_plan_names_other_run_other_names(tmp_path):
    a, b = resolve(tmp_path), resolve(tmp_path)
    assert a == b
    other = run_plan.resolve_plan({"input_uri": a.input_uri, **REQUIRED}, dag_id="batch_embeddings",
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
    params = {"input_uri": str(source), **REQUIRED, **params}
    with pytest.raises(ValueError, match="invalid params") as err:
        run_plan.resolve_plan(params, dag_id="d", run_id="r", ds="2026-01-01", region="us-east-1",
                          connector_credentials="role_arn")
    assert fragment in str(err.value)


def test_all_bad_params_reported_at_once(tmp_path):
    with pytest.raises(ValueError) as err:
        resolve(tmp_path, index_name="BAD", shards=-2, space_type="hamming")
    text = str(err.value)
    assert "index_name" in text and "shards" in text and "space_type" in text


# Index names OpenSearch refuses (MetadataCreateIndexService.validateIndexOrAliasName).
BAD_INDEX_NAMES = ["Docs", "UPPER", "_docs", "-docs", "+docs", ".", "..", "a" * 256, "é" * 128,
                   "", *(f"do{c}cs" for c in '*?"<>| ,#\\:/')]


@pytest.mark.parametrize("name", BAD_INDEX_NAMES)
def test_index_names_opensearch_refuses(tmp_path, name):
    with pytest.raises(ValueError, match="index_name: invalid index name|index_name: index name"):
        resolve(tmp_path, index_name=name)


@pytest.mark.parametrize("name", ["docs", "docs-2026.03", "a" * 255, "é" * 127, "my_index", ".hidden"])
def test_index_names_opensearch_accepts(tmp_path, name):
    assert resolve(tmp_path, index_name=name).index_name == name


@pytest.mark.parametrize("params, fragment", [
    ({"input_uri": "s3://"}, "input_uri: S3 URI has no bucket"),
    ({"input_uri": "s3://ab/x"}, "input_uri: bad S3 URI"),
    ({"input_uri": "s3://bucket/" + "k" * 1025}, "key longer than 1024 bytes"),
    ({"input_uri": 5}, "input_uri: must be a string"),
    ({"bucket": "No_Such"}, "bucket: invalid S3 bucket name"),
    ({"bucket": None}, "bucket: must be a string"),
    ({"shards": -1}, "shards: must be an integer in 0..256, got -1"),
    ({"shards": 257}, "shards: must be an integer in 0..256, got 257"),
    ({"shards": 2.5}, "shards: must be an integer"),
    ({"shards": True}, "shards: must be an integer"),
    ({"instance_count": 0}, "instance_count: must be an integer in 1..100, got 0"),
    ({"instance_count": "2"}, "instance_count: must be an integer"),
    ({"bulk_concurrency": 0}, "bulk_concurrency: must be an integer in 1..64"),
    ({"wait_timeout": 0}, "wait_timeout: must be an integer >= 1"),
    ({"max_reject_ratio": -0.1}, "max_reject_ratio: must be a number between 0 and 1"),
    ({"max_reject_ratio": 1.01}, "max_reject_ratio"),
    ({"max_reject_ratio": float("nan")}, "max_reject_ratio"),
    ({"max_reject_ratio": "0.1"}, "max_reject_ratio"),
    ({"id_field": "body", "text_field": "body"}, "id_field and text_field are both 'body'"),
    ({"text_field": ""}, "text_field must be a non-empty string"),
    ({"vector_field": "text"}, "vector_field"),
    ({"metadata_fields": "topic"}, "metadata_fields: must be a array"),
    ({"metadata_fields": ["a", "a"]}, "listed twice"),
    ({"metadata_fields": ["embedding"]}, "metadata_fields"),
    ({"keep_staging": "false"}, "keep_staging: must be a boolean"),
])
def test_params_that_make_no_sense(tmp_path, params, fragment):
    with pytest.raises(ValueError, match="invalid params") as err:
        resolve(tmp_path, **params)
    assert fragment in str(err.value)


def test_one_message_names_every_bad_param_once(tmp_path):
    bad = {"input_uri": "s3://Bad_Bucket/in/", "index_name": "_Bad*Index", "bucket": "x",
           "shards": -3, "instance_count": 0, "max_reject_ratio": 7, "space_type": "hamming",
           "id_field": "t", "text_field": "t", "keep_outputs": "no"}
    with pytest.raises(ValueError) as err:
        resolve(tmp_path, **bad)
    lines = str(err.value).splitlines()
    assert lines[0] == "invalid params:"
    named = [line.strip().split(":")[0] for line in lines[1:]]
    assert sorted(named) == sorted(["input_uri", "index_name", "bucket", "shards", "instance_count",
                                    "max_reject_ratio", "space_type", "id_field/text_field",
                                    "keep_outputs"])


def test_blueprint_renders_typed_values_and_leaves_ml_commons_placeholders():
    definition = connectors.connector_definition(SPEC)
    params = definition["parameters"]
    assert params["TransformResources"] == {"InstanceCount": 1, "InstanceType": "ml.m5.xlarge"}
    assert params["sagemaker_api_url"] == "https://api.sagemaker.eu-west-1.amazonaws.com"
    assert definition["credential"] == {"access_key": "<from the Airflow AWS connection>",
                                        "secret_key": "<from the Airflow AWS connection>"}
    managed = connectors.connector_definition(ModelSpec(**{**SPEC.__dict__, "credentials": "role_arn"}))
    assert managed["credential"] == {"roleArn": SPEC.role_arn}
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


# --- defects found trying the pipeline as a new user (issue 10) -----------------------------

@pytest.fixture
def no_presets(monkeypatch):
    for name in ("BATCHVEC_SAGEMAKER_MODEL", "BATCHVEC_SAGEMAKER_ENDPOINT",
                 "BATCHVEC_CONNECTOR_ROLE_ARN"):
        monkeypatch.delenv(name, raising=False)


def test_production_defaults_point_at_nothing_and_plan_names_what_is_missing(tmp_path, no_presets):
    schema = run_plan.param_schema()
    for name in ("sagemaker_model_name", "sagemaker_endpoint_name", "connector_role_arn"):
        assert schema[name]["default"] == "", name
    assert "devstack" not in json.dumps(schema) and "000000000000" not in json.dumps(schema)
    source = tmp_path / "in.jsonl"
    source.write_text('{"id": 1, "text": "x"}\n')
    with pytest.raises(ValueError) as exc:
        run_plan.resolve_plan({"input_uri": str(source)}, dag_id="d", run_id="manual__x",
                          ds="2026-02-01", region="eu-west-1", connector_credentials="role_arn")
    message = str(exc.value)
    for name, env in (("sagemaker_model_name", "BATCHVEC_SAGEMAKER_MODEL"),
                      ("sagemaker_endpoint_name", "BATCHVEC_SAGEMAKER_ENDPOINT"),
                      ("connector_role_arn", "BATCHVEC_CONNECTOR_ROLE_ARN")):
        assert f"{name}: not set" in message and env in message
        assert message.count(f"{name}:") == 1, message  # not also "is not valid"


def test_a_deployment_presets_the_required_values_from_its_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("BATCHVEC_SAGEMAKER_MODEL", "prod-embedder")
    monkeypatch.setenv("BATCHVEC_SAGEMAKER_ENDPOINT", "prod-rt")
    monkeypatch.setenv("BATCHVEC_CONNECTOR_ROLE_ARN", "arn:aws:iam::123456789012:role/ml")
    source = tmp_path / "in.jsonl"
    source.write_text('{"id": 1, "text": "x"}\n')
    p = run_plan.resolve_plan({"input_uri": str(source)}, dag_id="d", run_id="manual__x",
                          ds="2026-02-01", region="eu-west-1")
    assert (p.model_spec.model_name, p.model_spec.endpoint_name) == ("prod-embedder", "prod-rt")


def test_opensearch_serverless_is_refused_with_the_reason(tmp_path):
    with pytest.raises(ValueError) as exc:
        resolve(tmp_path, opensearch_service="aoss")
    message = str(exc.value)
    assert "Serverless" in message and "batch predict" in message and "document ids" in message
    assert resolve(tmp_path, opensearch_service="es").run_key  # the managed service is fine
    assert resolve(tmp_path, opensearch_service=None).run_key  # basic auth, self-managed


def test_max_reject_ratio_means_the_same_in_the_readme_and_the_code(tmp_path):

    readme = (REPO / "README.md").read_text()
    (row,) = [line for line in readme.splitlines() if line.startswith("| `max_reject_ratio`")]
    assert run_plan.REJECT_RATIO_MEANING in row
    assert run_plan.param_schema()["max_reject_ratio"]["description"] == run_plan.REJECT_RATIO_MEANING


def test_predict_answers_one_vector_per_text_from_one_inference_result():
    # ML Commons' default embedding post-processing: N tensors in ONE inference result.
    resp = {"inference_results": [{"output": [
        {"name": "sentence_embedding", "data_type": "FLOAT32", "shape": [3], "data": [i, 0, 0]}
        for i in range(3)], "status_code": 200}]}
    assert mlcommons.vectors_of_prediction(resp, 3) == [[0, 0, 0], [1, 0, 0], [2, 0, 0]]
    with pytest.raises(ValueError, match="2 vectors for 3 texts"):
        mlcommons.vectors_of_prediction(
            {"inference_results": [{"output": resp["inference_results"][0]["output"][:2]}]}, 3)


# --- connector credentials: the AWS connection's keys, or a role (issue 11) -----------------

# Made up at import: nothing key-like is committed.
KEYS = {"access_key": "TESTKEY" + secrets.token_hex(6).upper(), "secret_key": secrets.token_urlsafe(30),
        "session_token": secrets.token_urlsafe(40)}


class RecordingHook:
    """Records ML Commons requests and answers like the node does (pure: no server)."""

    def __init__(self, existing_model: str | None = None):
        self.calls: list[tuple[str, str, dict | None]] = []
        self.existing_model = existing_model

    def request(self, method, path, body=None, **kwargs):
        self.calls.append((method, path, body))
        if path.endswith("/models/_search"):
            hits = [{"_id": "m-1", "_source": {"name": body["query"]["term"]["name.keyword"]}}] \
                if self.existing_model else []
            return 200, {"hits": {"hits": hits}}
        if path.endswith("/model_groups/_search"):
            return 200, {"hits": {"hits": [{"_id": "g-1", "_source": {"name": "batchvec"}}]}}
        if path.endswith("/models/_register"):
            return 200, {"task_id": "t", "status": "CREATED", "model_id": "m-new"}
        if method == "GET" and "/models/" in path:  # deployed once _deploy was asked for
            deployed = any(p.endswith("/_deploy") for _, p, _ in self.calls)
            return 200, {"model_state": "DEPLOYED" if deployed else "REGISTERED"}
        return 200, {"status": "COMPLETED"}


def test_deploy_waits_for_deployed_and_key_updates_wait_out_a_deploy(monkeypatch):
    """ML Commons answers 409 "Model is deploying" to an update while the model deploys
    (seen on the 3.6 node right after _deploy): the deploy waits for DEPLOYED, and new keys
    wait out another run's deploy."""
    from batchvec.hooks import mlcommons
    from batchvec.hooks.opensearch import OpenSearchError

    monkeypatch.setattr(mlcommons.time, "sleep", lambda s: None)
    states = iter(["DEPLOYING", "DEPLOYING", "DEPLOYED"])
    hook = RecordingHook()
    hook.request = lambda m, p, b=None, **k: (200, {"model_state": next(states)} if m == "GET" else {})
    mlcommons.deploy_model(hook, "m-1")
    assert next(states, "done") == "done"
    answers = iter([OpenSearchError(409, "status_exception", "Model is deploying. Please wait"), None])

    def put(method, path, body=None, **kw):
        if (err := next(answers)) is not None:
            raise err
        return 200, {"result": "updated"}
    hook.request = put
    mlcommons.update_model_credential(hook, "m-1", {"access_key": "a", "secret_key": "s"})
    hook.request = lambda *a, **k: (_ for _ in ()).throw(OpenSearchError(409, "x", "version conflict"))
    with pytest.raises(OpenSearchError, match="version conflict"):  # other conflicts: at once
        mlcommons.update_model_credential(hook, "m-1", {"access_key": "a", "secret_key": "s"})


def test_self_managed_clusters_get_the_connections_keys_and_no_secret_names_the_model():
    keyed = ModelSpec(**{**SPEC.__dict__, "credentials": "aws_keys", "role_arn": ""})
    definition = connectors.connector_definition(keyed, temporary_keys=True)  # KEYS have a token
    assert "roleArn" not in json.dumps(definition)
    hook = RecordingHook()
    result = connectors.ensure_model(hook, keyed, KEYS)
    (register,) = [b for m, p, b in hook.calls if p.endswith("/models/_register")]
    assert register["connector"]["credential"] == KEYS
    assert register["connector"]["protocol"] == "aws_sigv4" and "connector_id" not in register
    assert register["name"] == definition["name"]
    for secret in KEYS.values():  # never in the identity, the name or what the task returns
        assert secret not in json.dumps(definition) and secret not in json.dumps(result)
    # The same definition with other keys is the same model: keys are not identity. Whether
    # they are temporary is: a stored session token cannot be removed by a later update.
    assert connectors.connector_definition(keyed, temporary_keys=True)["name"] == definition["name"]
    lasting = connectors.connector_definition(keyed)
    assert lasting["name"] != definition["name"] and "session_token" not in lasting["credential"]
    # Reused: the fresh keys go onto the model's own connector (a deployed model takes them).
    hook = RecordingHook(existing_model="m-1")
    connectors.ensure_model(hook, keyed, {**KEYS, "secret_key": "rotated"})  # same model: a token
    (update,) = [(m, p, b) for m, p, b in hook.calls if m == "PUT"]
    assert update[1].endswith("/models/m-1")
    assert update[2] == {"connector": {"credential": {**KEYS, "secret_key": "rotated"}}}
    with pytest.raises(ValueError, match="no access key"):
        connectors.ensure_model(RecordingHook(), keyed, None)


def test_amazon_opensearch_service_gets_the_role_and_no_keys():
    managed = ModelSpec(**{**SPEC.__dict__, "credentials": "role_arn"})
    hook = RecordingHook()
    connectors.ensure_model(hook, managed, None)
    (register,) = [b for m, p, b in hook.calls if p.endswith("/models/_register")]
    assert register["connector"]["credential"] == {"roleArn": SPEC.role_arn}
    hook = RecordingHook(existing_model="m-1")
    connectors.ensure_model(hook, managed, None)
    assert not [c for c in hook.calls if c[0] == "PUT"]  # the service assumes the role itself
    keyed = ModelSpec(**{**SPEC.__dict__, "credentials": "aws_keys"})
    assert connectors.connector_definition(keyed)["name"] != \
        connectors.connector_definition(managed)["name"]  # switching modes is a new model


def test_the_role_is_required_only_where_the_connector_assumes_it(tmp_path, no_presets):
    source = tmp_path / "in.jsonl"
    source.write_text('{"id": 1, "text": "x"}\n')
    params = {"input_uri": str(source), "sagemaker_model_name": "m", "sagemaker_endpoint_name": "e"}
    keyed = run_plan.resolve_plan(params, dag_id="d", run_id="r", ds="2026-02-01", region="eu-west-1",
                              connector_credentials="aws_keys")
    assert keyed.model_spec.credentials == "aws_keys"
    with pytest.raises(ValueError, match="connector_role_arn: not set"):
        run_plan.resolve_plan(params, dag_id="d", run_id="r", ds="2026-02-01", region="eu-west-1",
                          connector_credentials="role_arn")


def test_the_credential_mode_follows_where_opensearch_runs(monkeypatch):
    from airflow.models import Connection

    from batchvec.hooks.opensearch import OpenSearchDomainHook

    cases = [({"auth": "basic"}, "aws_keys"),
             ({"auth": "sigv4", "region": "eu-west-1", "service": "es"}, "role_arn"),
             ({"auth": "sigv4", "region": "eu-west-1", "service": "es",
               "connector_credentials": "aws_keys"}, "aws_keys")]
    for extra, mode in cases:
        conn = Connection(conn_id="os_mode", conn_type="generic", host="search.example.com",
                          port=443, schema="https", login="u", password="p", extra=json.dumps(extra))
        monkeypatch.setenv("AIRFLOW_CONN_OS_MODE", conn.as_json())
        assert OpenSearchDomainHook("os_mode").target()["connector_credentials"] == mode, extra


def test_incremental_params_are_checked_and_documented(tmp_path):

    p = resolve(tmp_path)
    assert (p.reembed, p.sync_mode, p.max_delete_ratio, p.keep_previous_index) == \
        ("changed", "upsert", 0.05, 7.0)
    assert p.source_id == p.input_uri  # a literal input_uri is its own source
    templated = run_plan.resolve_plan({**REQUIRED, "input_uri": "s3://bkt/in/ds={{ ds }}/"},
                                  dag_id="d", run_id="r", ds="2026-02-01", region="eu-west-1")
    assert templated.source_id == "s3://bkt/in/ds={{ ds }}/"  # every day one source
    assert templated.input_uri == "s3://bkt/in/ds=2026-02-01/"
    with pytest.raises(ValueError) as exc:
        resolve(tmp_path, reembed="some", sync_mode="mirror", max_delete_ratio=2,
                keep_previous_index=-1, version_field="id", metadata_fields=["batchvec"])
    message = str(exc.value)
    for name in ("reembed", "sync_mode", "max_delete_ratio", "keep_previous_index",
                 "version_field", "metadata_fields"):
        assert f"{name}:" in message, (name, message)
    # A model's identity names its physical index: another model or dimension, another index.
    same = resolve(tmp_path)
    other = resolve(tmp_path, sagemaker_model_name="other-embedder")
    wider = resolve(tmp_path, dimension=256)
    assert same.model_identity == p.model_identity
    assert len({p.model_identity, other.model_identity, wider.model_identity}) == 3
    assert resolve(tmp_path, sagemaker_endpoint_name="new-rt").model_identity == p.model_identity
    readme = (REPO / "README.md").read_text()
    (row,) = [line for line in readme.splitlines() if line.startswith("| `max_delete_ratio`")]
    assert run_plan.DELETE_RATIO_MEANING in row
    for name in ("reembed", "sync_mode", "source_id", "version_field", "keep_previous_index"):
        assert f"| `{name}`" in readme, name
