"""Transform jobs and endpoints on real model containers: the package users deploy
(model.tar.gz with batchvec's code/inference.py, or the stock toolkit handler without it)
served by the sagemaker-huggingface-inference-toolkit under multi-model-server, driven by
the devstack as SageMaker drives it. S3 + SageMaker only (no OpenSearch)."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from batchvec.model.container import package as pkg
from batchvec.outputs import convert
from devstack import launcher, seed
from tests.helpers.sagemaker_helpers import keys, put_jsonl, read_lines, unique_name, wait

pytestmark = pytest.mark.devstack

ROLE = seed.EXECUTION_ROLE
# Records of every kind of length, two files; a few long ones (truncated to 256 tokens by the
# model) make MultiRecord requests split at the 1 MiB payload.
TEXTS = [f"passage {i}: " + ("rivers and mountains " * (i % 7 + 1)) for i in range(24)]
TEXTS += ["Ünïcödé ✓ text", "  padded with spaces  ", "x"]
LONG = ["long " * 80_000, "longer " * 90_000]
# A test container that answers one [i] per record, crashes on its 2nd request (BEHAVIOUR
# crash) or never answers (BEHAVIOUR sleep): model_fn loads nothing, so it starts fast.
FAULTY = b'''import os, signal, time
calls = 0
def model_fn(model_dir):
    return None
def input_fn(body, content_type):
    return [line for line in (body if isinstance(body, str) else body.decode()).split("\\n") if line]
def predict_fn(records, model):
    global calls
    calls += 1
    if os.environ["BEHAVIOUR"] == "crash" and calls == 2:
        os.kill(-1, signal.SIGKILL)  # every process of the container's namespace but its init
    if os.environ["BEHAVIOUR"] == "sleep":
        time.sleep(3600)
    return records
def output_fn(records, accept):
    return "\\n".join(f"[{i}]" for i, _ in enumerate(records))
'''


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    state = tmp_path_factory.mktemp("container-stack")
    services = ("s3", "sagemaker")
    try:
        ep = launcher.up_on_free_ports(state, services=services)
        started = time.monotonic()
        seed.ensure_sagemaker_model(ep)  # the README's command: package, model, endpoint
        ep["seed_s"] = time.monotonic() - started
        s3, sm = seed.clients(ep)
        yield {"ep": ep, "s3": s3, "sm": sm, "state": state}
    finally:
        launcher.down(state, services=services)


def _model(stack, name: str, data: bytes, env: dict) -> str:
    key = f"test-models/{name}/model.tar.gz"
    stack["s3"].put_object(Bucket="batchvec", Key=key, Body=data)
    stack["sm"].create_model(ModelName=name, ExecutionRoleArn=ROLE, PrimaryContainer={
        "Image": pkg.dlc_image("us-east-1"), "ModelDataUrl": f"s3://batchvec/{key}",
        "Environment": {"SAGEMAKER_MODEL_SERVER_WORKERS": "1", **env}})
    return name


@pytest.fixture(scope="module")
def stock_model(stack):
    """The stock toolkit handler (no code/), HF_TASK=feature-extraction: the README's old advice."""
    data = pkg.build(pkg.default_model_dir(), with_code=False).data
    return _model(stack, "stock-feature-extraction", data, {"HF_TASK": "feature-extraction"})


def _job(stack, model: str, prefix: str, *, strategy="MultiRecord", concurrency=1,
         content_type="application/jsonlines", input_filter="$.text", **extra) -> dict:
    name = unique_name(prefix)
    stack["sm"].create_transform_job(
        TransformJobName=name, ModelName=model, BatchStrategy=strategy, MaxPayloadInMB=1,
        MaxConcurrentTransforms=concurrency,
        TransformInput={"DataSource": {"S3DataSource": {
            "S3DataType": "S3Prefix", "S3Uri": f"s3://batchvec/{prefix}/in/"}},
            "ContentType": content_type, "SplitType": "Line"},
        TransformOutput={"S3OutputPath": f"s3://batchvec/{prefix}/{name}/", "AssembleWith": "Line",
                         "Accept": content_type},
        TransformResources={"InstanceType": "ml.m5.xlarge", "InstanceCount": 1},
        DataProcessing={"InputFilter": input_filter, "JoinSource": "Input", "OutputFilter": "$"},
        **extra)
    desc = wait(stack["sm"], name, timeout=300)
    desc["_out"] = f"{prefix}/{name}/"
    return desc


_st = None


def _reference(texts: list[str]) -> np.ndarray:
    global _st
    if _st is None:
        import torch
        from sentence_transformers import SentenceTransformer

        torch.set_num_threads(1)
        _st = SentenceTransformer(str(pkg.default_model_dir()), device="cpu")
    return _st.encode(texts, normalize_embeddings=True, batch_size=8)


@pytest.mark.parametrize("strategy, concurrency", [("MultiRecord", 1), ("MultiRecord", 3),
                                                   ("SingleRecord", 2)])
def test_ours_equals_sentence_transformers_in_order(stack, strategy, concurrency):
    prefix = f"ours-{strategy.lower()}-{concurrency}"
    files = {"a.jsonl": TEXTS[:14] + LONG[:1], "b/c.jsonl": LONG[1:] + TEXTS[14:]}
    for name, texts in files.items():
        put_jsonl(stack["s3"], "batchvec", f"{prefix}/in/{name}",
                  [{"_id": f"{name}-{i}", "text": t} for i, t in enumerate(texts)])
    desc = _job(stack, "minilm-embedder", prefix, strategy=strategy, concurrency=concurrency)
    assert desc["TransformJobStatus"] == "Completed", desc.get("FailureReason")
    got, texts = [], []
    for name, want in files.items():
        lines = read_lines(stack["s3"], "batchvec", f"{desc['_out']}{name}.out")
        assert [line["_id"] for line in lines] == [f"{name}-{i}" for i in range(len(want))]
        for line in lines:
            assert convert.check_output_shape(json.dumps(line).encode(), 384) == 384
            got.append(line["SageMakerOutput"])
        texts += want
    got, want = np.array(got), _reference(texts)
    cosines = (got * want).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)
    assert cosines.min() >= 0.9999, cosines.min()
    log = stack["state"] / "sagemaker" / "job-logs" / f"{desc['TransformJobName']}.log"
    assert "POST /invocations" in log.read_text()  # the container's log, kept per job


def test_endpoint_serves_ml_commons_predict_body(stack):
    import boto3

    ep = stack["ep"]
    rt = boto3.client("sagemaker-runtime", endpoint_url=ep["sagemaker"], region_name=ep["region"],
                      aws_access_key_id=ep["aws_access_key_id"],
                      aws_secret_access_key=ep["aws_secret_access_key"])
    assert stack["sm"].describe_endpoint(EndpointName="devstack-minilm")["EndpointStatus"] == "InService"
    # What ML Commons' predict action sends: the default embedding pre-process's JSON list.
    answer = rt.invoke_endpoint(EndpointName="devstack-minilm", ContentType="application/json",
                                Body=json.dumps(TEXTS[:3]))
    vectors = np.array(json.loads(answer["Body"].read()))
    assert vectors.shape == (3, 384)
    assert np.allclose(vectors, _reference(TEXTS[:3]), atol=1e-4)
    with pytest.raises(rt.exceptions.ModelError) as exc:
        rt.invoke_endpoint(EndpointName="devstack-minilm", ContentType="application/json",
                           Body=b'{"text": "no inputs key"}')
    assert "a JSON object without" in str(exc.value) and "(keys: text)" in str(exc.value)
    with pytest.raises(rt.exceptions.ClientError, match="exceeds the 6291456 bytes limit"):
        rt.invoke_endpoint(EndpointName="devstack-minilm", ContentType="application/json",
                           Body=json.dumps(["x" * (6 << 20)]))
    seed.ensure_sagemaker_model(ep)  # a rerun reuses everything: same package hash
    assert stack["sm"].describe_endpoint(EndpointName="devstack-minilm")["EndpointStatus"] == "InService"


def test_stock_handler_multirecord_json_fails_with_extra_data(stack, stock_model):
    put_jsonl(stack["s3"], "batchvec", "stock-multi/in/a.jsonl", [{"text": t} for t in TEXTS[:3]])
    desc = _job(stack, stock_model, "stock-multi", content_type="application/json")
    assert desc["TransformJobStatus"] == "Failed"
    reason = desc["FailureReason"]
    assert reason.startswith("ClientError: ") and "s3://batchvec/stock-multi/in/a.jsonl" in reason
    assert "Received 400 from the model container" in reason
    assert "Extra data: line 2 column 1" in reason, reason
    assert keys(stack["s3"], "batchvec", desc["_out"]) == []


def test_stock_feature_extraction_single_record_fails_the_output_check(stack, stock_model):
    put_jsonl(stack["s3"], "batchvec", "stock-single/in/a.jsonl",
              [{"inputs": t} for t in TEXTS[:2]])
    desc = _job(stack, stock_model, "stock-single", strategy="SingleRecord",
                content_type="application/json", input_filter="$")
    assert desc["TransformJobStatus"] == "Completed", desc.get("FailureReason")
    raw = stack["s3"].get_object(Bucket="batchvec", Key=f"{desc['_out']}a.jsonl.out")["Body"].read()
    with pytest.raises(convert.OutputShapeError, match=r"per-token vectors \(shape \[1, \d+, 384\]\)"
                       r".*HF_TASK=feature-extraction.*python -m batchvec.model.container"):
        convert.check_output_shape(raw.splitlines()[0], 384)


def test_record_over_max_payload_fails_that_file(stack):
    put_jsonl(stack["s3"], "batchvec", "too-big/in/a.jsonl", [{"text": "fine"}])
    put_jsonl(stack["s3"], "batchvec", "too-big/in/b.jsonl",
              [{"text": "fine"}, {"text": "y" * (1 << 20)}])
    desc = _job(stack, "minilm-embedder", "too-big")
    assert desc["TransformJobStatus"] == "Failed"
    assert desc["FailureReason"].startswith(
        "ClientError: s3://batchvec/too-big/in/b.jsonl, line 2: Too much data for max payload size")
    assert keys(stack["s3"], "batchvec", desc["_out"]) == [f"{desc['_out']}a.jsonl.out"]


@pytest.mark.parametrize("behaviour", ["crash", "sleep"])
def test_container_crash_and_timeout_end_the_job(stack, behaviour):
    data = pkg.build(_code_only_dir(stack), extra_code={"inference.py": FAULTY}, with_code=False).data
    model = _model(stack, f"faulty-{behaviour}", data, {"BEHAVIOUR": behaviour})
    prefix = f"faulty-{behaviour}"
    put_jsonl(stack["s3"], "batchvec", f"{prefix}/in/a.jsonl", [{"text": t} for t in TEXTS[:4]])
    desc = _job(stack, model, prefix, strategy="SingleRecord", ModelClientConfig={
        "InvocationsTimeoutInSeconds": 1, "InvocationsMaxRetries": 1})
    assert desc["TransformJobStatus"] == "Failed"
    reason = desc["FailureReason"]
    if behaviour == "crash":
        assert reason.startswith("AlgorithmError: s3://batchvec/faulty-crash/in/a.jsonl: line 2: "
                                 "the model container exited"), reason
    else:
        assert reason.startswith("ClientError: s3://batchvec/faulty-sleep/in/a.jsonl: line 1: "
                                 "Model server did not respond to /invocations request within 1 "
                                 "seconds (after 1 retries)"), reason
    assert keys(stack["s3"], "batchvec", desc["_out"]) == []


def _code_only_dir(stack):
    path = stack["state"] / "code-only-model"
    path.mkdir(exist_ok=True)
    (path / "config.json").write_text("{}")
    return path
