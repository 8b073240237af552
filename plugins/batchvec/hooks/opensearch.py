"""One hook for the OpenSearch domain: index APIs, `_bulk` and ML Commons over HTTP.

Authentication from the Airflow connection's extras:
  {"auth": "sigv4", "aws_conn_id": "aws_default", "region": "us-east-1", "service": "es"}
  {"auth": "basic"}   (login/password of the connection)
TLS certificates are verified unless the connection says `"verify_certs": false` (or
"false"; a warning is logged); a CA bundle path may be given as `"ca_certs"`. Errors are
raised with OpenSearch's `type` and `reason`, never a bare status code, and scrubbed of
credentials (batchvec.util.redact).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import orjson
import requests
from airflow.sdk import BaseHook
from requests.adapters import HTTPAdapter

from batchvec.hooks.opensearch_auth import SigV4Auth, tls_verify
from batchvec.util import backoff
from batchvec.util.redact import scrub

log = logging.getLogger(__name__)

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})


class OpenSearchError(Exception):
    """An error answer from OpenSearch, carrying its status, `type` and `reason`.

    The reason is scrubbed: a refused SigV4 signature is answered with the canonical request,
    session token included (see batchvec.util.redact)."""

    def __init__(self, status: int, err_type: str, reason: str, method: str = "", path: str = ""):
        reason = scrub(reason)
        super().__init__(f"{method} {path} -> {status} {err_type}: {reason}".strip())
        self.status, self.type, self.reason = status, err_type, reason

    @property
    def retryable(self) -> bool:
        return self.status in RETRY_STATUSES


class VersionConflict(OpenSearchError):
    """409 on a compare-and-set write: someone else changed the document first."""


def parse_error(status: int, body: bytes) -> tuple[str, str]:
    """(type, reason) from an OpenSearch / ML Commons error body of any of its shapes."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return "http_error", body[:500].decode(errors="replace") or f"HTTP {status}"
    err = doc.get("error") if isinstance(doc, dict) else None
    if isinstance(err, dict):
        return str(err.get("type", "error")), str(err.get("reason", err))
    if isinstance(err, str):  # the security plugin and some ML Commons paths answer a string
        return "error", err
    if isinstance(doc, dict) and "message" in doc:
        return str(doc.get("__type", "error")), str(doc["message"])
    return "http_error", str(doc)[:500]


class OpenSearchDomainHook(BaseHook):
    """HTTP to one OpenSearch domain (index APIs, `_bulk`, ML Commons), authenticated from the
    Airflow connection's extras (module docstring). A pooled session per hook; requests are
    retried with util.backoff's rule on connection errors, 429 and 5xx.

    :param opensearch_conn_id: the Airflow connection (host, port, schema http/https, extras)
    :param timeout: seconds per HTTP request
    :param max_retries: retries of one request after its first try (`_bulk` excepted: the
        bulk writer retries per item)
    :param pool_size: connections kept open (bulk lanes + 2 for index_shard)
    """

    conn_name_attr = "opensearch_conn_id"
    default_conn_name = "opensearch_default"
    conn_type = "generic"
    hook_name = "OpenSearch domain (batchvec)"

    def __init__(self, opensearch_conn_id: str = default_conn_name, *, timeout: float = 60.0,
                 max_retries: int = 5, pool_size: int = 16):
        super().__init__()
        self.conn_id = opensearch_conn_id
        self.timeout = timeout
        self.max_retries = max_retries
        self.pool_size = pool_size
        self._session: requests.Session | None = None
        self._base_url: str | None = None
        self._auth_hint = ""

    # -- transport ---------------------------------------------------------------------------
    def _connect(self) -> None:
        conn = self.get_connection(self.conn_id)
        extra = conn.extra_dejson
        schema = conn.schema or extra.get("scheme") or "https"
        host = conn.host or "localhost"
        if "://" in host:
            schema, host = host.split("://", 1)
        port = f":{conn.port}" if conn.port else ""
        self._base_url = f"{schema}://{host.rstrip('/')}{port}"
        session = requests.Session()
        adapter = HTTPAdapter(pool_connections=self.pool_size, pool_maxsize=self.pool_size)
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        auth = extra.get("auth", "basic" if conn.login else "none")
        if auth == "sigv4":
            region = extra.get("region") or extra.get("region_name")
            if not region:
                raise ValueError(f"connection {self.conn_id!r}: sigv4 auth needs extra.region")
            aws_conn_id, service = extra.get("aws_conn_id", "aws_default"), extra.get("service", "es")
            session.auth = SigV4Auth(aws_conn_id, region, service)
            self._auth_hint = (f"SigV4 with the keys of AWS connection {aws_conn_id!r}, region "
                               f"{region!r}, service {service!r}: check those")
        elif auth == "basic":
            session.auth = (conn.login or "", conn.password or "")
            self._auth_hint = (f"basic auth as {conn.login or ''!r}: check the login and "
                               "password (and that user's permissions)")
        elif auth == "none":
            self._auth_hint = "no credentials sent (extra.auth none)"
        else:
            raise ValueError(f"connection {self.conn_id!r}: extra.auth must be sigv4, basic or none")
        # Passed again on every request: requests lets REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE
        # override a session's verify, which would silently drop ca_certs.
        session.verify = tls_verify(self.conn_id, extra)
        session.headers["Content-Type"] = "application/json"
        self._session = session

    def target(self) -> dict:
        """Where the connection points and how it authenticates, without a request or a
        credential: the plan's checks and the asset event's URI use it."""
        conn = self.get_connection(self.conn_id)
        extra = conn.extra_dejson
        auth = extra.get("auth", "basic" if conn.login else "none")
        service = extra.get("service", "es") if auth == "sigv4" else None
        # Amazon OpenSearch Service (SigV4 for `es`) assumes a role for its connectors;
        # self-managed clusters' ML Commons needs keys. The extras can say otherwise.
        credentials = extra.get("connector_credentials") or (
            "role_arn" if service == "es" else "aws_keys")
        return {"url": self.base_url, "auth": auth, "service": service,
                "connector_credentials": credentials}

    @property
    def session(self) -> requests.Session:
        if self._session is None:
            self._connect()
        return self._session

    @property
    def base_url(self) -> str:
        if self._base_url is None:
            self._connect()
        return self._base_url

    def request(self, method: str, path: str, body: Any = None, *, params: dict | None = None,
                ok: tuple[int, ...] = (), retries: int | None = None,
                content_type: str | None = None) -> tuple[int, Any]:
        """Send one request; retry connection errors and 429/5xx with backoff.

        Returns (status, parsed body). Raises OpenSearchError for error statuses not in `ok`.
        """
        data = body if isinstance(body, bytes | None) else orjson.dumps(body)
        headers = {"Content-Type": content_type} if content_type else None
        attempts = (self.max_retries if retries is None else retries) + 1

        def once() -> tuple[int, Any]:
            try:
                resp = self.session.request(method, self.base_url + path, data=data, params=params,
                                            headers=headers, timeout=self.timeout,
                                            verify=self.session.verify)
            except (requests.ConnectionError, requests.Timeout) as exc:
                raise backoff.Retry(f"{method} {path}: {type(exc).__name__}", OpenSearchError(
                    0, "connection_error", str(exc), method, path)) from None
            status = resp.status_code
            if status < 300 or status in ok:
                parsed = orjson.loads(resp.content) if resp.content and method != "HEAD" else None
                return status, parsed
            err_type, reason = self._parse_error(status, resp.content)
            error = OpenSearchError(status, err_type, reason, method, path)
            if status in RETRY_STATUSES:
                raise backoff.Retry(f"{method} {path}: {status} {err_type}", error,
                                    backoff.retry_after_seconds(resp.headers.get("Retry-After")))
            raise error

        return backoff.call(once, attempts=attempts)

    def _parse_error(self, status: int, body: bytes) -> tuple[str, str]:
        """parse_error, plus what this connection authenticates with when OpenSearch refused
        it: a 401 says only "Unauthorized", and an answer to HEAD has no body at all."""
        err_type, reason = parse_error(status, body)
        if status in (401, 403):
            reason = f"{reason} (connection {self.conn_id!r}: {self._auth_hint})"
        return err_type, reason

    # -- index APIs ---------------------------------------------------------------------------
    def index_exists(self, index: str) -> bool:
        status, _ = self.request("HEAD", f"/{index}", ok=(404,))
        return status == 200

    def create_index(self, index: str, body: dict) -> dict:
        return self.request("PUT", f"/{index}", body)[1]

    def get_mapping(self, index: str) -> dict:
        return self._only_index(index, self.request("GET", f"/{index}/_mapping")[1])["mappings"]

    def get_settings(self, index: str) -> dict:
        body = self.request("GET", f"/{index}/_settings")[1]
        return self._only_index(index, body)["settings"]["index"]

    def put_settings(self, index: str, settings: dict) -> None:
        self.request("PUT", f"/{index}/_settings", {"index": settings})

    def refresh(self, index: str) -> None:
        self.request("POST", f"/{index}/_refresh")

    def count(self, index: str, query: dict | None = None) -> int:
        return self.request("POST", f"/{index}/_count", {"query": query} if query else None)[1]["count"]

    def get_document(self, index: str, doc_id: str) -> dict | None:
        from urllib.parse import quote

        status, body = self.request("GET", f"/{index}/_doc/{quote(doc_id, safe='')}", ok=(404,))
        return body if status == 200 and body.get("found") else None

    # -- compare-and-set documents (small control documents, not the bulk path) -----------
    def get_versioned(self, index: str, doc_id: str) -> tuple[dict, tuple[int, int]] | None:
        """(source, (seq_no, primary_term)) of a document, or None."""
        found = self.get_document(index, doc_id)
        return (found["_source"], (found["_seq_no"], found["_primary_term"])) if found else None

    def put_versioned(self, index: str, doc_id: str, source: dict, *, create: bool = False,
                      version: tuple[int, int] | None = None) -> tuple[int, int]:
        """Write only if absent (`create`) or unchanged since `version`; else VersionConflict.
        Returns the new version. Refreshes, so the next read sees it."""
        from urllib.parse import quote

        params = {"refresh": "true"}
        if create:
            params["op_type"] = "create"
        if version is not None:
            params.update(if_seq_no=str(version[0]), if_primary_term=str(version[1]))
        body = self._versioned("PUT", f"/{index}/_doc/{quote(doc_id, safe='')}", source, params)
        return body["_seq_no"], body["_primary_term"]

    def delete_versioned(self, index: str, doc_id: str, *, version: tuple[int, int]) -> None:
        from urllib.parse import quote

        self._versioned("DELETE", f"/{index}/_doc/{quote(doc_id, safe='')}", None,
                        {"refresh": "true", "if_seq_no": str(version[0]),
                         "if_primary_term": str(version[1])})

    def _versioned(self, method: str, path: str, body: Any, params: dict) -> dict:
        try:
            return self.request(method, path, body, params=params)[1]
        except OpenSearchError as exc:
            if exc.status == 409:
                raise VersionConflict(exc.status, exc.type, exc.reason, method, path) from None
            raise

    def search(self, index: str, body: dict) -> dict:
        return self.request("POST", f"/{index}/_search", body)[1]

    # -- scans (batchvec.ingest.incremental: reading an index's state back in pages) -------------
    def put_mapping(self, index: str, body: dict) -> None:
        self.request("PUT", f"/{index}/_mapping", body)

    def scan(self, index: str, query: dict, *, includes: list[str] | None = None,
             page: int = 5000, keep_alive: str = "5m"):
        """Every hit of ``query`` (``_id`` and the ``includes`` source fields; ``[]``: none),
        in pages through a scroll, which is cleared when the caller stops."""
        body = {"size": page, "query": query, "sort": ["_doc"],
                "_source": {"includes": includes} if includes else False}
        status, resp = self.request("POST", f"/{index}/_search", body,
                                    params={"scroll": keep_alive}, ok=(404,))
        if status == 404:  # no such index: nothing to read
            return
        scroll_id = resp.get("_scroll_id")
        try:
            while True:
                hits = resp["hits"]["hits"]
                if not hits:
                    return
                yield from hits
                resp = self.request("POST", "/_search/scroll",
                                    {"scroll": keep_alive, "scroll_id": scroll_id})[1]
                scroll_id = resp.get("_scroll_id", scroll_id)
        finally:
            if scroll_id:
                self.request("DELETE", "/_search/scroll", {"scroll_id": [scroll_id]}, ok=(404,))

    def bulk(self, body: bytes) -> dict:
        """One `_bulk` request, no retries here: the bulk writer retries per item and request."""
        from batchvec.index.bulk_writer import BulkTransientError

        try:
            resp = self.session.post(self.base_url + "/_bulk", data=body, timeout=self.timeout,
                                     verify=self.session.verify,
                                     headers={"Content-Type": "application/x-ndjson"})
        except (requests.ConnectionError, requests.Timeout) as exc:
            raise BulkTransientError(f"bulk request failed: {type(exc).__name__}") from None
        if resp.status_code in RETRY_STATUSES:
            err_type, reason = parse_error(resp.status_code, resp.content)
            retry_after = resp.headers.get("Retry-After")
            raise BulkTransientError(scrub(f"bulk {resp.status_code} {err_type}: {reason}"),
                                     retry_after=backoff.retry_after_seconds(retry_after),
                                     throttled=resp.status_code == 429)
        if resp.status_code >= 300:
            err_type, reason = self._parse_error(resp.status_code, resp.content)
            raise OpenSearchError(resp.status_code, err_type, reason, "POST", "/_bulk")
        return orjson.loads(resp.content)

    # -- aliases (batchvec.index.aliases) ---------------------------------------------------------
    @staticmethod
    def _only_index(name: str, body: dict) -> dict:
        """The one entry of an answer keyed by physical name (`name` may be an alias)."""
        if len(body) != 1:
            raise ValueError(f"{name!r} is an alias of several indices: {', '.join(sorted(body))}")
        return next(iter(body.values()))

    def get_alias(self, name: str) -> dict:
        """index -> its properties for alias `name`, for each index behind it; {} if no alias."""
        status, body = self.request("GET", f"/_alias/{name}", ok=(404,))
        return {} if status == 404 else {i: v["aliases"][name] for i, v in body.items()}

    def update_aliases(self, actions: list[dict]) -> None:
        """One `_aliases` call: all its actions apply at once or none do."""
        self.request("POST", "/_aliases", {"actions": actions})

    def get_mapping_meta(self, index: str) -> dict:
        return self.get_mapping(index).get("_meta", {})

    def put_mapping_meta(self, index: str, meta: dict) -> None:
        """Replaces the whole `_meta` (OpenSearch does not merge it): pass what is to stay."""
        self.request("PUT", f"/{index}/_mapping", {"_meta": meta})

    def indices_matching(self, pattern: str) -> list[str]:
        """Names of the open indices matching `pattern`; hidden ones are left out."""
        status, rows = self.request("GET", f"/_cat/indices/{pattern}", ok=(404,), params={
            "format": "json", "h": "index", "expand_wildcards": "open"})
        return [] if status == 404 else sorted(row["index"] for row in rows)

    def delete_index(self, index: str) -> bool:
        """True if it was deleted, False if there was no such index."""
        return self.request("DELETE", f"/{index}", ok=(404,))[0] < 300

    def reindex(self, src: str, dest: str, *, wait_s: float = 24 * 3600.0) -> dict:
        """`_reindex` as a task, polled: one request waiting for a big copy would outlive the
        HTTP timeout. Returns the task's response; raises on any failure."""
        body = {"source": {"index": src}, "dest": {"index": dest}}
        task = self.request("POST", "/_reindex", body, params={
            "wait_for_completion": "false", "refresh": "true"})[1]["task"]
        deadline, delay = time.monotonic() + wait_s, 0.1
        while not (done := self.request("GET", f"/_tasks/{task}")[1]).get("completed"):
            if time.monotonic() > deadline:
                raise TimeoutError(f"reindex {src} -> {dest} (task {task}) still running")
            time.sleep(delay)
            delay = min(5.0, delay * 2)
        error, response = done.get("error"), done.get("response", {})
        if error or response.get("failures"):
            raise OpenSearchError(0, (error or {}).get("type", "reindex_failures"),
                                  str(error or response["failures"][:3]), "POST", "/_reindex")
        return response
