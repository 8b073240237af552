"""The devstack SageMaker's data path without a server: JSONPath filters, the join, record
splitting and batching, payload limits and the `.out` text (a stub S3 and a fake model)."""

from __future__ import annotations

import gzip
import io
import json

import numpy as np
import pytest
from botocore.response import StreamingBody

from devstack.sagemaker import dataprocessing as dp
from devstack.sagemaker.transform import (
    FileFailed,
    FileTransformer,
    InputFile,
    Settings,
    StopRequested,
    embedder_predict,
    list_inputs,
    output_location,
)


class _S3:
    def __init__(self, objects: dict[str, bytes]):
        self.objects = objects

    def get_object(self, Bucket, Key):  # noqa: N803 (boto3's names)
        data = self.objects[f"{Bucket}/{Key}"]
        return {"Body": StreamingBody(io.BytesIO(data), len(data))}

    def get_paginator(self, name):
        s3 = self

        class _Pages:
            def paginate(self, Bucket, Prefix):  # noqa: N803
                keys = [k.split("/", 1)[1] for k in s3.objects if k.startswith(f"{Bucket}/{Prefix}")]
                return [{"Contents": [{"Key": k} for k in sorted(keys)]}]

        return _Pages()


class _Model:
    """Vector i of a call is [len(text), call number]: shows batching and order."""

    def __init__(self):
        self.calls: list[list[str]] = []

    def __call__(self, texts):
        self.calls.append(list(texts))
        return np.array([[len(t), len(self.calls)] for t in texts], dtype=np.float32)


def _request(**kw) -> dict:
    proc = {k: kw.pop(k) for k in ("InputFilter", "OutputFilter", "JoinSource") if k in kw}
    return {
        "TransformInput": {"DataSource": {"S3DataSource": {"S3DataType": "S3Prefix",
                                                           "S3Uri": "s3://b/in/"}},
                           "SplitType": kw.pop("SplitType", "Line"),
                           "CompressionType": kw.pop("CompressionType", "None")},
        "TransformOutput": {"S3OutputPath": "s3://o/out", "AssembleWith": kw.pop("AssembleWith", "Line")},
        "DataProcessing": proc, **kw,
    }


def _run(data: bytes, check=lambda: None, **kw) -> tuple[bytes, _Model]:
    model = _Model()
    t = FileTransformer(_S3({"b/in/f.jsonl": data}), embedder_predict(model),
                        Settings.of(_request(**kw)), check, lambda n: None, tmp_dir=None)
    out, count = t.run(InputFile("b", "in/f.jsonl", "f.jsonl"))
    return out.read(), model


@pytest.mark.parametrize("path, value, expected", [
    ("$", {"a": 1}, {"a": 1}),
    ("$.text", {"text": "t", "x": 1}, "t"),
    ("$['text']", {"text": "t"}, "t"),
    ("$.a.b", {"a": {"b": [1, 2]}}, [1, 2]),
    ("$['id','SageMakerOutput']", {"id": 1, "x": 2, "SageMakerOutput": [3]},
     {"id": 1, "SageMakerOutput": [3]}),
    ("$[1]", ["a", "b"], "b"),
    ("$[0,2]", ["a", "b", "c"], ["a", "c"]),
    ("$[1:]", ["a", "b", "c"], ["b", "c"]),
])
def test_jsonpath(path, value, expected):
    assert dp.apply(dp.parse(path), value) == expected


def test_jsonpath_errors():
    for bad in ("text", "$..text", "$.a[?(@.x)]", "$[*]"):
        with pytest.raises(ValueError):
            dp.parse(bad)
    with pytest.raises(dp.FilterError, match="no member 'text'"):
        dp.apply(dp.parse("$.text"), {"body": "x"})


def test_join_and_dumps():
    out = np.array([[0.1, -0.25]], dtype=np.float32)
    assert list(dp.join({"SageMakerOutput": 0, "a": 1}, out)) == ["a", "SageMakerOutput"]
    assert dp.join([1, 2], "o") == [1, 2, "o"]
    assert dp.join("raw", "o") == {"SageMakerInput": "raw", "SageMakerOutput": "o"}
    text = dp.dumps({"é": "ü", "SageMakerOutput": out})
    assert json.loads(text) == {"é": "ü", "SageMakerOutput": [[0.1, -0.25]]}
    assert b"0.1," in text and b"0.10000000149" not in text, text


def test_dumps_without_orjson(monkeypatch):
    monkeypatch.setattr(dp, "orjson", None)
    vec = np.array([[0.1, 1e-8, 3.0]], dtype=np.float32)
    text = dp.dumps({"id": "x\u0000", "v": vec, "s": np.float32(0.5), "n": np.int64(3)})
    assert json.loads(text) == {"id": "x\u0000", "v": [[0.1, 1e-8, 3.0]], "s": 0.5, "n": 3}
    assert b"0.1," in text


def test_lines_gzip_blank_lines_and_join():
    lines = b'{"_id": 1, "text": "ab"}\r\n\n   \n{"_id": 2, "text": "abcd", "SageMakerOutput": 9}\n'
    out, model = _run(gzip.compress(lines), CompressionType="Gzip", InputFilter="$.text",
                      JoinSource="Input")
    assert out.decode().splitlines() == [
        '{"_id":1,"text":"ab","SageMakerOutput":[[2.0,1.0]]}',
        '{"_id":2,"text":"abcd","SageMakerOutput":[[4.0,1.0]]}',
    ]
    assert model.calls == [["ab", "abcd"]]


def test_single_record_and_output_filter():
    data = b'{"id": "a", "text": "x"}\n{"id": "b", "text": ["y", "zz"]}\n'
    out, model = _run(data, BatchStrategy="SingleRecord", InputFilter="$.text", JoinSource="Input",
                      OutputFilter="$['id','SageMakerOutput']")
    assert [json.loads(x) for x in out.splitlines()] == [
        {"id": "a", "SageMakerOutput": [[1, 1]]},
        {"id": "b", "SageMakerOutput": [[1, 2], [2, 2]]},
    ]
    assert model.calls == [["x"], ["y", "zz"]]


def test_whole_object_no_join_assemble_none():
    out, model = _run(b'{"inputs": "hello"}', SplitType="None", AssembleWith="None")
    assert out == b"[[5.0,1.0]]" and model.calls == [["hello"]]


def test_payload_limit_packs_batches_and_rejects_huge_records():
    big = "x" * 400_000
    data = "".join(json.dumps({"text": big}) + "\n" for _ in range(6)).encode()
    _, model = _run(data, MaxPayloadInMB=1, InputFilter="$.text")
    assert [len(c) for c in model.calls] == [2, 2, 2]
    huge = json.dumps({"text": "y" * (1 << 20)}).encode()
    with pytest.raises(FileFailed, match=r"ClientError: s3://b/in/f.jsonl, line 2: Too much data"):
        _run(b'{"text": "ok"}\n' + huge, MaxPayloadInMB=1, InputFilter="$.text")


def test_bad_records_name_file_and_line():
    with pytest.raises(dp.FilterError, match=r"s3://b/in/f.jsonl, line 3: not valid JSON"):
        _run(b'{"text": "a"}\n{"text": "b"}\nnot json\n', InputFilter="$.text")
    with pytest.raises(dp.FilterError, match=r"line 1: .*string or a non-empty list of strings"):
        _run(b'{"text": []}\n', InputFilter="$.text")


def test_stop_is_checked_between_model_calls():
    def check():
        raise StopRequested()

    with pytest.raises(StopRequested):
        _run(b'{"text": "a"}\n', check=check, InputFilter="$.text")


def test_inputs_and_output_names():
    s3 = _S3({"b/in/a.jsonl": b"", "b/in/sub/b.jsonl": b"", "b/in/sub/": b"", "b/other": b""})
    found = list_inputs(s3, _request())
    assert [(f.key, f.rel) for f in found] == [("in/a.jsonl", "a.jsonl"),
                                              ("in/sub/b.jsonl", "sub/b.jsonl")]
    assert output_location(_request(), "sub/b.jsonl") == ("o", "out/sub/b.jsonl.out")
    s3.objects["b/m.json"] = json.dumps([{"prefix": "s3://c/p/"}, "x.jsonl", "y/z.jsonl"]).encode()
    req = _request()
    req["TransformInput"]["DataSource"]["S3DataSource"] = {"S3DataType": "ManifestFile",
                                                           "S3Uri": "s3://b/m.json"}
    assert list_inputs(s3, req) == [InputFile("c", "p/x.jsonl", "x.jsonl"),
                                    InputFile("c", "p/y/z.jsonl", "y/z.jsonl")]
