"""batchvec's container code and CLI without a container: inference.py's parsing, errors and
answer format, its pooling against sentence-transformers in-process, the package layout,
and the CLI's dry run and reuse against stub AWS clients."""

from __future__ import annotations

import importlib.util
import io
import json
import sys
import tarfile

import numpy as np
import pytest
from botocore.exceptions import ClientError

from batchvec.model.container import package as pkg
from batchvec.model.container.cli import main
from batchvec.plan.transform_settings import resolve

_spec = importlib.util.spec_from_file_location(
    "inference", pkg.resources.files("batchvec.model.container") / "code" / "inference.py")
inference = importlib.util.module_from_spec(_spec)
sys.modules["inference"] = inference  # dataclasses look their module up there
_spec.loader.exec_module(inference)


@pytest.mark.parametrize("body, content_type, texts, records", [
    (b'"a"\n"b"\n["c", "d"]\n{"inputs": "e"}\n', "application/jsonlines",
     ["a", "b", "c", "d", "e"], [(1, True), (1, True), (2, False), (1, True)]),
    ('"a"\n"b"', "application/json", ["a", "b"], [(1, True), (1, True)]),  # MultiRecord JSON
    ('[\n  "a",\n  "b"\n]', "application/json; charset=utf-8", ["a", "b"], [(2, False)]),
    ('{"inputs": ["a", "b"], "parameters": {}}', "application/json", ["a", "b"], [(2, False)]),
    (b'"\xc3\xbc"\r\n\n', "application/jsonl", ["ü"], [(1, True)]),
])
def test_parse_bodies(body, content_type, texts, records):
    batch = inference.parse(body, content_type)
    assert (batch.texts, batch.records) == (texts, records)


@pytest.mark.parametrize("body, content_type, message", [
    (b'"a"\nnot json\n', "application/jsonlines", r"record 2 \(line 2\): not valid JSON"),
    (b'{"x": 1}', "application/json", r"record 1 \(line 1\): a JSON object without \"inputs\" "
     r"\(keys: x\).*InputFilter \"\$\.text\""),
    (b'"a"\n[]', "application/jsonlines", r"record 2 \(line 2\): an empty list"),
    (b'["a", 3]', "application/json", r"record 1 \(line 1\): a list holding a number"),
    (b"null", "application/json", "record 1 .*null; expected a string"),
    (b"\n\n", "application/jsonlines", "holds no records"),
    (b"\xff", "application/jsonlines", "not UTF-8 .byte 0"),
    (b'"a"', "text/csv", "Content-Type 'text/csv' is not supported"),
    (b'{"a": 1', "application/json", r"record 1 \(line 1\): not valid JSON"),
])
def test_bad_input_says_which_record_and_why(body, content_type, message):
    with pytest.raises(inference.BadRequest, match=message):
        inference.parse(body, content_type)


def test_answer_one_line_per_record_and_limits():
    vectors = np.array([[0.1, -0.5], [1e-8, 2.0], [3.0, 4.0]], dtype=np.float32)
    text = inference.format_answer(vectors, [(1, True), (2, False)], limit=10_000)
    assert text == "[0.1,-0.5]\n[[1e-08,2.0],[3.0,4.0]]"
    assert [json.loads(line) for line in text.split("\n")] == [[0.1, -0.5], [[1e-8, 2.0], [3.0, 4.0]]]
    with pytest.raises(inference.BadRequest, match="over the model server's response limit of "
                       "20 bytes .MMS_MAX_RESPONSE_SIZE.*smaller MaxPayloadInMB"):
        inference.format_answer(vectors, [(1, True), (2, False)], limit=20)
    with pytest.raises(inference.BadRequest, match="non-finite"):
        inference.format_answer(np.array([[np.nan]], dtype=np.float32), [(1, True)], limit=99)
    inference.check_accept("*/*")
    inference.check_accept("application/jsonlines")
    with pytest.raises(inference.BadRequest, match="Accept 'text/csv' is not supported"):
        inference.check_accept("text/csv")


def test_layout_and_pooling_equal_sentence_transformers(tmp_path):
    from sentence_transformers import SentenceTransformer

    model_dir = pkg.default_model_dir()
    layout = inference.read_layout(str(model_dir))
    assert layout == {"transformer": "", "pooling": ["mean"], "normalize": True,
                      "max_length": 256, "lowercase": False}
    texts = ["a short one", "  spaces around  ", "long " * 400, "Ünïcödé ✓", "x"]
    ours = inference.Embedder(str(model_dir), device="cpu").encode(texts)
    theirs = SentenceTransformer(str(model_dir), device="cpu").encode(texts, normalize_embeddings=True)
    assert ours.dtype == np.float32 and ours.shape == (5, 384)
    assert (ours * theirs).sum(1).min() >= 0.9999
    (tmp_path / "modules.json").write_text(json.dumps([
        {"type": "sentence_transformers.models.Transformer", "path": ""},
        {"type": "sentence_transformers.models.Pooling", "path": "p"},
        {"type": "sentence_transformers.models.Dense", "path": "d"}]))
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "config.json").write_text(json.dumps(
        {"pooling_mode_max_tokens": True, "pooling_mode_cls_token": True}))
    with pytest.raises(RuntimeError, match="Dense.* not supported"):
        inference.read_layout(str(tmp_path))
    assert inference._pooling_modes({"pooling_mode_max_tokens": True,
                                     "pooling_mode_cls_token": True}) == ["cls", "max"]


def test_package_layout_is_reproducible():
    a, b = pkg.build(pkg.default_model_dir()), pkg.build(pkg.default_model_dir())
    assert a.sha256 == b.sha256 and a.data == b.data
    with tarfile.open(fileobj=io.BytesIO(a.data)) as tar:
        names = tar.getnames()
        requirements = tar.extractfile("code/requirements.txt").read().decode()
        assert {m.mtime for m in tar.getmembers()} == {0}
    assert {"config.json", "model.safetensors", "modules.json", "1_Pooling/config.json",
            "tokenizer.json", "code/inference.py", "code/requirements.txt"} <= set(names)
    assert not any(n.startswith(".") or n == "README.md" for n in names)
    # Installed at container start with pip: no package may be listed (no network).
    assert not [line for line in requirements.splitlines() if line.strip() and
                not line.lstrip().startswith("#")]
    stock = pkg.build(pkg.default_model_dir(), with_code=False)
    assert not any(m.startswith("code/") for m in stock.members) and stock.sha256 != a.sha256


def test_dlc_image_table():
    assert pkg.dlc_image("us-east-1") == ("763104351884.dkr.ecr.us-east-1.amazonaws.com/"
                                          "huggingface-pytorch-inference:2.3.0-transformers4.48.0-"
                                          "cpu-py311-ubuntu22.04")
    assert pkg.dlc_image("eu-south-1", gpu=True).startswith("692866216735.dkr.ecr.eu-south-1.")
    assert "-gpu-py311-cu121-ubuntu22.04" in pkg.dlc_image("eu-south-1", gpu=True)
    assert ".amazonaws.com.cn/" in pkg.dlc_image("cn-north-1")


class _Stub:
    """S3 + SageMaker that hold nothing (or what `puts` created), recording writes."""

    def __init__(self, existing: dict | None = None):
        self.calls, self.existing = [], existing or {}

    def __getattr__(self, op):
        def call(**kw):
            if op.startswith(("describe", "head")):
                if op in self.existing:
                    return self.existing[op]
                code = "404" if op.startswith("head") else "ValidationException"
                raise ClientError({"Error": {"Code": code, "Message": "Could not find it"}}, op)
            self.calls.append((op, kw))
            return {}
        return call


_BUILT: dict = {}


@pytest.fixture
def build_once(monkeypatch):
    """The CLI tests' packages, built once per model dir: each build gzips the ~90 MB model
    (seconds apiece), and the CLI builds on every call. That two builds are byte-identical is
    test_package_layout_is_reproducible's to check, with builds of its own."""
    real = pkg.build

    def build(model_dir, extra_code=None, with_code=True):
        if extra_code:
            return real(model_dir, extra_code, with_code)
        key = (str(model_dir), with_code)
        if key not in _BUILT:
            _BUILT[key] = real(model_dir, with_code=with_code)
        return _BUILT[key]

    monkeypatch.setattr(pkg, "build", build)


@pytest.mark.usefixtures("build_once")
def test_cli_dry_run_writes_nothing_and_says_what_it_would_create(capsys):
    stub = _Stub()
    result = main(["--bucket", "b", "--role-arn", "arn:aws:iam::123456789012:role/x",
                   "--region", "eu-west-1", "--endpoint", "rt", "--dry-run"], clients=(stub, stub))
    assert stub.calls == []
    assert [a["action"] for a in result["actions"]] == ["upload", "create", "create", "create"]
    err = capsys.readouterr().err
    assert "would upload: s3://b/sagemaker-models/minilm-embedder/" in err
    assert "would create: model minilm-embedder" in err and "would create: endpoint rt" in err
    model = result["actions"][1]["request"]["PrimaryContainer"]
    assert model["Image"].startswith("763104351884.dkr.ecr.eu-west-1.amazonaws.com/")
    assert model["Environment"]["MMS_MAX_RESPONSE_SIZE"] == str(100 << 20)
    assert model["Environment"]["SAGEMAKER_MODEL_SERVER_TIMEOUT"] == "600"
    assert model["ModelDataUrl"] == result["model_data_url"].replace("s3://", "s3://", 1)


@pytest.mark.usefixtures("build_once")
def test_cli_reuses_an_unchanged_model():
    first = _Stub()
    argv = ["--bucket", "b", "--role-arn", "arn:aws:iam::123456789012:role/x"]
    result = main(argv, clients=(first, first))
    put = dict(first.calls)
    assert set(put) == {"put_object", "create_model"}
    same = _Stub({"head_object": {"Metadata": {"sha256": result["sha256"]}},
                  "describe_model": {**put["create_model"]}})
    again = main(argv, clients=(same, same))
    assert same.calls == [] and [a["action"] for a in again["actions"]] == ["reuse", "reuse"]
    changed = main(argv + ["--workers", "2"], clients=(same, same))
    assert [op for op, _ in same.calls] == ["delete_model", "create_model"]
    assert changed["actions"][1]["action"] == "replace"


@pytest.mark.parametrize("params, fix", [
    ({"max_concurrent_transforms": 30, "max_payload_mb": 6}, "lower max_concurrent_transforms to 16"),
    ({"max_payload_mb": 6}, "lower max_payload_mb to 1"),
    ({"model_max_response_mb": 6}, "raise MMS_MAX_RESPONSE_SIZE on the model"),
    ({"accept": "application/json"}, "must equal content_type"),
    ({"tags": {"a": 'x"}'}}, "tags:"),
])
def test_transform_settings_refused_with_the_fix(params, fix):
    _, errors = resolve(params)
    assert any(fix in e for e in errors), errors


def test_transform_settings_defaults_pass_and_single_record_skips_the_size_check():
    assert resolve({})[1] == []
    assert resolve({"max_payload_mb": 50, "batch_strategy": "SingleRecord"})[1] == []


@pytest.mark.parametrize("output, message", [
    ([[[0.1, 0.2, 0.3]] * 4], r"per-token vectors \(shape \[1, 4, 3\]\).*feature-extraction"),
    ({"embedding": [0.1]}, r"a JSON object \(keys: embedding\)"),
    ([[0.1, 0.2, 0.3], [0.1, 0.2, 0.3]], r"2 vectors \(shape \[2, 3\]\)"),
    (["a", "b", "c"], "non-numbers"),
    ([0.1, 0.2], r"2 values, the run expects 3"),
    ("text", "answered str per record"),
])
def test_output_check_says_what_the_container_returned(output, message):
    from batchvec.outputs import convert

    line = json.dumps({"_id": "1", "text": "t", "SageMakerOutput": output}).encode()
    with pytest.raises(convert.OutputShapeError, match=message):
        convert.check_output_shape(line, 3)
    for good in ([0.1, 0.2, 0.3], [[0.1, 0.2, 0.3]]):
        ok = json.dumps({"_id": "1", "SageMakerOutput": good}).encode()
        assert convert.check_output_shape(ok, 3) == 3


def test_plan_refuses_combinations_naming_every_fix(tmp_path):
    from batchvec.plan import run_plan

    source = tmp_path / "in.jsonl"
    source.write_text('{"id": 1, "text": "x"}\n')
    with pytest.raises(ValueError) as err:
        run_plan.resolve_plan({"input_uri": str(source), "max_concurrent_transforms": 30,
                           "max_payload_mb": 6}, dag_id="d", run_id="r", ds="2026-01-01",
                          region="us-east-1")
    text = str(err.value)
    assert "SageMaker refuses more than 100" in text and "response limit" in text
    assert text.count("SageMaker refuses more than 100") == 1
    # The model and endpoint a deployment presets (BATCHVEC_SAGEMAKER_*): given, so the plan
    # does not depend on what an earlier test left in the environment.
    model = {"sagemaker_model_name": "minilm-embedder", "sagemaker_endpoint_name": "minilm-rt"}
    p = run_plan.resolve_plan({"input_uri": str(source), "tags": {"team": "search"}, **model},
                              dag_id="d", run_id="r", ds="2026-01-01", region="us-east-1")
    assert p.model["tags"] == [{"Key": "team", "Value": "search"}]
    assert (p.content_type, p.accept, p.dimension) == ("application/jsonlines",) * 2 + (384,)
