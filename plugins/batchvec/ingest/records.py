"""Validating one input record and serialising it for SageMaker (pure, built for speed).

A staged record is one JSON line ``{"_id": "<id>", "text": "<text>", <metadata...>}``: the
transform job's ``InputFilter`` picks ``$.text`` and ``JoinSource=Input`` joins the whole line
back onto the model's answer, so ids and metadata travel through SageMaker untouched.

Reject reasons (stable codes, counted in the manifest): ``invalid_utf8``, ``invalid_json``,
``not_an_object``, ``missing_id``, ``bad_id_type``, ``empty_id``, ``id_too_long``,
``missing_text``, ``bad_text_type``, ``empty_text``, ``text_too_long``, ``bad_metadata``,
``record_too_large``; file-level ones come from ``sources``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any, NamedTuple

import orjson

__all__ = [
    "DEFAULT_MAX_TEXT_BYTES",
    "MAX_ID_BYTES",
    "MAX_RECORD_BYTES",
    "RESERVED_FIELDS",
    "RecordSpec",
    "Rejected",
    "StagedRecord",
    "make_validator",
    "parse_line",
    "raw_excerpt",
    "validate",
]

# 1 MiB of text is far beyond what any embedding model reads (they truncate at a few hundred
# tokens), and small enough that a record always fits a MultiRecord mini-batch with
# SageMaker's default MaxPayloadInMB=6 with room to spare for escaping and metadata.
DEFAULT_MAX_TEXT_BYTES = 1 << 20
# Hard cap on the whole serialised line: a record larger than the payload limit (6 MB by
# default) makes the whole transform job fail, so it is refused here instead.
MAX_RECORD_BYTES = 5 << 20
MAX_ID_BYTES = 512  # OpenSearch refuses longer _id values
RAW_EXCERPT_BYTES = 1024
# Keys of the staged line, plus the key SageMaker joins its answer under.
RESERVED_FIELDS = frozenset({"_id", "text", "SageMakerOutput", "batchvec"})

_BOM = b"\xef\xbb\xbf"
_loads = orjson.loads
_dumps = orjson.dumps
_APPEND_NL = orjson.OPT_APPEND_NEWLINE


@dataclass(frozen=True, slots=True)
class Rejected:
    """An input record (or, with ``count`` > 1, a whole file's rows) that is not staged."""

    reason: str
    detail: str
    source: str = ""
    line: int = 0
    raw: str = ""
    count: int = 1

    def at(self, source: str, line: int, raw: bytes | dict | str | None = None) -> Rejected:
        """This rejection with where it came from (kept off the hot path: only on rejects)."""
        return replace(self, source=source, line=line, raw=raw_excerpt(raw) if raw else self.raw)

    def to_json(self) -> bytes:
        doc = {"source": self.source, "line": self.line, "reason": self.reason,
               "detail": self.detail, "raw": self.raw}
        if self.count != 1:
            doc["count"] = self.count
        return _dumps(doc, option=_APPEND_NL)


class StagedRecord(NamedTuple):
    """An accepted record: its id (for sharding) and its serialised line (with newline)."""

    doc_id: str
    line: bytes


def raw_excerpt(raw: bytes | dict | str | None) -> str:
    """The first 1 KB of a raw input, as text, for the rejected file."""
    if raw is None:
        return ""
    if isinstance(raw, dict):
        raw = _dumps(raw, default=_json_default)
    if isinstance(raw, str):
        raw = raw.encode("utf-8", "replace")
    # A CRLF file's lines end in "\r": a line terminator, not part of the record.
    return raw[:RAW_EXCERPT_BYTES].removesuffix(b"\r").decode("utf-8", "replace")


def _json_default(value: Any) -> Any:
    """Values orjson cannot write (Decimal, bytes from Parquet/CSV metadata) become text."""
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).decode("utf-8", "replace")
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    return str(value)


def parse_line(raw: bytes, *, first_line: bool = False) -> dict | Rejected | None:
    """One JSONL line -> its object, a Rejected, or None for a blank line (not a record)."""
    try:
        obj = _loads(raw)
    except orjson.JSONDecodeError:
        obj = _parse_slow(raw, first_line)
        if obj is None or obj.__class__ is Rejected:
            return obj
    if obj.__class__ is not dict:
        return Rejected("not_an_object", f"JSON value is {_type_name(obj)}, not an object")
    return obj


def _parse_slow(raw: bytes, first_line: bool) -> Any:
    """Why orjson refused a line: blank, BOM, bad UTF-8 or bad JSON."""
    if first_line and raw.startswith(_BOM):
        raw = raw[len(_BOM):]
    if not raw.strip():
        return None
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return Rejected("invalid_utf8", f"not UTF-8 at byte {exc.start}")
    try:
        return _loads(raw)
    except orjson.JSONDecodeError as exc:
        return Rejected("invalid_json", str(exc)[:200])


def _type_name(value: Any) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", int: "integer",
            float: "number", type(None): "null"}.get(type(value), type(value).__name__)


@dataclass(frozen=True)
class RecordSpec:
    """Which input fields make a record; checked once, before any record is read."""

    id_field: str = "id"
    text_field: str = "text"
    metadata_fields: tuple[str, ...] = ()
    max_text_bytes: int = DEFAULT_MAX_TEXT_BYTES

    def __post_init__(self) -> None:
        object.__setattr__(self, "metadata_fields", tuple(self.metadata_fields))
        for label, name in (("id_field", self.id_field), ("text_field", self.text_field)):
            if not isinstance(name, str) or not name:
                raise ValueError(f"{label} must be a non-empty string, got {name!r}")
        if self.id_field == self.text_field:
            raise ValueError(f"id_field and text_field are both {self.id_field!r}")
        seen: set[str] = set()
        for name in self.metadata_fields:
            if not isinstance(name, str) or not name:
                raise ValueError(f"metadata field names must be non-empty strings, got {name!r}")
            if name in RESERVED_FIELDS:
                raise ValueError(
                    f"metadata field {name!r} is reserved (the staged record uses "
                    f"{', '.join(sorted(RESERVED_FIELDS))})"
                )
            if name in seen:
                raise ValueError(f"metadata field {name!r} listed twice")
            seen.add(name)
        mtb = self.max_text_bytes
        if isinstance(mtb, bool) or not isinstance(mtb, int) or not 0 < mtb <= MAX_RECORD_BYTES:
            raise ValueError(f"max_text_bytes must be an integer in 1..{MAX_RECORD_BYTES}, got {mtb!r}")


# Where ids and texts usually sit when not under the configured name: a record that has one
# of these says so in its rejection, with the param to set.
ID_LOOKALIKES = ("_id", "id", "doc_id", "uuid", "key")
TEXT_LOOKALIKES = ("text", "body", "content", "passage", "document")


def _missing(obj: dict, field: str, param: str, lookalikes: tuple[str, ...]) -> str:
    found = [name for name in lookalikes if name != field and obj.get(name) is not None]
    if not found:
        return f"no {field!r} field"
    return (f"no {field!r} field, but the record has {found[0]!r}: set {param} to "
            f"{found[0]!r} if that is it")


def make_validator(spec: RecordSpec) -> Callable[[dict], tuple[str, bytes] | Rejected]:
    """A closure for the hot loop: every lookup it needs is a local, not an attribute.

    Accepted records come back as a plain ``(doc_id, line)`` tuple, not a StagedRecord:
    building a NamedTuple costs ~0.3 us, a noticeable share of the per-record budget.
    """
    id_field, text_field, max_bytes = spec.id_field, spec.text_field, spec.max_text_bytes
    meta = spec.metadata_fields
    # A str of n chars is at most 4n UTF-8 bytes: short texts skip the encode() entirely.
    max_chars_unchecked = max_bytes // 4

    def check(obj: dict) -> tuple[str, bytes] | Rejected:
        doc_id = obj.get(id_field)
        id_type = doc_id.__class__
        if id_type is str:
            if not doc_id or doc_id.isspace():
                return Rejected("empty_id", f"{id_field!r} is empty")
            if len(doc_id) > MAX_ID_BYTES // 4 and len(doc_id.encode()) > MAX_ID_BYTES:
                return Rejected("id_too_long", f"{id_field!r} is over {MAX_ID_BYTES} bytes")
        elif id_type is int:  # bool is a subclass, not int itself, so it falls through
            doc_id = str(doc_id)
        elif doc_id is None:
            return Rejected("missing_id", _missing(obj, id_field, "id_field", ID_LOOKALIKES))
        else:
            return Rejected("bad_id_type", f"{id_field!r} is {_type_name(doc_id)}, "
                            "not a string or integer")
        text = obj.get(text_field)
        if text.__class__ is not str:
            if text is None:
                return Rejected("missing_text",
                                _missing(obj, text_field, "text_field", TEXT_LOOKALIKES))
            return Rejected("bad_text_type", f"{text_field!r} is {_type_name(text)}, not a string")
        if not text or text.isspace():
            return Rejected("empty_text", f"{text_field!r} is empty or whitespace")
        if len(text) > max_chars_unchecked and len(text.encode()) > max_bytes:
            return Rejected("text_too_long", f"{text_field!r} is over {max_bytes} bytes")
        record = {"_id": doc_id, "text": text}
        for name in meta:
            value = obj.get(name)
            if value is not None:  # null and absent are the same to OpenSearch
                record[name] = value
        try:
            line = _dumps(record, option=_APPEND_NL)
        except TypeError:  # Decimal, bytes... (Parquet/CSV metadata): rarely, so try plain first
            try:
                line = _dumps(record, default=_json_default, option=_APPEND_NL)
            except TypeError as exc:
                return Rejected("bad_metadata", str(exc)[:200])
        if len(line) > MAX_RECORD_BYTES:
            return Rejected("record_too_large", f"staged record is over {MAX_RECORD_BYTES} bytes")
        return doc_id, line

    return check


def validate(
    obj: dict,
    *,
    id_field: str,
    text_field: str,
    metadata_fields: Iterable[str] = (),
    max_text_bytes: int = DEFAULT_MAX_TEXT_BYTES,
) -> StagedRecord | Rejected:
    """Check one parsed record; convenience form of ``make_validator`` for single calls."""
    spec = RecordSpec(id_field, text_field, tuple(metadata_fields), max_text_bytes)
    result = make_validator(spec)(obj)
    return result if result.__class__ is Rejected else StagedRecord(*result)
