"""The devstack's real OpenSearch node behind its HTTPS front (devstack.opensearch_node,
devstack.opensearch_front): version and plugins, TLS with the devstack CA, basic and SigV4
authentication as the security plugin / a managed domain answer, and the faults the front
applies (generic http rules, bulk_item_429 with the other items really written)."""

from __future__ import annotations

import gzip
import json
import time
import uuid

import pytest
import requests
from requests_aws4auth import AWS4Auth

from devstack import faults, tls

pytestmark = pytest.mark.devstack


@pytest.fixture(scope="module")
def ep(devstack):
    yield devstack.endpoints
    faults.clear(devstack.state_dir)


@pytest.fixture
def call(ep):
    """call(method, path, **kw) through the front as the devstack's user, verifying its CA."""
    session = requests.Session()
    session.auth = (ep["opensearch_user"], ep["opensearch_password"])

    def do(method, path, **kw):
        # verify per request: a session's verify loses to REQUESTS_CA_BUNDLE in the environment
        return session.request(method, ep["opensearch"] + path, verify=ep["opensearch_ca"], timeout=60, **kw)

    return do


@pytest.fixture
def state(devstack):
    faults.clear(devstack.state_dir)
    yield devstack.state_dir
    faults.clear(devstack.state_dir)


def lucene_index(call, dim: int = 3) -> str:
    name = f"t-{uuid.uuid4().hex[:10]}"
    resp = call("PUT", f"/{name}", json={
        "settings": {"index": {"knn": True, "number_of_replicas": 0}},
        "mappings": {"properties": {"emb": {"type": "knn_vector", "dimension": dim, "method": {
            "name": "hnsw", "engine": "lucene", "space_type": "l2"}}}}})
    assert resp.status_code == 200, resp.text
    return name


def ndjson(*objs) -> bytes:
    return ("\n".join(json.dumps(o) for o in objs) + "\n").encode()


def test_version_plugins_and_endpoints(ep, call):
    assert ep["opensearch"].startswith("https://127.0.0.1:")
    info = call("GET", "/").json()
    assert info["version"]["number"] == "3.6.0" and info["version"]["distribution"] == "opensearch"
    plugins = {p["component"]: p["version"] for p in call("GET", "/_cat/plugins?format=json").json()}
    assert {"opensearch-ml", "opensearch-knn", "opensearch-neural-search",
            "opensearch-job-scheduler"} <= set(plugins)
    assert set(plugins.values()) == {"3.6.0.0"}
    assert call("GET", "/_cluster/health").json()["status"] in ("green", "yellow")
    assert requests.get(ep["opensearch"] + "/_devstack/health", verify=ep["opensearch_ca"]).json()["status"] == "ok"


def test_tls_needs_the_devstack_ca(ep, tmp_path):
    other_ca = tls.ensure(tmp_path).ca  # a CA of its own, not the devstack's
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(ep["opensearch"] + "/_devstack/health", verify=str(other_ca), timeout=10)
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(ep["opensearch"] + "/_devstack/health", verify=True, timeout=10)  # system CAs
    ok = requests.get(ep["opensearch"] + "/_devstack/health", verify=ep["opensearch_ca"], timeout=10)
    assert ok.status_code == 200
    localhost = ep["opensearch"].replace("127.0.0.1", "localhost")
    assert requests.get(localhost + "/_devstack/health", verify=ep["opensearch_ca"], timeout=10).ok
    with pytest.raises(requests.exceptions.ConnectionError):  # no plain HTTP on the TLS port
        requests.get(ep["opensearch"].replace("https://", "http://") + "/", timeout=10)


@pytest.mark.parametrize("auth", [None, ("admin", "wrong"), ("nobody", "x")])
def test_basic_auth_refused(ep, auth):
    resp = requests.get(ep["opensearch"] + "/", auth=auth, verify=ep["opensearch_ca"], timeout=10)
    assert resp.status_code == 401
    assert resp.headers["WWW-Authenticate"] == 'Basic realm="OpenSearch Security"'
    assert resp.text == "Unauthorized"


def test_sigv4(ep):
    def signed(secret=ep["aws_secret_access_key"], service="es"):
        auth = AWS4Auth(ep["aws_access_key_id"], secret, ep["region"], service)
        return requests.get(ep["opensearch"] + "/_cluster/health?local=true", auth=auth,
                            verify=ep["opensearch_ca"], timeout=10)

    assert signed().status_code == 200
    wrong = signed(secret="not-the-secret")
    assert wrong.status_code == 403 and "signature we calculated does not match" in wrong.json()["message"]
    scoped = signed(service="s3")
    assert scoped.status_code == 403 and "correct service" in scoped.json()["message"]
    other_key = requests.get(ep["opensearch"] + "/", verify=ep["opensearch_ca"], timeout=10,
                             auth=AWS4Auth("DEVSTACKOTHERKEY", "x", ep["region"], "es"))
    assert other_key.status_code == 403


def test_http_fault_rules(state, call):
    faults.set_faults(state, http=[
        {"service": "opensearch", "path_regex": "^/_cluster/health$", "count": 1, "status": 503},
        {"service": "opensearch", "path_regex": "^/_cat/indices$", "count": 1, "action": "reset"},
        {"service": "opensearch", "path_regex": "^/_cat/nodes$", "count": 1, "latency_ms": 700}])
    first = call("GET", "/_cluster/health")
    assert first.status_code == 503 and first.json()["error"]["type"] == "devstack_fault"
    assert call("GET", "/_cluster/health").status_code == 200  # count 1: fired once
    with pytest.raises(requests.exceptions.ConnectionError):
        call("GET", "/_cat/indices")
    started = time.monotonic()
    assert call("GET", "/_cat/nodes").status_code == 200
    assert time.monotonic() - started >= 0.7
    assert all(rule["count"] == 0 for rule in faults.current(state)["http"])


def test_reset_after_does_the_work(state, call, ep):
    index = lucene_index(call)
    faults.set_faults(state, http=[{"service": "opensearch", "path_regex": f"^/{index}/_doc/a$",
                                    "count": 1, "action": "reset_after"}])
    with pytest.raises(requests.exceptions.ConnectionError):
        call("PUT", f"/{index}/_doc/a?refresh=true", json={"emb": [1, 2, 3]})
    assert requests.get(f"{ep['opensearch_node']}/{index}/_doc/a", timeout=10).json()["found"] is True


def test_bulk_item_429_takes_items_out(state, call, ep):
    index = lucene_index(call)
    faults.set_faults(state, bulk_item_429={"count": 1, "ratio": 0.5})
    objs = []
    for i in range(4):
        objs += [{"index": {"_id": str(i)}}, {"emb": [i, 1, 0]}]
    body = call("POST", f"/{index}/_bulk?refresh=true", data=ndjson(*objs),
                headers={"Content-Type": "application/x-ndjson"}).json()
    assert body["errors"] is True
    statuses = [item["index"]["status"] for item in body["items"]]
    assert statuses == [201, 429, 201, 429]  # spread evenly, in their places
    rejected = body["items"][1]["index"]
    assert rejected["_id"] == "1" and rejected["_index"] == index
    assert rejected["error"] == {"type": "es_rejected_execution_exception",
                                 "reason": "rejected execution of coordinating operation"}
    node = ep["opensearch_node"]  # the node itself: what was really written
    assert requests.get(f"{node}/{index}/_count", timeout=10).json()["count"] == 2
    assert requests.get(f"{node}/{index}/_doc/1", timeout=10).json()["found"] is False
    assert faults.current(state)["bulk_item_429"]["count"] == 0
    again = call("POST", f"/{index}/_bulk?refresh=true", data=ndjson(*objs),
                 headers={"Content-Type": "application/x-ndjson"}).json()
    assert again["errors"] is False
    assert [item["index"]["result"] for item in again["items"]] == ["updated", "created", "updated", "created"]


def test_bulk_item_429_all_items_and_gzip(state, call, ep):
    index = lucene_index(call)
    faults.set_faults(state, bulk_item_429={"count": 1, "ratio": 1.0})
    objs = [{"index": {"_index": index, "_id": "x"}}, {"emb": [1, 1, 1]}, {"delete": {"_index": index, "_id": "y"}}]
    body = call("POST", "/_bulk", data=gzip.compress(ndjson(*objs)),
                headers={"Content-Type": "application/x-ndjson", "Content-Encoding": "gzip"}).json()
    assert [next(iter(i)) for i in body["items"]] == ["index", "delete"]
    assert all(next(iter(i.values()))["status"] == 429 for i in body["items"])
    plain = call("POST", "/_bulk?refresh=true", data=gzip.compress(ndjson(*objs[:2])),
                 headers={"Content-Type": "application/x-ndjson", "Content-Encoding": "gzip"})
    assert plain.status_code == 200 and plain.json()["items"][0]["index"]["status"] == 201  # gzip passes through


def test_faiss_mapping_refused_before_it_can_crash_the_node(call):
    name = f"t-{uuid.uuid4().hex[:10]}"
    resp = call("PUT", f"/{name}", json={"settings": {"index.knn": True}, "mappings": {"properties": {
        "emb": {"type": "knn_vector", "dimension": 3, "method": {"name": "hnsw", "engine": "faiss"}}}}})
    assert resp.status_code == 400 and resp.json()["error"]["type"] == "illegal_argument_exception"
    assert "[emb]" in resp.json()["error"]["reason"] and "lucene" in resp.json()["error"]["reason"]
    assert call("GET", f"/{name}").status_code == 404
    index = lucene_index(call)
    hit = call("POST", f"/{index}/_doc/1?refresh=true", json={"emb": [0.1, 0.2, 0.3]})
    assert hit.status_code == 201
    found = call("POST", f"/{index}/_search", json={"query": {"knn": {"emb": {"vector": [0.1, 0.2, 0.3], "k": 1}}}})
    assert found.json()["hits"]["hits"][0]["_id"] == "1"


def test_big_bulk_through_the_front(call):
    index = lucene_index(call, dim=64)
    objs = []
    for i in range(6000):
        objs += [{"index": {"_id": str(i)}}, {"emb": [float(i % 97) / 97 + 0.001] * 64}]
    data = ndjson(*objs)
    assert len(data) > 5_000_000
    resp = call("POST", f"/{index}/_bulk", data=data, headers={"Content-Type": "application/x-ndjson"})
    assert resp.status_code == 200 and resp.json()["errors"] is False and len(resp.json()["items"]) == 6000
