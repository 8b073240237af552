"""A small HTTP/1.1 framework on the standard library for the devstack's services.

Keep-alive (clients reuse connections as they do against AWS), regex routes, JSON helpers,
OpenSearch-style error bodies, and the generic faults (latency, 5xx, connection reset)
applied before any route runs.
"""

from __future__ import annotations

import json
import logging
import re
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, unquote, urlsplit

from devstack import faults

log = logging.getLogger("devstack.http")


@dataclass
class Request:
    method: str
    raw_path: str  # as sent, still percent-encoded (SigV4 needs it)
    path: str  # decoded
    query: dict[str, str]
    headers: dict[str, str]  # lower-cased names
    body: bytes
    params: dict[str, str] = field(default_factory=dict)  # route groups

    def json(self):
        if not self.body.strip():
            return None
        try:
            return json.loads(self.body)
        except ValueError as exc:
            raise HttpError(400, opensearch_error("parse_exception", f"Invalid JSON body: {exc}")) from None


@dataclass
class Response:
    status: int = 200
    body: bytes = b""
    content_type: str = "application/json; charset=UTF-8"
    headers: dict[str, str] = field(default_factory=dict)


class HttpError(Exception):
    def __init__(self, status: int, body: dict | bytes | str, headers: dict | None = None):
        super().__init__(f"HTTP {status}")
        self.status = status
        self.body = body
        self.headers = headers or {}


def json_response(obj, status: int = 200, headers: dict | None = None) -> Response:
    return Response(status, json.dumps(obj).encode(), headers=headers or {})


def opensearch_error(err_type: str, reason: str, status: int = 400, **extra) -> dict:
    """The body OpenSearch (and ML Commons) answer with on errors."""
    cause = {"type": err_type, "reason": reason, **extra}
    return {"error": {"root_cause": [cause], **cause}, "status": status}


Handler = Callable[[Request], Response]


class App:
    def __init__(self, service: str):
        self.service = service  # the name fault rules select on
        self.routes: list[tuple[str, re.Pattern, Handler]] = []
        self.authenticate: Callable[[Request], None] | None = None
        self.not_found: Handler = lambda req: json_response(
            opensearch_error("no_handler_found", f"no handler for {req.method} {req.path}"), 400
        )

    def route(self, method: str, pattern: str):
        def register(fn: Handler) -> Handler:
            for m in method.split("|"):
                self.routes.append((m, re.compile(f"^{pattern}$"), fn))
            return fn

        return register

    def dispatch(self, req: Request) -> Response:
        for method, pattern, fn in self.routes:
            if method != req.method and not (method == "GET" and req.method == "HEAD"):
                continue
            match = pattern.match(req.path)
            if match:
                req.params = {k: unquote(v) for k, v in match.groupdict().items() if v is not None}
                if self.authenticate:
                    self.authenticate(req)
                return fn(req)
        return self.not_found(req)


def _make_handler(app: App):
    class RequestHandler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = f"devstack-{app.service}"

        def log_message(self, fmt, *args):  # route access logs to logging, quietly
            log.debug("%s %s", app.service, fmt % args)

        def _handle(self):
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            split = urlsplit(self.path)
            req = Request(
                method=self.command,
                raw_path=split.path,
                path=unquote(split.path),
                query=dict(parse_qsl(split.query, keep_blank_values=True)),
                headers={k.lower(): v for k, v in self.headers.items()},
                body=body,
            )
            fault = faults.http_fault(app.service, req.method, req.path)
            if fault and fault.get("action") == "reset":
                self._reset()
                return
            if fault and fault.get("latency_ms"):
                time.sleep(fault["latency_ms"] / 1000)
            try:
                if fault and fault.get("status"):
                    raise HttpError(fault["status"], fault.get("body") or opensearch_error(
                        "devstack_fault", "injected fault", fault["status"]))
                resp = app.dispatch(req)
            except HttpError as err:
                body_bytes = err.body if isinstance(err.body, bytes) else (
                    err.body.encode() if isinstance(err.body, str) else json.dumps(err.body).encode())
                resp = Response(err.status, body_bytes, headers=err.headers)
            except Exception as exc:  # a bug in the stand-in: answer like a server would
                log.exception("%s %s %s failed", app.service, req.method, req.path)
                resp = json_response(opensearch_error("exception", repr(exc), 500), 500)
            if fault and fault.get("action") == "reset_after":  # did the work, lost the answer
                self._reset()
                return
            self.send_response(resp.status)
            self.send_header("Content-Type", resp.content_type)
            for k, v in resp.headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(resp.body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(resp.body)

        def _reset(self):
            # SO_LINGER 0 makes close() send RST: the client sees "connection reset by peer".
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
            self.close_connection = True
            self.connection.close()

        do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _handle

    return RequestHandler


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128


def serve(app: App, host: str, port: int) -> Server:
    """Bind and serve in a background thread; returns the server (call .shutdown() to stop)."""
    server = Server((host, port), _make_handler(app))
    threading.Thread(target=server.serve_forever, name=f"{app.service}-http", daemon=True).start()
    return server
