"""`${parameters.X}` templating as ML Commons does it (HttpConnector.createPayload,
ConnectorUtils.escapeRemoteInferenceInputData, Apache StringSubstitutor), so a connector that
works here fills its request the same way on a real cluster:

- call parameters = connector `parameters` overlaid by the request's `parameters`; a request key
  replaces the whole key (nested objects are not merged);
- request values that are not strings become compact JSON; request strings are JSON-escaped
  (Apache `escapeJson`: also `/` and non-ASCII) unless they already are a JSON object/array or
  are named in `no_escape_params`; connector parameters are used as stored;
- substitution is recursive, supports `${parameters.X:-default}`, `$${...}` escapes and
  `${parameters.X.toString()}`; the filled body must be a JSON object or array
  ("Invalid payload: <body>") and no placeholder may remain
  ("Some parameter placeholder not filled in payload: X, Y").
"""

from __future__ import annotations

import json
import re

PREFIX = "${parameters."
_LEFT_RE = re.compile(r"\$\{parameters\.([^}]+)}")
_NULL_DEFAULT_RE = re.compile(r'"\$\{parameters\.(\w+):-null}"')
_ESCAPES = {'"': '\\"', "\\": "\\\\", "/": "\\/", "\b": "\\b", "\n": "\\n", "\t": "\\t",
            "\f": "\\f", "\r": "\\r"}
_NEEDS_ESCAPE = re.compile(r'["\\/\x00-\x1f\u0080-\U0010ffff]')
SKIP_VALIDATION = "skip_validating_missing_parameters"
NO_ESCAPE = "no_escape_params"


class TemplateError(ValueError):
    """A templating failure; the message is ML Commons' own (answered as 400)."""


def to_string(value) -> str:
    """StringUtils.getParameterMap: strings as they are, anything else as compact JSON."""
    if isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def parameter_map(params: dict | None) -> dict[str, str]:
    return {k: (None if v is None else to_string(v)) for k, v in (params or {}).items()}


def is_json(text: str | None) -> bool:
    """StringUtils.isJson: a JSON object or array."""
    if not text or not text.strip():
        return False
    try:
        return isinstance(json.loads(text), dict | list)
    except ValueError:
        return False


def escape_json(value: str) -> str:
    """Apache commons-text StringEscapeUtils.escapeJson."""
    if not _NEEDS_ESCAPE.search(value):
        return value
    out = []
    for ch in value:
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif " " <= ch <= "\x7f":
            out.append(ch)
        else:
            units = ch.encode("utf-16-be")
            out.extend(f"\\u{int.from_bytes(units[i : i + 2], 'big'):04X}"
                       for i in range(0, len(units), 2))
    return "".join(out)


def escape_params(params: dict[str, str]) -> dict[str, str]:
    no_escape = {k.strip() for k in (params.get(NO_ESCAPE) or "").split(",") if k.strip()}
    out = {}
    for key, value in params.items():
        if value is None or is_json(value) or key in no_escape:
            out[key] = value
        else:
            out[key] = escape_json(value)
    return out


def call_parameters(connector_params: dict | None, request_params: dict | None) -> dict[str, str]:
    """What a connector action is filled with: connector parameters, then the request's."""
    merged = dict(connector_params or {})
    merged.update(escape_params(parameter_map(request_params)))
    return merged


def substitute(template: str, params: dict[str, str]) -> str:
    """StringSubstitutor(params, "${parameters.", "}").replace(template)."""
    return _substitute(template, params, ())


def _lookup(name: str, params: dict[str, str]):
    key, default = (name.split(":-", 1) + [None])[:2] if ":-" in name else (name, None)
    value = params.get(key)
    if value is None and key.endswith(".toString()"):
        base = params.get(key[: -len(".toString()")])
        if base is not None:  # StringUtils.processTextDoc: the value as a JSON string's body
            value = json.dumps(base, ensure_ascii=False)[1:-1]
    return key, (default if value is None else value)


def _substitute(text: str, params: dict[str, str], stack: tuple) -> str:
    out: list[str] = []
    pos = 0
    while True:
        start = text.find(PREFIX, pos)
        if start < 0:
            out.append(text[pos:])
            return "".join(out)
        if start > pos and text[start - 1] == "$":  # "$${parameters.x}" is a literal
            out.append(text[pos : start - 1] + PREFIX)
            pos = start + len(PREFIX)
            continue
        end = text.find("}", start + len(PREFIX))
        if end < 0:
            out.append(text[pos:])
            return "".join(out)
        key, value = _lookup(text[start + len(PREFIX) : end], params)
        if value is None:  # unknown: left in place (validation reports it)
            out.append(text[pos : end + 1])
        else:
            if key in stack:
                raise TemplateError(f"Infinite loop in property interpolation of {PREFIX}{key}}}")
            out.append(text[pos:start])
            out.append(_substitute(value, params, stack + (key,)))
        pos = end + 1


def missing_placeholders(payload: str) -> list[str]:
    return _LEFT_RE.findall(payload) if PREFIX in payload else []


def fill_payload(template: str, params: dict[str, str]) -> str:
    """HttpConnector.createPayload + Connector.validatePayload."""
    payload = template
    for key in _NULL_DEFAULT_RE.findall(payload):  # fillNullParameters
        if params.get(key) is None:
            payload = payload.replace(f'"{PREFIX}{key}:-null}}"', "null")
    payload = substitute(payload, params)
    if not is_json(payload):
        raise TemplateError(f"Invalid payload: {payload}")
    missing = missing_placeholders(payload)
    if missing and str(params.get(SKIP_VALIDATION)).lower() != "true":
        raise TemplateError("Some parameter placeholder not filled in payload: " + ", ".join(missing))
    return payload


def fill_url(url: str, params: dict[str, str]) -> str:
    return substitute(url, params) if params else url
