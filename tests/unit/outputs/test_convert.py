"""SageMaker output line -> bulk action conversion, checked against a stdlib-json reference."""

from __future__ import annotations

import json
import random
import struct

import pytest

from batchvec.outputs import convert
from batchvec.outputs.convert import (
    ActionBuilder,
    OutputRejected,
    convert_line,
    parse_vector,
    vector_dimension,
)

INDEX = "docs-knn"
FIELD = "embedding"
TEXT_PIECES = [
    "plain",
    'quote "q"',
    "back\\slash",
    "tab\tnew\nline",
    "é ü ß",
    "日本語",
    "emoji 🚀",
    "ctl \u0001",
    "</script>",
    "  ",
    '{"json": [1, 2]}',
    "SageMakerOutput",
    '"SageMakerOutput": [1]}',
]


def _f32(value: float) -> float:
    return struct.unpack("f", struct.pack("f", value))[0]


def _vector_text(vec: list[float], style: str) -> str:
    if style == "repr":
        return json.dumps(vec)
    if style == "f32":  # numpy float32 formatting, with exponents for small values
        return "[" + ", ".join(f"{_f32(v):.8g}" for v in vec) + "]"
    return "[" + ",".join(repr(v) for v in vec) + "]"  # compact


def _record(rng: random.Random, i: int) -> dict:
    text = " ".join(rng.choice(TEXT_PIECES) for _ in range(rng.randint(1, 30)))
    rec: dict = {"_id": f"d-{i}-{rng.choice(TEXT_PIECES)}", "text": text}
    if rng.random() < 0.7:
        rec["meta"] = {
            "lang": rng.choice(["en", "fr"]),
            "tags": ["a", "ü"],
            "n": i,
            "score": rng.random(),
            "ok": True,
            "none": None,
        }
    return rec


def _out_line(
    rec: dict, vec: list[float], *, nested: bool, style: str, sep: str = ", ", ascii: bool = True
) -> bytes:
    vt = _vector_text(vec, style)
    if nested:
        vt = f"[{vt}]"
    body = json.dumps(rec, ensure_ascii=ascii)
    return f'{body[:-1]}{sep}"SageMakerOutput":{" " if sep else ""}{vt}}}'.encode()


def _reference(line: bytes) -> tuple[str, dict, dict]:
    obj = json.loads(line)
    doc_id = obj.pop("_id")
    vec = obj.pop("SageMakerOutput")
    if isinstance(vec[0], list):
        vec = vec[0]
    obj[FIELD] = vec
    return doc_id, {"index": {"_index": INDEX, "_id": doc_id}}, obj


def _split_action(action: bytes) -> tuple[dict, dict]:
    assert action.endswith(b"\n") and action.count(b"\n") == 2, "NDJSON framing broken"
    header, source, _ = action.split(b"\n")
    return json.loads(header), json.loads(source)


@pytest.mark.parametrize("style", ["repr", "f32", "compact"])
@pytest.mark.parametrize("nested", [True, False])
def test_matches_stdlib_reference(style: str, nested: bool) -> None:
    rng = random.Random(f"{style}{nested}")
    dim = 24
    for i in range(200):
        vec = [rng.gauss(0, 0.05) * rng.choice([1, 1, 1e-4, 10]) for _ in range(dim)]
        rec = _record(rng, i)
        line = _out_line(
            rec,
            vec,
            nested=nested,
            style=style,
            sep=rng.choice([", ", ","]),
            ascii=rng.random() < 0.5,
        )
        doc_id, action = convert_line(line, index=INDEX, vector_field=FIELD, dimension=dim)
        ref_id, ref_header, ref_source = _reference(line)
        header, source = _split_action(action)
        assert doc_id == ref_id
        assert header == ref_header
        assert source == ref_source
        assert "_id" not in source and "SageMakerOutput" not in source


def test_typical_lines_take_the_fast_path(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_slow(self: ActionBuilder, line: bytes) -> None:
        raise AssertionError(f"slow path taken for {line[:80]!r}")

    monkeypatch.setattr(ActionBuilder, "_slow", no_slow)
    rng = random.Random(7)
    builder = ActionBuilder(INDEX, FIELD, 384)
    for i in range(50):
        vec = [rng.gauss(0, 0.05) for _ in range(384)]
        for style in ("repr", "f32"):
            line = _out_line(_record(rng, i), vec, nested=i % 2 == 0, style=style)
            builder.convert(line)


def test_vector_text_is_kept_verbatim() -> None:
    line = b'{"_id": "a", "text": "t", "SageMakerOutput": [[0.10000000149, -2.5e-05, 3]]}'
    _, action = convert_line(line, index=INDEX, vector_field=FIELD, dimension=3)
    assert action.endswith(b'"embedding":[0.10000000149, -2.5e-05, 3]}\n')
    assert action.startswith(b'{"index":{"_index":"docs-knn","_id":"a"}}\n{"text":"t",')


@pytest.mark.parametrize(
    "line",
    [
        # key not last, value equal to the key, positive exponents, upper-case E, blanks
        b'{"SageMakerOutput": [1.5, 2], "_id": "a", "text": "x"}',
        b'{"_id": "a", "model": "SageMakerOutput", "SageMakerOutput": [1.5, 2]}',
        b'{"_id": "a", "SageMakerOutput": [1.5e+2, 2E-3]}',
        b'{"_id": "a", "SageMakerOutput": [ [ 1.5 ,\t2 ] ] }',
        b'{"_id": "a", "SageMakerOutput": [1.5,\n 2]}',
        b'{"_id": "a", "embedding": "old", "SageMakerOutput": [1.5, 2]}',
        b'{"_id": "a", "SageMakerOutput": [0, 0], "SageMakerOutput": [1.5, 2]}',
    ],
)
def test_unusual_but_valid_lines(line: bytes) -> None:
    _, action = convert_line(line, index=INDEX, vector_field=FIELD, dimension=2)
    header, source = _split_action(action)
    ref_id, ref_header, ref_source = _reference(line)
    assert header == ref_header
    assert source == ref_source


def test_only_id_and_vector() -> None:
    _, action = convert_line(
        b'{"_id":"x","SageMakerOutput":[1,2]}', index=INDEX, vector_field=FIELD, dimension=None
    )
    assert action == b'{"index":{"_index":"docs-knn","_id":"x"}}\n{"embedding":[1,2]}\n'


def test_crlf_and_blanks_around_line() -> None:
    line = b'  {"_id": "a", "text": "t", "SageMakerOutput": [1.0, 2.0]}\r\n'
    doc_id, action = convert_line(line, index=INDEX, vector_field=FIELD, dimension=2)
    assert doc_id == "a"
    assert _split_action(action)[1] == {"text": "t", FIELD: [1.0, 2.0]}


def test_id_with_quotes_and_unicode_is_escaped_in_header() -> None:
    line = json.dumps({"_id": 'q"ü\\', "SageMakerOutput": [1]}).encode()
    doc_id, action = convert_line(line, index=INDEX, vector_field=FIELD, dimension=1)
    assert doc_id == 'q"ü\\'
    assert _split_action(action)[0]["index"]["_id"] == 'q"ü\\'


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (b'{"_id": "a", "SageMakerOutput": [NaN, 1.0]}', "bad_vector"),
        (b'{"_id": "a", "SageMakerOutput": [[1.0, Infinity]]}', "bad_vector"),
        (b'{"_id": "a", "SageMakerOutput": [-Infinity, 1.0]}', "bad_vector"),
        (b'{"_id": "a", "SageMakerOutput": [null, 1.0]}', "bad_vector"),
        (b'{"_id": "a", "SageMakerOutput": ["1.0", 1.0]}', "bad_vector"),
        (b'{"_id": "a", "SageMakerOutput": [true, 1.0]}', "bad_vector"),
        (b'{"_id": "a", "SageMakerOutput": [1e400, 1.0]}', "bad_vector"),
        (b'{"_id": "a", "SageMakerOutput": [[1.0, 2.0], [3.0, 4.0]]}', "bad_vector"),
        (b'{"_id": "a", "SageMakerOutput": []}', "bad_vector"),
        (b'{"_id": "a", "SageMakerOutput": [[]]}', "bad_vector"),
        (b'{"_id": "a", "SageMakerOutput": {"v": [1.0, 2.0]}}', "bad_vector"),
        (b'{"_id": "a", "SageMakerOutput": [1.0, 2.0, 3.0]}', "dimension_mismatch"),
        (b'{"_id": "a", "SageMakerOutput": [[1.0]]}', "dimension_mismatch"),
        (b'{"_id": "a", "SageMakerOutput": [1.0e+1, 2.0, 3.0]}', "dimension_mismatch"),
        (b'{"_id": "a", "text": "no vector"}', "missing_vector"),
        (b'{"_id": "a", "SageMakerOutput": null}', "missing_vector"),
        (b'{"_id": "a", "SageMakerOutput": [1.0, 2.0]', "invalid_json"),
        (b'{"_id": "a", "text": "x\xff", "SageMakerOutput": [1.0, 2.0]}', "invalid_json"),
        (b'{"_id": "a", "t": "\\ud800", "SageMakerOutput": [1.0, 2.0]}', "invalid_json"),
        (b"[1.0, 2.0]", "invalid_json"),
        (b"", "invalid_json"),
        (b'{"text": "x", "SageMakerOutput": [1.0, 2.0]}', "missing_id"),
        (b'{"_id": "", "SageMakerOutput": [1.0, 2.0]}', "missing_id"),
        (b'{"_id": 17, "SageMakerOutput": [1.0, 2.0]}', "bad_id"),
        (b'{"_id": "' + b"x" * 513 + b'", "SageMakerOutput": [1.0, 2.0]}', "bad_id"),
    ],
)
def test_rejects(line: bytes, reason: str) -> None:
    with pytest.raises(OutputRejected) as info:
        convert_line(line, index=INDEX, vector_field=FIELD, dimension=2)
    assert info.value.reason == reason, info.value
    assert str(info.value).startswith(reason)


def test_reject_carries_doc_id_when_known() -> None:
    with pytest.raises(OutputRejected) as info:
        convert_line(
            b'{"_id": "d9", "SageMakerOutput": [1.0]}', index=INDEX, vector_field=FIELD, dimension=3
        )
    assert info.value.doc_id == "d9"


def test_vector_dimension_and_parse_vector_both_shapes() -> None:
    flat = b'{"_id": "a", "SageMakerOutput": [0.5, -1, 2e-3]}'
    nested = b'{"_id": "a", "SageMakerOutput": [[0.5, -1, 2e-3]]}'
    for line in (flat, nested):
        assert vector_dimension(line) == 3
        assert parse_vector(line) == [0.5, -1.0, 0.002]
    with pytest.raises(OutputRejected):
        parse_vector(b'{"_id": "a", "SageMakerOutput": [NaN]}')
    assert vector_dimension(b'{"_id":"a","vec":[1,2]}', output_key="vec") == 2


def test_custom_output_key() -> None:
    _, action = convert_line(
        b'{"_id":"a","text":"t","out":[[1,2]]}',
        index=INDEX,
        vector_field="v",
        dimension=2,
        output_key="out",
    )
    assert _split_action(action)[1] == {"text": "t", "v": [1, 2]}


def test_builder_argument_checks() -> None:
    with pytest.raises(ValueError):
        ActionBuilder(INDEX, "_id", 3)
    with pytest.raises(ValueError):
        ActionBuilder(INDEX, FIELD, 0)


def test_convert_line_reuses_builders() -> None:
    convert._builder.cache_clear()
    for _ in range(3):
        convert_line(
            b'{"_id":"a","SageMakerOutput":[1]}', index=INDEX, vector_field=FIELD, dimension=1
        )
    assert convert._builder.cache_info().misses == 1
