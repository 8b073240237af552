"""Helpers shared by the OpenSearch stand-in: fast JSON, OpenSearch-shaped errors and responses."""

from __future__ import annotations

import json
import secrets
import time

from devstack.httpbase import HttpError, Response, opensearch_error

try:  # orjson is several times faster on the big bulk/search bodies; json is the fallback
    import orjson

    _NUMPY = orjson.OPT_SERIALIZE_NUMPY

    def dumps(obj) -> bytes:
        return orjson.dumps(obj, option=_NUMPY)

    def loads(data):
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError:
            # Jackson (and Python) accept NaN/Infinity literals; orjson does not.
            return json.loads(data)

except ImportError:  # pragma: no cover - orjson is in the venv
    def dumps(obj) -> bytes:
        return json.dumps(obj, default=lambda o: o.tolist()).encode()

    def loads(data):
        return json.loads(data)


SEARCH_SHARDS = {"total": 1, "successful": 1, "skipped": 0, "failed": 0}
NODE_NAME = "devstack-node"


def respond(obj, status: int = 200, headers: dict | None = None) -> Response:
    return Response(status, dumps(obj), headers=headers or {})


def fail(status: int, err_type: str, reason: str, **extra) -> HttpError:
    """An HttpError carrying OpenSearch's error body; `raise fail(...)`."""
    return HttpError(status, opensearch_error(err_type, reason, status, **extra))


def illegal(reason: str, status: int = 400) -> HttpError:
    return fail(status, "illegal_argument_exception", reason)


def status_error(status: int, reason: str) -> HttpError:
    """OpenSearchStatusException, the type ML Commons answers most errors with."""
    return fail(status, "status_exception", reason)


def parse_body(req, required: bool = False):
    """Parse a JSON request body (orjson), with OpenSearch's parse errors."""
    if not req.body.strip():
        if required:
            raise fail(400, "parse_exception", "request body is required")
        return None
    try:
        return loads(req.body)
    except ValueError as exc:
        raise fail(400, "parse_exception", f"Failed to parse content to map: {exc}") from None


def new_id() -> str:
    """A 20-character id like OpenSearch's auto-generated document ids."""
    return secrets.token_urlsafe(15)


def elapsed_ms(start: float) -> int:
    return int((time.perf_counter() - start) * 1000)


def now_ms() -> int:
    return int(time.time() * 1000)


def str_value(value) -> str:
    """How OpenSearch prints a setting value: booleans lower-case, everything as a string."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def truthy(value) -> bool:
    return str_value(value).lower() == "true"
