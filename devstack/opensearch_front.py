"""The devstack's OpenSearch front: HTTPS + authentication + faults before the real node.

`python -m devstack.opensearch_front --port P --node-url http://127.0.0.1:N --state-dir DIR`

The node (`devstack.opensearch_node`) has no security plugin (none is served for 3.6), so this
process does what the plugin and a managed domain's edge do, and nothing else:
- TLS with the devstack CA's certificate for 127.0.0.1/localhost (`devstack.tls`);
- HTTP basic with the devstack's user/password, or SigV4 for service `es` with the devstack's
  AWS keys (what the stand-in accepted; temporary STS keys were not, and are not); otherwise 401
  with the security plugin's challenge, or 403 with the signature error;
- the devstack's faults: generic `http` rules for service "opensearch" (status, reset before,
  reset_after, latency_ms), applied before authentication as the stand-in did, and
  `bulk_item_429 {count, ratio}`: that share of a `_bulk`'s items is taken out of the request
  (so the node never writes them) and answered 429 in their places of the node's response;
- a guard the node needs: its k-NN plugin has no native libraries (the Maven zip ships none), and
  the first write into a knn_vector field of engine faiss (the default) or nmslib kills the node
  (UnsatisfiedLinkError). Index creation, mappings and templates with such a field are refused
  400 here, naming the field, unless `--allow-native-knn`; use `"engine": "lucene"`;
- `GET /_devstack/health` (no auth; 200 only while the node answers) and
  `GET|PUT|DELETE /_devstack/faults` (authenticated, as on the stand-in).
Everything else goes to the node unchanged (method, path and query as sent, headers but the
hop-by-hop ones, body bytes: gzip passes through) over one keep-alive connection per client
connection, and the node's status, headers and body come back unchanged, streamed.
"""

from __future__ import annotations

import argparse
import base64
import hmac
import http.client
import json
import logging
import os
import signal
import socket
import ssl
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qsl, unquote, urlsplit

from devstack import config, faults, sigv4, tls
from devstack.opensearch_rules import (
    BULK_PATH,
    MAPPING_PATH,
    merge_bulk,
    native_knn_refusal,
    split_bulk,
)

log = logging.getLogger("devstack.opensearch_front")
SERVICE = "opensearch"
HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding",
              "upgrade", "expect", "content-length"}
CHUNK = 256 * 1024


def opensearch_error(err_type: str, reason: str, status: int) -> dict:
    cause = {"type": err_type, "reason": reason}
    return {"error": {"root_cause": [cause], **cause}, "status": status}


class Front(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, address, node: tuple[str, int], creds: config.Credentials,
                 context: ssl.SSLContext | None, allow_native_knn: bool = False):
        super().__init__(address, Handler)
        self.node, self.creds, self.context = node, creds, context
        self.allow_native_knn = allow_native_knn

    def handle_error(self, request, client_address):
        exc = sys.exc_info()[1]
        if isinstance(exc, ConnectionError | TimeoutError | ssl.SSLError):  # the client went away
            log.debug("connection from %s ended: %r", client_address, exc)
            return
        super().handle_error(request, client_address)

    def finish_request(self, request, client_address):
        # The TLS handshake runs here, in the connection's own thread: a client that stalls or
        # speaks plain HTTP never holds up accept(). No Nagle: headers and body go out in
        # separate writes, and a client's delayed ACK would hold each answer 40 ms.
        request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.context is not None:
            request.settimeout(30)
            try:
                request = self.context.wrap_socket(request, server_side=True)
            except (ssl.SSLError, OSError) as exc:
                log.debug("TLS handshake from %s failed: %s", client_address, exc)
                request.close()
                return
        self.RequestHandlerClass(request, client_address, self)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "devstack-opensearch-front"
    timeout = 300  # idle keep-alive connections close after this
    server: Front

    def log_message(self, fmt, *args):
        log.debug("%s " + fmt, self.address_string(), *args)

    def setup(self):
        super().setup()
        self.upstream: http.client.HTTPConnection | None = None

    def finish(self):
        try:
            super().finish()
        finally:
            if self.upstream is not None:
                self.upstream.close()

    # --- one request ------------------------------------------------------------------------
    def _handle(self):
        body = self._read_body()
        if body is None:
            return
        split = urlsplit(self.path)
        path = unquote(split.path)
        rule = faults.http_fault(SERVICE, self.command, path)
        if rule and rule.get("action") == "reset":
            return self._reset()
        if rule and rule.get("latency_ms"):
            time.sleep(rule["latency_ms"] / 1000)
        if rule and rule.get("status"):
            err = rule.get("body") or opensearch_error("devstack_fault", "injected fault", rule["status"])
            return self._reply(rule["status"], err)
        if path == "/_devstack/health" and self.command in ("GET", "HEAD"):
            up = self._node_answers()
            return self._reply(200 if up else 503, {"status": "ok" if up else "node_unavailable",
                                                    "service": SERVICE})
        refused = self._refuse(split, body)
        if refused:
            return self._send(*refused)
        if path == "/_devstack/faults":
            return self._faults_admin(body)
        if (self.command in ("PUT", "POST") and not self.server.allow_native_knn
                and MAPPING_PATH.match(path) and (refused := native_knn_refusal(body, self.headers))):
            return self._reply(400, opensearch_error("illegal_argument_exception", refused, 400))
        spec = faults.take("bulk_item_429") if BULK_PATH.match(path) and self.command in ("POST", "PUT") else None
        if spec:
            return self._bulk_with_rejections(body, path, float(spec.get("ratio", 1.0)), rule)
        self._forward(body, reset_after=bool(rule and rule.get("action") == "reset_after"))

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = do_OPTIONS = _handle

    def _read_body(self) -> bytes | None:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            parts = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline().strip():  # trailers
                        pass
                    return b"".join(parts)
                parts.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        if len(body) < length:
            self.close_connection = True
            return None
        return body

    # --- authentication, as the security plugin (basic) or a managed domain (SigV4) --------
    def _refuse(self, split, body: bytes):
        headers = {k.lower(): v for k, v in self.headers.items()}
        header = headers.get("authorization", "")
        creds = self.server.creds
        if header.startswith("AWS4-HMAC-SHA256"):
            try:
                sigv4.verify(method=self.command, raw_path=split.path,
                             query=parse_qsl(split.query, keep_blank_values=True), headers=headers,
                             body=body, access_key=creds.aws_access_key_id,
                             secret_key=creds.aws_secret_access_key, service="es")
                return None
            except sigv4.SignatureError as err:
                status = err.status if err.status != 400 else 403
                return status, json.dumps({"message": err.message}).encode(), "application/json; charset=UTF-8", {}
        if header[:6].lower() == "basic ":
            try:
                user, _, password = base64.b64decode(header[6:]).decode().partition(":")
            except ValueError:
                user = password = ""
            if hmac.compare_digest(user, creds.opensearch_user) and hmac.compare_digest(
                    password, creds.opensearch_password):
                return None
        return 401, b"Unauthorized", "text/plain; charset=UTF-8", {
            "WWW-Authenticate": 'Basic realm="OpenSearch Security"'}

    def _faults_admin(self, body: bytes):
        if self.command in ("PUT", "POST"):
            try:
                faults.set_faults(None, **(json.loads(body) if body.strip() else {}))
            except (ValueError, TypeError) as exc:
                return self._reply(400, opensearch_error("parse_exception", str(exc), 400))
        elif self.command == "DELETE":
            faults.clear(None)
            return self._reply(200, {})
        return self._reply(200, faults.current())

    # --- to the node --------------------------------------------------------------------------
    def _node_answers(self) -> bool:
        try:
            conn = http.client.HTTPConnection(*self.server.node, timeout=2)
            conn.request("GET", "/")
            ok = conn.getresponse().status == 200
            conn.close()
            return ok
        except OSError:
            return False

    def _upstream_request(self, body: bytes, headers: list[tuple[str, str]]):
        """Send to the node on this connection's keep-alive upstream. A reused connection the
        node has closed meanwhile (a node restart) is retried once on a new one."""
        while True:
            reused = self.upstream is not None
            if not reused:
                self.upstream = http.client.HTTPConnection(*self.server.node, timeout=600)
            try:
                self.upstream.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
                for k, v in headers:
                    self.upstream.putheader(k, v)
                self.upstream.putheader("Content-Length", str(len(body)))
                self.upstream.endheaders(body if body else None)
                return self.upstream.getresponse()
            except OSError as exc:
                self.upstream.close()
                self.upstream = None
                stale = isinstance(exc, http.client.RemoteDisconnected | BrokenPipeError | ConnectionResetError)
                if not (reused and stale):
                    raise

    def _headers_out(self, drop: tuple[str, ...] = ()) -> list[tuple[str, str]]:
        return [(k, v) for k, v in self.headers.items()
                if k.lower() not in HOP_BY_HOP and k.lower() not in drop]

    def _forward(self, body: bytes, reset_after: bool = False) -> None:
        try:
            resp = self._upstream_request(body, self._headers_out())
        except OSError as exc:
            return self._reply(502, opensearch_error("devstack_node_unavailable",
                                                     f"the OpenSearch node did not answer: {exc}", 502))
        if reset_after:  # the node did the work; the client loses the answer
            resp.read()
            return self._reset()
        self.send_response_only(resp.status, resp.reason)
        chunked = resp.getheader("Content-Length") is None and self.command != "HEAD" and resp.status not in (204, 304)
        for k, v in resp.getheaders():
            if k.lower() not in ("connection", "keep-alive", "transfer-encoding"):
                self.send_header(k, v)
        if chunked:
            self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        while chunk := resp.read(CHUNK):
            self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk) if chunked else chunk)
        if chunked:
            self.wfile.write(b"0\r\n\r\n")
        if resp.will_close:  # only after the body: closing the connection closes its response
            self.upstream.close()
            self.upstream = None

    def _bulk_with_rejections(self, body: bytes, path: str, ratio: float, rule) -> None:
        """Take that share of items out (spread evenly, deterministic), let the node write the
        rest, and answer the taken ones 429 in their positions of the node's response."""
        split = split_bulk(body, self.headers, path, ratio)
        if split is None:  # malformed: let the node say so
            return self._forward(body)
        kept, rejected, total = split
        if not kept:
            return self._reply(200, {"took": 0, "errors": True, "items": [rejected[p] for p in sorted(rejected)]})
        try:  # identity from the node (no accept-encoding): its answer is merged here
            resp = self._upstream_request(b"\n".join(kept) + b"\n", self._headers_out(
                drop=("content-encoding", "accept-encoding")))
            data = resp.read()
        except OSError as exc:
            return self._reply(502, opensearch_error("devstack_node_unavailable", str(exc), 502))
        if resp.will_close:
            self.upstream.close()
            self.upstream = None
        if rule and rule.get("action") == "reset_after":
            return self._reset()
        headers = {k: v for k, v in resp.getheaders()
                   if k.lower() not in ("connection", "keep-alive", "transfer-encoding", "content-length")}
        data = merge_bulk(data, rejected, total) or data  # an error answer: the node's, unchanged
        self.send_response_only(resp.status, resp.reason)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    # --- answers -----------------------------------------------------------------------------
    def _reply(self, status: int, obj) -> None:
        body = obj if isinstance(obj, bytes) else json.dumps(obj).encode()
        self._send(status, body, "application/json; charset=UTF-8", {})

    def _send(self, status: int, body: bytes, content_type: str, headers: dict) -> None:
        self.send_response_only(status)
        self.send_header("Content-Type", content_type)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _reset(self) -> None:
        # SO_LINGER 0 makes close() send RST: the client sees "connection reset by peer".
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
        self.close_connection = True
        try:
            self.connection.close()
        except OSError:
            pass


def _credentials(state: Path) -> config.Credentials:
    """As the stand-in did: DEVSTACK_OPENSEARCH_USER/PASSWORD and AWS_ACCESS_KEY_ID/SECRET from
    the environment (the launcher sets them), else the state dir's credentials.json."""
    env = os.environ.get
    names = ("DEVSTACK_OPENSEARCH_USER", "DEVSTACK_OPENSEARCH_PASSWORD", "AWS_ACCESS_KEY_ID",
             "AWS_SECRET_ACCESS_KEY")
    if all(env(n) for n in names):
        return config.Credentials(env("DEVSTACK_REGION", "us-east-1"), env("AWS_ACCESS_KEY_ID"),
                                  env("AWS_SECRET_ACCESS_KEY"), env("DEVSTACK_OPENSEARCH_USER"),
                                  env("DEVSTACK_OPENSEARCH_PASSWORD"))
    return config.load_or_create_credentials(state)


def serve(host: str, port: int, node_url: str, state: Path, use_tls: bool = True,
          allow_native_knn: bool = False) -> Front:
    """Bind and serve in a background thread (tests); `main` runs it as a process."""
    faults.init(state)
    creds = _credentials(state)
    context = None
    if use_tls:
        files = tls.ensure(state)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(files.cert, files.key)
    node = urlsplit(node_url)
    server = Front((host, port), (node.hostname, node.port or 80), creds, context, allow_native_knn)
    threading.Thread(target=server.serve_forever, name="opensearch-front", daemon=True).start()
    return server


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="devstack.opensearch_front", description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=config.port("opensearch"))
    parser.add_argument("--node-url", required=True)
    parser.add_argument("--state-dir", type=Path, default=config.state_dir())
    parser.add_argument("--allow-native-knn", action="store_true",
                        help="pass faiss/nmslib mappings (only for a node with the native libraries)")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    server = serve(args.host, args.port, args.node_url, args.state_dir,
                   allow_native_knn=args.allow_native_knn)
    print(f"opensearch front on https://{args.host}:{server.server_address[1]} -> {args.node_url}", flush=True)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    server.shutdown()
    server.server_close()


if __name__ == "__main__":
    main(sys.argv[1:])
