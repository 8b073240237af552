"""The OpenSearch + ML Commons stand-in's HTTP app: authentication (basic, as the security
plugin does it, or SigV4 for service `es`), routing, cluster info, and an in-process start()."""

from __future__ import annotations

import base64
import gzip
import hmac
import logging
import os
import secrets
import threading
from dataclasses import dataclass
from pathlib import Path

from devstack import config, faults, httpbase, sigv4
from devstack.httpbase import App, Response
from devstack.opensearch.bulk import Writer
from devstack.opensearch.common import NODE_NAME, respond
from devstack.opensearch.indices import Indices
from devstack.opensearch.mlcommons import MLCommons
from devstack.opensearch.search import Searcher
from devstack.opensearch.settings import ClusterSettings
from devstack.opensearch.store import Store
from devstack.opensearch.tasks import Tasks

log = logging.getLogger("devstack.opensearch")
MAX_CONTENT_LENGTH = 100 * 1024 * 1024  # http.max_content_length default (100mb)
IDX = r"(?P<index>[^/_][^/]*)"  # index names never start with "_" (those are APIs)
ML = "/_plugins/_ml"
PUBLIC_PATHS = {"/_devstack/health"}


@dataclass(frozen=True)
class Auth:
    user: str
    password: str
    access_key: str
    secret_key: str


def load_auth(state_dir: Path) -> Auth:
    """Env wins (DEVSTACK_OPENSEARCH_USER/PASSWORD, AWS_ACCESS_KEY_ID/SECRET); otherwise the
    credentials generated into the state dir on first start."""
    env = os.environ.get
    needs_file = not (env("DEVSTACK_OPENSEARCH_USER") and env("DEVSTACK_OPENSEARCH_PASSWORD")
                      and env("AWS_ACCESS_KEY_ID") and env("AWS_SECRET_ACCESS_KEY"))
    creds = config.load_or_create_credentials(state_dir) if needs_file else None
    return Auth(
        user=env("DEVSTACK_OPENSEARCH_USER") or creds.opensearch_user,
        password=env("DEVSTACK_OPENSEARCH_PASSWORD") or creds.opensearch_password,
        access_key=env("AWS_ACCESS_KEY_ID") or creds.aws_access_key_id,
        secret_key=env("AWS_SECRET_ACCESS_KEY") or creds.aws_secret_access_key,
    )


class OpenSearchApp(App):
    """Authenticates every request (before routing, as the security plugin does) except health."""

    def __init__(self, auth: Auth):
        super().__init__("opensearch")
        self.auth = auth
        self.not_found = lambda req: respond(
            {"error": {"root_cause": [{"type": "illegal_argument_exception",
                                       "reason": f"no handler found for uri [{req.path}] and method [{req.method}]"}],
                       "type": "illegal_argument_exception",
                       "reason": f"no handler found for uri [{req.path}] and method [{req.method}]"},
             "status": 400}, 400)

    def dispatch(self, req) -> Response:
        if req.path not in PUBLIC_PATHS:
            refused = self._refuse(req)
            if refused is not None:
                return refused
        if req.headers.get("content-encoding", "").lower() == "gzip" and req.body:
            req.body = gzip.decompress(req.body)
        return super().dispatch(req)

    def _refuse(self, req) -> Response | None:
        header = req.headers.get("authorization", "")
        if header.startswith("AWS4-HMAC-SHA256"):
            try:
                sigv4.verify(method=req.method, raw_path=req.raw_path, query=list(req.query.items()),
                             headers=req.headers, body=req.body, access_key=self.auth.access_key,
                             secret_key=self.auth.secret_key, service="es")
                return None
            except sigv4.SignatureError as err:
                return respond({"message": err.message}, err.status if err.status != 400 else 403)
        if header[:6].lower() == "basic ":
            try:
                user, _, password = base64.b64decode(header[6:]).decode().partition(":")
            except ValueError:
                user = password = ""
            if hmac.compare_digest(user, self.auth.user) and hmac.compare_digest(password, self.auth.password):
                return None
        return Response(401, b"Unauthorized", "text/plain; charset=UTF-8",
                        {"WWW-Authenticate": 'Basic realm="OpenSearch Security"'})


def build(state_dir: Path, auth: Auth | None = None):
    """(app, store) for a state dir; faults read from the same dir."""
    state_dir = Path(state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    faults.init(state_dir)
    auth = auth or load_auth(state_dir)
    store = Store(state_dir / "opensearch.sqlite3")
    node = store.kv_get("cluster", "node") or {"id": secrets.token_urlsafe(16)[:22],
                                                "cluster_uuid": secrets.token_urlsafe(16)[:22]}
    store.kv_put("cluster", "node", node)
    settings = ClusterSettings(store)
    indices = Indices(store)
    ml = MLCommons(store, settings, (auth.access_key, auth.secret_key), node["id"])
    tasks = Tasks(ml)
    writer = Writer(indices, store)
    searcher = Searcher(indices, store, embed=ml.embed)
    app = OpenSearchApp(auth)
    app.tasks = tasks
    tasks.start_poller(float(os.environ.get("DEVSTACK_ML_TASK_POLL_SECONDS", "60")))
    r = app.route

    r("GET", "/_devstack/health")(lambda req: respond({"status": "ok", "service": "opensearch"}))
    faults.add_admin_routes(app)
    r("GET", "/")(lambda req: respond(cluster_info(node)))
    r("GET", "/_cluster/health")(lambda req: respond({
        "cluster_name": "devstack", "status": "green", "timed_out": False, "number_of_nodes": 1,
        "number_of_data_nodes": 1, "active_primary_shards": len(indices.states),
        "active_shards": len(indices.states), "relocating_shards": 0, "initializing_shards": 0,
        "unassigned_shards": 0}))
    r("GET", "/_cluster/settings")(settings.handle_get)
    r("PUT", "/_cluster/settings")(settings.handle_put)

    # ML Commons (more specific routes first)
    r("POST", f"{ML}/connectors/_create")(ml.handle_connector_create)
    r("GET|POST", f"{ML}/connectors/_search")(ml.handle_connector_search)
    r("GET", f"{ML}/connectors/(?P<id>[^/]+)")(ml.handle_connector_get)
    r("DELETE", f"{ML}/connectors/(?P<id>[^/]+)")(ml.handle_connector_delete)
    r("POST", f"{ML}/model_groups/_register")(ml.handle_group_register)
    r("GET|POST", f"{ML}/model_groups/_search")(ml.handle_group_search)
    r("GET", f"{ML}/model_groups/(?P<id>[^/]+)")(ml.handle_group_get)
    r("DELETE", f"{ML}/model_groups/(?P<id>[^/]+)")(ml.handle_group_delete)
    r("POST", f"{ML}/models/_register")(ml.handle_model_register)
    r("GET|POST", f"{ML}/models/_search")(ml.handle_model_search)
    r("POST", f"{ML}/models/(?P<id>[^/]+)/_deploy")(ml.handle_model_deploy)
    r("POST", f"{ML}/models/(?P<id>[^/]+)/_undeploy")(ml.handle_model_undeploy)
    r("POST", f"{ML}/models/(?P<id>[^/]+)/_predict")(ml.handle_predict)
    r("POST", f"{ML}/_predict/[^/]+/(?P<id>[^/]+)")(ml.handle_predict)
    r("POST", f"{ML}/models/(?P<id>[^/]+)/_batch_predict")(tasks.handle_batch_predict)
    r("GET", f"{ML}/models/(?P<id>[^/]+)")(ml.handle_model_get)
    r("DELETE", f"{ML}/models/(?P<id>[^/]+)")(ml.handle_model_delete)
    r("GET|POST", f"{ML}/tasks/_search")(tasks.handle_search)
    r("POST", f"{ML}/tasks/(?P<id>[^/]+)/_cancel")(tasks.handle_cancel)
    r("GET", f"{ML}/tasks/(?P<id>[^/]+)")(tasks.handle_get)
    r("DELETE", f"{ML}/tasks/(?P<id>[^/]+)")(tasks.handle_delete)

    # index APIs
    r("POST|PUT", "/_bulk")(writer.handle_bulk)
    r("POST|PUT", f"/{IDX}/_bulk")(writer.handle_bulk)
    r("POST|GET", "/_refresh")(indices.handle_refresh)
    r("POST|GET", f"/{IDX}/_refresh")(indices.handle_refresh)
    r("GET|POST", f"/{IDX}/_count")(searcher.handle_count)
    r("GET|POST", f"/{IDX}/_search")(searcher.handle_search)
    r("GET", f"/{IDX}/_doc/(?P<id>[^/]+)")(indices.handle_get_doc)
    r("PUT|POST", f"/{IDX}/_doc/(?P<id>[^/]+)")(lambda req: writer.single(req, "index"))
    r("POST", f"/{IDX}/_doc")(lambda req: writer.single(req, "index"))
    r("PUT|POST", f"/{IDX}/_create/(?P<id>[^/]+)")(lambda req: writer.single(req, "create"))
    r("POST", f"/{IDX}/_update/(?P<id>[^/]+)")(lambda req: writer.single(req, "update"))
    r("DELETE", f"/{IDX}/_doc/(?P<id>[^/]+)")(lambda req: writer.single(req, "delete"))
    r("GET", "/_settings")(indices.handle_get_settings)
    r("GET", f"/{IDX}/_settings")(indices.handle_get_settings)
    r("PUT", f"/{IDX}/_settings")(indices.handle_put_settings)
    r("GET", "/_mapping")(indices.handle_get_mapping)
    r("GET", f"/{IDX}/_mapping")(indices.handle_get_mapping)
    r("PUT|POST", f"/{IDX}/_mapping")(indices.handle_put_mapping)
    r("PUT", f"/{IDX}")(indices.handle_create)
    r("GET", f"/{IDX}")(indices.handle_get)
    r("DELETE", f"/{IDX}")(indices.handle_delete)
    r("PUT", "/(?P<index>[^/]+)")(indices.handle_create)  # `_x`: invalid_index_name_exception
    return app, store


def cluster_info(node: dict) -> dict:
    return {
        "name": NODE_NAME, "cluster_name": "devstack", "cluster_uuid": node["cluster_uuid"],
        "version": {"distribution": "opensearch", "number": "3.3.0", "build_type": "tar",
                    "build_hash": "devstack", "build_date": "2025-10-01T00:00:00.000000Z",
                    "build_snapshot": False, "lucene_version": "10.3.1",
                    "minimum_wire_compatibility_version": "2.19.0",
                    "minimum_index_compatibility_version": "2.0.0"},
        "tagline": "The OpenSearch Project: https://opensearch.org/",
    }


def _handler_class(app: App, max_content_length: int):
    base = httpbase._make_handler(app)

    class Handler(base):
        def _handle(self):
            length = int(self.headers.get("Content-Length") or 0)
            if length <= max_content_length:
                return super()._handle()
            # Too big: drain (so the client sees the answer, not a reset) and answer 413.
            remaining = length
            while remaining > 0:
                chunk = self.rfile.read(min(remaining, 1 << 20))
                if not chunk:
                    break
                remaining -= len(chunk)
            self.send_response(413)
            self.send_header("Content-Type", "application/json; charset=UTF-8")
            body = (b'{"error":{"root_cause":[{"type":"content_too_long_exception","reason":'
                    b'"request body is too large"}],"type":"content_too_long_exception","reason":'
                    b'"request body is too large"},"status":413}')
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _handle

    return Handler


@dataclass
class Service:
    server: httpbase.Server
    store: Store
    url: str
    tasks: Tasks

    def stop(self) -> None:
        self.tasks.stopping.set()
        self.server.shutdown()
        self.server.server_close()
        self.store.close()


def start(state_dir: Path, host: str = "127.0.0.1", port: int = 0, auth: Auth | None = None,
          max_content_length: int = MAX_CONTENT_LENGTH) -> Service:
    app, store = build(state_dir, auth)
    server = httpbase.Server((host, port), _handler_class(app, max_content_length))
    threading.Thread(target=server.serve_forever, name="opensearch-http", daemon=True).start()
    actual = server.server_address[1]
    log.info("opensearch stand-in on http://%s:%s (state %s)", host, actual, state_dir)
    return Service(server, store, f"http://{host}:{actual}", app.tasks)
