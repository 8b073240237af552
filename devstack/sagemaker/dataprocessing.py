"""SageMaker batch transform's DataProcessing: JSONPath input/output filters and the join of
each input record with the container's answer, plus the JSON (de)serialisation of records.

The JSONPath subset SageMaker documents for filters: `$`, `.name`, `['name']`,
`['a','b']` (several members: a smaller object), `[0]`, `[0,2]`, `[1:3]` (on arrays).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

import numpy as np

try:  # orjson writes float32 in its shortest form directly from numpy: short and fast
    import orjson
except ImportError:  # the SageMaker container image may not ship it
    orjson = None


class FilterError(ValueError):
    """A record the filters or the container cannot handle (fails the job as ClientError)."""


@dataclass(frozen=True)
class _Segment:
    kind: str  # "names" | "indexes" | "slice"
    items: tuple


_TOKEN = re.compile(
    r"\.(?P<dot>[A-Za-z_][\w-]*)"  # .name
    r"|\[(?P<bracket>[^\]]*)\]"  # [...]
)
_QUOTED = re.compile(r"""\s*(?:'((?:[^'\\]|\\.)*)'|"((?:[^"\\]|\\.)*)")\s*""")
_SLICE = re.compile(r"^\s*(-?\d*)\s*:\s*(-?\d*)\s*$")


def parse(path: str | None) -> tuple[_Segment, ...] | None:
    """Parsed JSONPath, or None for `$` / no filter; ValueError when unsupported."""
    if path is None:
        return None
    text = path.strip()
    if not text.startswith("$"):
        raise ValueError(f"JSONPath must start with '$': {path!r}")
    pos, segments = 1, []
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m:
            raise ValueError(f"unsupported JSONPath syntax at {text[pos:]!r} in {path!r}")
        pos = m.end()
        if m["dot"] is not None:
            segments.append(_Segment("names", (m["dot"],)))
            continue
        segments.append(_bracket(m["bracket"], path))
    return tuple(segments) or None


def _bracket(inner: str, path: str) -> _Segment:
    slice_m = _SLICE.match(inner)
    if slice_m:
        bounds = tuple(int(x) if x else None for x in slice_m.groups())
        return _Segment("slice", bounds)
    parts = _split_commas(inner)
    if all(_QUOTED.fullmatch(p) for p in parts):
        names = []
        for p in parts:
            q = _QUOTED.fullmatch(p)
            names.append((q[1] if q[1] is not None else q[2]).replace("\\'", "'").replace('\\"', '"'))
        return _Segment("names", tuple(names))
    try:
        return _Segment("indexes", tuple(int(p) for p in parts))
    except ValueError:
        raise ValueError(f"unsupported JSONPath selector [{inner}] in {path!r}") from None


def _split_commas(inner: str) -> list[str]:
    parts, buf, quote = [], "", None
    for ch in inner:
        if quote:
            buf += ch
            if ch == quote and not buf.endswith("\\" + quote):
                quote = None
        elif ch in "'\"":
            quote, buf = ch, buf + ch
        elif ch == ",":
            parts.append(buf)
            buf = ""
        else:
            buf += ch
    parts.append(buf)
    return parts


def apply(segments: tuple[_Segment, ...] | None, value):
    """The part of `value` a parsed path selects; FilterError when it is not there."""
    for seg in segments or ():
        value = _step(seg, value)
    return value


def _step(seg: _Segment, value):
    if seg.kind == "names":
        if not isinstance(value, dict):
            raise FilterError(f"cannot select {list(seg.items)} from a {_kind(value)}")
        missing = [n for n in seg.items if n not in value]
        if missing:
            raise FilterError(f"no member {missing[0]!r} in the record")
        if len(seg.items) == 1:
            return value[seg.items[0]]
        return {n: value[n] for n in seg.items}
    if not isinstance(value, (list, np.ndarray)):
        raise FilterError(f"cannot index a {_kind(value)}")
    if seg.kind == "slice":
        return value[slice(*seg.items)]
    try:
        picked = [value[i] for i in seg.items]
    except IndexError:
        raise FilterError(f"index {list(seg.items)} out of range") from None
    return picked[0] if len(picked) == 1 else picked


def _kind(value) -> str:
    return {dict: "object", list: "array", str: "string"}.get(type(value), type(value).__name__)


def join(source, output):
    """JoinSource=Input: the input record with the answer appended, as SageMaker builds it."""
    if isinstance(source, dict):
        joined = {k: v for k, v in source.items() if k != "SageMakerOutput"}
        joined["SageMakerOutput"] = output  # always the last member
        return joined
    if isinstance(source, list):
        return [*source, output]
    return {"SageMakerInput": source, "SageMakerOutput": output}


def texts_of(value) -> list[str]:
    """What an embedding container accepts: a string, a list of strings, or {"inputs": ...}."""
    if isinstance(value, dict) and set(value) >= {"inputs"}:
        value = value["inputs"]
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return value
    raise FilterError(
        f"the model input must be a string or a non-empty list of strings, got {_kind(value)}"
    )


def loads(data: bytes | str):
    try:
        return orjson.loads(data) if orjson else json.loads(data)
    except ValueError as exc:
        raise FilterError(f"not valid JSON ({exc})") from None


def dumps(obj) -> bytes:
    """Compact JSON; numpy float32 vectors in their shortest float32 spelling."""
    if orjson:
        return orjson.dumps(obj, option=orjson.OPT_SERIALIZE_NUMPY)
    raws: list[str] = []

    def default(o):
        if isinstance(o, np.ndarray):
            raws.append(_array_text(o))
        elif isinstance(o, np.generic):
            raws.append(str(o.item()) if o.dtype.kind in "iub" else str(o))
        else:
            raise TypeError(f"not JSON serialisable: {type(o).__name__}")
        return f"\0{len(raws) - 1}\0"

    text = json.dumps(obj, default=default, ensure_ascii=False, separators=(",", ":"))
    if raws:
        text = re.sub(r'"\\u0000(\d+)\\u0000"', lambda m: raws[int(m[1])], text)
    return text.encode()


def _array_text(a: np.ndarray) -> str:
    if a.ndim == 0:
        return str(a[()])
    if a.ndim == 1:
        return "[" + ",".join(str(x) for x in a) + "]"
    return "[" + ",".join(_array_text(row) for row in a) + "]"
