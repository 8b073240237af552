from __future__ import annotations

import decimal

import orjson
import pytest

from batchvec.ingest.records import (
    DEFAULT_MAX_TEXT_BYTES,
    RecordSpec,
    Rejected,
    StagedRecord,
    make_validator,
    parse_line,
    raw_excerpt,
    validate,
)


def reason(result: object) -> str | None:
    return result.reason if isinstance(result, Rejected) else None


# --- parse_line -------------------------------------------------------------------------

@pytest.mark.parametrize("raw", [b"", b" ", b"\r", b"  \t \r", b"\t"])
def test_blank_lines_are_skipped(raw: bytes) -> None:
    assert parse_line(raw, first_line=False) is None
    assert parse_line(raw, first_line=True) is None


def test_crlf_and_bom() -> None:
    assert parse_line(b'{"id": 1}\r', first_line=False) == {"id": 1}
    assert parse_line(b'\xef\xbb\xbf{"id": 1}\r', first_line=True) == {"id": 1}
    assert parse_line(b"\xef\xbb\xbf", first_line=True) is None
    # a BOM is only tolerated where files start
    assert reason(parse_line(b'\xef\xbb\xbf{"id": 1}', first_line=False)) == "invalid_json"


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        (b'{"id": "\xff\xfe"}', "invalid_utf8"),
        (b'\xc3{"id": 1}', "invalid_utf8"),
        (b'{"id": 1', "invalid_json"),
        (b"{'id': 1}", "invalid_json"),
        (b'{"id": NaN}', "invalid_json"),
        (b'{"id": 1} {"id": 2}', "invalid_json"),
        (b'"\\ud800"', "invalid_json"),
        (b"[1, 2]", "not_an_object"),
        (b'"text"', "not_an_object"),
        (b"42", "not_an_object"),
        (b"null", "not_an_object"),
        (b"true", "not_an_object"),
    ],
)
def test_parse_line_rejects(raw: bytes, why: str) -> None:
    result = parse_line(raw, first_line=True)
    assert reason(result) == why, result
    assert result.detail


# --- validate -------------------------------------------------------------------------

SPEC = {"id_field": "id", "text_field": "body", "metadata_fields": ("lang", "tags")}


def check(obj: dict, **overrides: object) -> StagedRecord | Rejected:
    return validate(obj, **{**SPEC, **overrides})


@pytest.mark.parametrize(
    ("obj", "why"),
    [
        ({"body": "x"}, "missing_id"),
        ({"id": None, "body": "x"}, "missing_id"),
        ({"id": True, "body": "x"}, "bad_id_type"),
        ({"id": False, "body": "x"}, "bad_id_type"),
        ({"id": 1.0, "body": "x"}, "bad_id_type"),
        ({"id": 1.5, "body": "x"}, "bad_id_type"),
        ({"id": {"a": 1}, "body": "x"}, "bad_id_type"),
        ({"id": [1], "body": "x"}, "bad_id_type"),
        ({"id": "", "body": "x"}, "empty_id"),
        ({"id": "  ", "body": "x"}, "empty_id"),
        ({"id": "x" * 513, "body": "x"}, "id_too_long"),
        ({"id": "é" * 257, "body": "x"}, "id_too_long"),
        ({"id": "a"}, "missing_text"),
        ({"id": "a", "body": None}, "missing_text"),
        ({"id": "a", "body": 3}, "bad_text_type"),
        ({"id": "a", "body": ["x"]}, "bad_text_type"),
        ({"id": "a", "body": {"t": "x"}}, "bad_text_type"),
        ({"id": "a", "body": ""}, "empty_text"),
        ({"id": "a", "body": "   "}, "empty_text"),
        ({"id": "a", "body": " \n\t\r "}, "empty_text"),
    ],
)
def test_validate_rejects(obj: dict, why: str) -> None:
    result = check(obj)
    assert reason(result) == why, result


def test_text_too_long_counts_utf8_bytes() -> None:
    assert isinstance(check({"id": 1, "body": "a" * 100}, max_text_bytes=100), StagedRecord)
    assert reason(check({"id": 1, "body": "a" * 101}, max_text_bytes=100)) == "text_too_long"
    # 50 chars but 100 bytes fits; one more 2-byte char does not
    assert isinstance(check({"id": 1, "body": "é" * 50}, max_text_bytes=100), StagedRecord)
    assert reason(check({"id": 1, "body": "é" * 51}, max_text_bytes=100)) == "text_too_long"
    big = "a" * (DEFAULT_MAX_TEXT_BYTES + 1)
    assert reason(check({"id": 1, "body": big})) == "text_too_long"


def test_accepted_record_line() -> None:
    result = check({"id": 7, "body": "héllo \"q\"\n", "lang": "en", "tags": None, "x": 1})
    assert isinstance(result, StagedRecord)
    assert result.doc_id == "7"
    assert result.line.endswith(b"\n") and result.line.count(b"\n") == 1
    # ids normalised to str; null/absent metadata omitted; other fields dropped
    assert orjson.loads(result.line) == {"_id": "7", "text": "héllo \"q\"\n", "lang": "en"}
    assert list(orjson.loads(result.line)) == ["_id", "text", "lang"]


def test_metadata_values_kept_as_json() -> None:
    result = check({"id": "a", "body": "t", "lang": {"k": [1, 2.5]}, "tags": decimal.Decimal("1.5")})
    assert orjson.loads(result.line) == {"_id": "a", "text": "t", "lang": {"k": [1, 2.5]},
                                         "tags": "1.5"}
    big_int = check({"id": "a", "body": "t", "lang": 2**70})
    assert reason(big_int) == "bad_metadata"


def test_large_int_id_and_string_id() -> None:
    assert check({"id": 2**63, "body": "t"}).doc_id == str(2**63)
    assert check({"id": "007", "body": "t"}).doc_id == "007"


@pytest.mark.parametrize("name", ["_id", "text", "SageMakerOutput"])
def test_reserved_metadata_names_refused(name: str) -> None:
    with pytest.raises(ValueError, match="reserved"):
        RecordSpec("id", "body", (name,))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"id_field": ""},
        {"text_field": 3},
        {"id_field": "a", "text_field": "a"},
        {"metadata_fields": ("x", "x")},
        {"metadata_fields": ("",)},
        {"max_text_bytes": 0},
        {"max_text_bytes": True},
        {"max_text_bytes": 100 << 20},
    ],
)
def test_spec_validation(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        RecordSpec(**kwargs)


def test_rejected_at_and_json() -> None:
    rej = Rejected("invalid_json", "bad").at("s3://b/k.jsonl", 12, b"x" * 5000)
    doc = orjson.loads(rej.to_json())
    assert doc == {"source": "s3://b/k.jsonl", "line": 12, "reason": "invalid_json",
                   "detail": "bad", "raw": "x" * 1024}
    assert raw_excerpt(b"\xff" + b"a" * 10) == "\ufffd" + "a" * 10
    assert raw_excerpt({"id": 1}) == '{"id":1}'
    # a CRLF line's terminator is not shown as part of the record; an inner \r is
    crlf = Rejected("invalid_json", "bad").at("a.jsonl", 3, b'{"id": 1\r')
    assert crlf.raw == '{"id": 1' and raw_excerpt(b"a\rb\r") == "a\rb"
    many = Rejected("missing_column", "no 'text'", count=10).at("f.parquet", 0)
    assert orjson.loads(many.to_json())["count"] == 10


def test_validator_is_reusable() -> None:
    v = make_validator(RecordSpec("id", "text"))
    assert [v({"id": i, "text": "t"}) for i in range(2)] == [
        ("0", b'{"_id":"0","text":"t"}\n'), ("1", b'{"_id":"1","text":"t"}\n')]


def test_a_missing_id_says_which_field_the_record_has_and_the_param_to_set() -> None:
    # The common {"_id": ..., "text": ...} shape with the default id_field=id.
    rej = validate({"_id": "a1", "text": "x"}, id_field="id", text_field="text")
    assert reason(rej) == "missing_id"
    assert rej.detail == "no 'id' field, but the record has '_id': set id_field to '_id' if that is it"
    rej = validate({"id": "a1", "text": "x"}, id_field="doc_id", text_field="text")
    assert "has 'id': set id_field to 'id'" in rej.detail
    assert validate({"x": 1, "text": "t"}, id_field="id", text_field="text").detail == "no 'id' field"
    rej = validate({"id": "a", "body": "x"}, id_field="id", text_field="text")
    assert reason(rej) == "missing_text" and "has 'body': set text_field to 'body'" in rej.detail
