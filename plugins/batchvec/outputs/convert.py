"""SageMaker batch-transform output lines -> OpenSearch bulk actions, without parsing floats.

A `.out` line (join format, ``JoinSource=Input``, ``AssembleWith=Line``) is the staged input
record with the model's answer joined on as the last key::

    {"_id": "d1", "text": "hello", "lang": "en", "SageMakerOutput": [[0.01, -0.2, ...]]}

Parsing and re-serialising every float is what makes a naive converter slow (~15k docs/s at
384-d), so the fast path keeps the model's vector text as it came and only checks it:

* the vector is located with ``find`` of the quoted output key (the prefix is short, the
  vector long); the rest of the line must be ``: [ ... ] }`` (a list of one vector is
  unwrapped), which also proves the key is the last one;
* the vector text may hold only digits, ``-+.eE``, commas and blanks (so NaN, Infinity,
  null, strings and nested lists are refused) and exactly ``dimension - 1`` commas;
* only the small prefix before the key is parsed (orjson), ``_id`` is popped, the prefix
  is re-dumped and the vector text spliced back in.

Anything the fast path is not sure about (key not last, positive exponents that could
overflow, unusual blanks, invalid values) goes to a full parse that checks every float
properly and decides the reject reason. What neither path checks is the number grammar of
the kept text (``1.2.3``, ``1,,2``, a 400-digit literal): OpenSearch refuses such a document
on its own (``mapper_parsing_exception``, k-NN's finite check), and the bulk writer sends it
to the DLQ with that reason.
"""

from __future__ import annotations

import json
import math
from functools import lru_cache
from typing import Any

import orjson

from batchvec.ingest.records import MAX_ID_BYTES

__all__ = [
    "ActionBuilder",
    "OutputRejected",
    "OutputShapeError",
    "check_output_shape",
    "convert_line",
    "parse_vector",
    "vector_dimension",
]

DEFAULT_OUTPUT_KEY = "SageMakerOutput"

# Bytes of a plain vector besides commas and exponents: translate() deletes them, so one C
# pass leaves only the commas (compared with a precomputed string) and any "e". No CR/LF
# (they would break NDJSON framing), no "+" or "E" (rare; the full parse handles them).
_PLAIN_NUMBER_BYTES = b"0123456789-. \t"
_FIRST_OK = b"-0123456789"
_LAST_OK = b"0123456789"
_BLANKS = b" \t"
_MISSING = object()


class OutputRejected(Exception):
    """A line that cannot become a bulk action; ``reason`` is a short code for counting."""

    def __init__(self, reason: str, message: str, doc_id: str | None = None) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message
        self.doc_id = doc_id


class _Fallback(Exception):
    """Internal: the fast path's structural assumptions do not hold for this line."""


def _loads_lenient(line: bytes) -> Any:
    """orjson first; stdlib second so NaN/Infinity read as bad values, not bad JSON."""
    try:
        return orjson.loads(line)
    except orjson.JSONDecodeError:
        pass
    try:
        return json.loads(line)
    except (ValueError, RecursionError) as exc:
        raise OutputRejected("invalid_json", str(exc)[:200]) from None


def _check_id(doc_id: Any) -> str:
    if doc_id is None or doc_id == "":
        raise OutputRejected("missing_id", "record has no _id")
    if not isinstance(doc_id, str):
        raise OutputRejected("bad_id", f"_id must be a string, got {type(doc_id).__name__}")
    if len(doc_id) > MAX_ID_BYTES // 4 and len(doc_id.encode("utf-8", "replace")) > MAX_ID_BYTES:
        raise OutputRejected("bad_id", f"_id longer than {MAX_ID_BYTES} bytes")
    return doc_id


def _check_vector(raw: Any, dimension: int | None, doc_id: str | None = None) -> list[float]:
    """Full check of a parsed model answer: one non-empty list of finite numbers."""
    if raw is _MISSING or raw is None:
        raise OutputRejected("missing_vector", "no model output in line", doc_id)
    if not isinstance(raw, list):
        raise OutputRejected("bad_vector", f"output is {type(raw).__name__}, not a list", doc_id)
    if raw and isinstance(raw[0], list):
        if len(raw) != 1:
            raise OutputRejected("bad_vector", f"expected one vector, got {len(raw)}", doc_id)
        raw = raw[0]
    if not raw:
        raise OutputRejected("bad_vector", "empty vector", doc_id)
    for value in raw:
        # bool is an int subclass but never a valid vector component
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise OutputRejected("bad_vector", f"non-numeric value {value!r:.40}", doc_id)
        if not math.isfinite(value):
            raise OutputRejected("bad_vector", f"non-finite value {value!r}", doc_id)
    if dimension is not None and len(raw) != dimension:
        raise OutputRejected(
            "dimension_mismatch", f"expected {dimension} values, got {len(raw)}", doc_id
        )
    return raw


class ActionBuilder:
    """Converts `.out` lines of one shard into bulk action bytes; header pieces pre-encoded."""

    def __init__(
        self,
        index: str,
        vector_field: str,
        dimension: int | None,
        output_key: str = DEFAULT_OUTPUT_KEY,
    ) -> None:
        if not index or not vector_field or vector_field == "_id":
            raise ValueError("index and vector_field are required; vector_field may not be _id")
        if dimension is not None and dimension < 1:
            raise ValueError("dimension must be positive")
        self.index = index
        self.vector_field = vector_field
        self.dimension = dimension
        self.output_key = output_key
        self._key = orjson.dumps(output_key)
        self._head = b'{"index":{"_index":' + orjson.dumps(index) + b',"_id":'
        field = orjson.dumps(vector_field)
        self._vec_next = b"," + field + b":["  # after other source fields
        self._vec_only = b"{" + field + b":["  # source holds only the vector
        self._commas = b"," * (dimension - 1) if dimension else None

    def __call__(self, line: bytes) -> tuple[str, bytes]:
        return self.convert(line)

    def convert(self, line: bytes) -> tuple[str, bytes]:
        """One output line -> ``(doc_id, b'{"index":...}\\n{...source...}\\n')``."""
        line = line.strip()
        try:
            return self._fast(line)
        except _Fallback:
            return self._slow(line)

    def _locate(self, line: bytes) -> tuple[int, bytes]:
        """(start of the output key, vector text without brackets) or _Fallback."""
        key = self._key
        # The first match is safe: the checks below only pass if the key is the last one.
        k = line.find(key)
        if k < 0 or line[-1:] != b"}":
            raise _Fallback
        after = k + len(key)
        j = line.find(b"[", after)
        end = line.rfind(b"]")
        if j < 0 or end < j:
            raise _Fallback
        if line[after:j].strip() != b":" or line[end + 1 : -1].strip():
            raise _Fallback
        a, b = j + 1, end
        while line[a] in _BLANKS:  # rare: "[ [" written with blanks
            a += 1
        if line[a] == 0x5B:  # "[" -> a list of one vector; unwrap it
            b -= 1
            while line[b] in _BLANKS:
                b -= 1
            if line[b] != 0x5D:
                raise _Fallback
            a += 1
        inner = line[a:b].strip()
        if not inner or inner[0] not in _FIRST_OK or inner[-1] not in _LAST_OK:
            raise _Fallback
        return k, inner

    def _count_values(self, inner: bytes) -> int:
        """Number of values in checked vector text, or _Fallback for anything doubtful."""
        rest = inner.translate(None, _PLAIN_NUMBER_BYTES)
        if rest == self._commas:
            return len(rest) + 1
        commas = rest.count(b",")
        exponents = rest.count(b"e")
        if commas + exponents != len(rest):
            raise _Fallback  # something besides numbers and commas
        # Only negative exponents stay on the fast path: a positive one could overflow.
        i = inner.find(b"e")
        while i >= 0:
            if inner[i + 1] != 0x2D:  # "-"
                raise _Fallback
            i = inner.find(b"e", i + 2)
        return commas + 1

    def _fast(self, line: bytes) -> tuple[str, bytes]:
        k, inner = self._locate(line)
        n = self._count_values(inner)
        prefix = line[:k].rstrip()
        if prefix == b"{":
            doc: Any = {}
        elif prefix[-1:] == b",":
            try:
                doc = orjson.loads(prefix[:-1] + b"}")
            except orjson.JSONDecodeError:
                raise _Fallback from None
            if not isinstance(doc, dict):
                raise _Fallback
        else:
            raise _Fallback
        doc_id = _check_id(doc.pop("_id", None))
        if self.dimension is not None and n != self.dimension:
            raise OutputRejected(
                "dimension_mismatch", f"expected {self.dimension} values, got {n}", doc_id
            )
        doc.pop(self.output_key, None)  # an earlier duplicate of the key
        doc.pop(self.vector_field, None)  # the vector wins over a same-named field
        return doc_id, self._assemble(doc_id, orjson.dumps(doc), inner, _version(doc))

    def _assemble(self, doc_id: str, source: bytes, vector_text: bytes,
                  version: int | None = None) -> bytes:
        if len(source) == 2:  # b"{}"
            src_head, vec_head = b"", self._vec_only
        else:
            src_head, vec_head = source[:-1], self._vec_next
        # The record's external version (changes.py): the newest write wins, whatever the
        # order the runs finish in; the same version again (a retry) still writes.
        tail = b"}}\n" if version is None else b',"version":%d,"version_type":"external_gte"}}\n' % version
        return b"".join(
            (self._head, orjson.dumps(doc_id), tail, src_head, vec_head, vector_text, b"]}\n")
        )

    def _slow(self, line: bytes) -> tuple[str, bytes]:
        """Full parse: the authority for odd-but-valid lines and for reject reasons."""
        obj = _loads_lenient(line)
        if not isinstance(obj, dict):
            raise OutputRejected("invalid_json", f"line is a JSON {type(obj).__name__}")
        doc_id = _check_id(obj.pop("_id", None))
        vector = _check_vector(obj.pop(self.output_key, _MISSING), self.dimension, doc_id)
        obj.pop(self.vector_field, None)
        try:
            source = orjson.dumps(obj)
            vector_text = orjson.dumps(vector)[1:-1]
        except orjson.JSONEncodeError as exc:  # e.g. lone surrogates the stdlib let through
            raise OutputRejected("invalid_json", str(exc)[:200], doc_id) from None
        return doc_id, self._assemble(doc_id, source, vector_text, _version(obj))


def _version(doc: dict) -> int | None:
    """The external version a staged record carries (``batchvec.v``), if any."""
    block = doc.get("batchvec")
    if block.__class__ is dict:
        v = block.get("v")
        if v.__class__ is int and v >= 0:
            return v
    return None


@lru_cache(maxsize=64)
def _builder(
    index: str, vector_field: str, dimension: int | None, output_key: str
) -> ActionBuilder:
    return ActionBuilder(index, vector_field, dimension, output_key)


def convert_line(
    line: bytes,
    *,
    index: str,
    vector_field: str,
    dimension: int | None,
    output_key: str = DEFAULT_OUTPUT_KEY,
) -> tuple[str, bytes]:
    """One `.out` line -> (doc_id, bulk action pair bytes); raises OutputRejected."""
    return _builder(index, vector_field, dimension, output_key).convert(line)


def parse_vector(line: bytes, output_key: str = DEFAULT_OUTPUT_KEY) -> list[float]:
    """The checked vector of one `.out` line as floats (slow path; for verification)."""
    obj = _loads_lenient(line.strip())
    if not isinstance(obj, dict):
        raise OutputRejected("invalid_json", f"line is a JSON {type(obj).__name__}")
    doc_id = obj.get("_id") if isinstance(obj.get("_id"), str) else None
    return [float(v) for v in _check_vector(obj.get(output_key, _MISSING), None, doc_id)]


class OutputShapeError(ValueError):
    """The model's answers are not one flat vector per record: the container is set up wrong."""


CONTAINER_FIX = ("deploy the model with batchvec's inference code (python -m "
                 "batchvec.model.container; README: The SageMaker model), which pools and "
                 "normalises as the model's sentence-transformers config says")


def _shape(value) -> list[int]:
    shape = []
    while isinstance(value, list):
        shape.append(len(value))
        value = value[0] if value else None
    return shape


def check_output_shape(line: bytes, dimension: int | None,
                       output_key: str = DEFAULT_OUTPUT_KEY) -> int:
    """The dimension of the one vector a `.out` line holds, or OutputShapeError saying what
    the model returned instead (per-token vectors, an object, several vectors, ...)."""
    try:
        obj = _loads_lenient(line.strip())
    except OutputRejected as exc:
        raise OutputShapeError(f"the output line is not JSON ({exc.message}): the job's "
                               "AssembleWith must be Line and its Accept JSON") from None
    if not isinstance(obj, dict) or output_key not in obj:
        raise OutputShapeError(f"the output line has no {output_key!r}: the job must join "
                               "the model's answer to its input (DataProcessing JoinSource Input)")
    value, shape = obj[output_key], _shape(obj[output_key])
    if isinstance(value, dict):
        keys = ", ".join(sorted(map(str, value))[:5])
        raise OutputShapeError(f"the model answered a JSON object (keys: {keys}) per record, "
                               f"not a vector: {CONTAINER_FIX}")
    if not shape:
        raise OutputShapeError(f"the model answered {type(value).__name__} per record, not a "
                               f"vector: {CONTAINER_FIX}")
    if len(shape) == 3:
        raise OutputShapeError(
            f"the model answered per-token vectors (shape {shape}) per record, not one "
            "sentence vector: that is what HF_TASK=feature-extraction returns (no pooling, no "
            f"normalisation); {CONTAINER_FIX}")
    if len(shape) == 2 and shape[0] > 1:
        raise OutputShapeError(
            f"the model answered {shape[0]} vectors (shape {shape}) per record, not one: "
            "per-token vectors (HF_TASK=feature-extraction), or records holding several texts "
            f"(the InputFilter must select one text); {CONTAINER_FIX}")
    if len(shape) > 2 or (len(shape) == 2 and shape[0] != 1):
        raise OutputShapeError(f"the model answered a nested list of shape {shape} per record, "
                               f"not one flat vector: {CONTAINER_FIX}")
    vector = value[0] if len(shape) == 2 else value
    if not vector or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in vector):
        raise OutputShapeError("the model's vectors hold non-numbers or are empty: "
                               f"{CONTAINER_FIX}")
    if dimension and len(vector) != dimension:
        raise OutputShapeError(f"the model's vectors have {len(vector)} values, the run expects "
                               f"{dimension} (param dimension): a different model, or set "
                               "dimension to match it")
    return len(vector)


def vector_dimension(line: bytes, output_key: str = DEFAULT_OUTPUT_KEY) -> int:
    """The model's dimension, learnt from one output line."""
    return len(parse_vector(line, output_key))
