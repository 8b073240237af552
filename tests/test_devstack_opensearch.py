"""Contract tests for the OpenSearch stand-in's cluster and index APIs over real HTTP: auth
(basic and SigV4), cluster settings, index lifecycle, _bulk, visibility, _count/_doc/_search,
k-NN scoring per space type, opensearch-py, faults, 413, and restart persistence."""

from __future__ import annotations

import json
import math

import pytest
import requests
from opensearchpy import OpenSearch, RequestsHttpConnection, helpers
from requests_aws4auth import AWS4Auth

from devstack import faults
from devstack.opensearch.server import start
from tests.opensearch_helpers import AK, AUTH, SK, caller, running_service


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    yield from running_service(tmp_path_factory, "os")


@pytest.fixture(scope="module")
def http(service):
    return caller(service.url)


def ndjson(*objs) -> bytes:
    return ("\n".join(json.dumps(o) for o in objs) + "\n").encode()


def bulk(http, body: bytes, path="/_bulk"):
    return http("POST", path, data=body, headers={"Content-Type": "application/x-ndjson"})


def err(resp):
    return resp.json()["error"]


KNN_INDEX = {"settings": {"index": {"knn": True, "number_of_replicas": 0}},
             "mappings": {"properties": {
                 "text": {"type": "text"}, "tag": {"type": "keyword"},
                 "emb": {"type": "knn_vector", "dimension": 3,
                         "method": {"name": "hnsw", "space_type": "l2", "engine": "faiss"}}}}}


# --- auth and cluster ------------------------------------------------------------------------
def test_auth(service):
    assert requests.get(service.url + "/_devstack/health").status_code == 200
    anon = requests.get(service.url + "/")
    assert anon.status_code == 401 and anon.text == "Unauthorized"
    assert anon.headers["WWW-Authenticate"] == 'Basic realm="OpenSearch Security"'
    assert requests.get(service.url + "/", auth=("admin", "nope")).status_code == 401
    assert requests.get(service.url + "/", auth=("admin", "pw")).status_code == 200
    signed = requests.get(service.url + "/_cluster/settings", auth=AWS4Auth(AK, SK, "us-east-1", "es"))
    assert signed.status_code == 200
    body = {"query": {"match_all": {}}}
    signed_post = requests.post(service.url + "/_plugins/_ml/tasks/_search", json=body,
                                auth=AWS4Auth(AK, SK, "us-east-1", "es"))
    assert signed_post.status_code == 200, signed_post.text
    bad = requests.get(service.url + "/", auth=AWS4Auth(AK, "wrong-secret", "us-east-1", "es"))
    assert bad.status_code == 403 and "signature" in bad.json()["message"]
    wrong_service = requests.get(service.url + "/", auth=AWS4Auth(AK, SK, "us-east-1", "s3"))
    assert wrong_service.status_code == 403


def test_cluster_info_and_settings(http):
    info = http("GET", "/").json()
    assert info["version"]["number"] == "3.3.0" and info["version"]["distribution"] == "opensearch"
    defaults = http("GET", "/_cluster/settings?include_defaults=true&flat_settings=true").json()["defaults"]
    trusted = defaults["plugins.ml_commons.trusted_connector_endpoints_regex"]
    assert r"^https://api\.sagemaker\..*[a-z0-9-]\.amazonaws\.com/.*$" in trusted
    assert r"^http://127\.0\.0\.1:\d+/.*$" in trusted
    assert defaults["plugins.ml_commons.connector.private_ip_enabled"] == "true"
    assert defaults["plugins.ml_commons.max_batch_inference_tasks"] == "10"
    put = http("PUT", "/_cluster/settings", {"persistent": {"plugins": {"ml_commons": {"max_batch_inference_tasks": 20}}}})
    assert put.json() == {"acknowledged": True, "persistent": {"plugins": {"ml_commons": {"max_batch_inference_tasks": "20"}}},
                          "transient": {}}
    got = http("GET", "/_cluster/settings").json()
    assert got["persistent"]["plugins"]["ml_commons"]["max_batch_inference_tasks"] == "20"
    bad = http("PUT", "/_cluster/settings", {"persistent": {"plugins.ml_commons.max_batch_inference_tasks": "x"}})
    assert bad.status_code == 400 and err(bad)["type"] == "illegal_argument_exception"
    http("PUT", "/_cluster/settings", {"persistent": {"plugins.ml_commons.max_batch_inference_tasks": None}})
    assert http("GET", "/_cluster/settings").json()["persistent"] == {}


# --- index lifecycle -------------------------------------------------------------------------
def test_index_lifecycle(http):
    created = http("PUT", "/life", KNN_INDEX)
    assert created.json() == {"acknowledged": True, "shards_acknowledged": True, "index": "life"}
    dup = http("PUT", "/life", {})
    assert dup.status_code == 400 and err(dup)["type"] == "resource_already_exists_exception"
    assert err(dup)["reason"].startswith("index [life/") and err(dup)["root_cause"][0]["index"] == "life"
    got = http("GET", "/life").json()["life"]
    assert got["mappings"]["properties"]["emb"]["dimension"] == 3 and got["aliases"] == {}
    assert got["settings"]["index"]["knn"] == "true" and got["settings"]["index"]["number_of_replicas"] == "0"
    assert http("HEAD", "/life").status_code == 200 and http("HEAD", "/nope").status_code == 404
    assert http("GET", "/life/_mapping").json() == {"life": {"mappings": KNN_INDEX["mappings"]}}
    assert http("PUT", "/life/_settings", {"index": {"refresh_interval": "-1", "number_of_replicas": 1}}).json() == {"acknowledged": True}
    flat = http("GET", "/life/_settings?flat_settings=true").json()["life"]["settings"]
    assert flat["index.refresh_interval"] == "-1" and flat["index.number_of_replicas"] == "1"
    assert http("PUT", "/life/_settings", {"index.refresh_interval": "1s"}).status_code == 200
    assert http("GET", "/life/_settings").json()["life"]["settings"]["index"]["refresh_interval"] == "1s"
    static = http("PUT", "/life/_settings", {"index": {"number_of_shards": 2}})
    assert static.status_code == 400 and "Can't update non dynamic settings" in err(static)["reason"]
    assert http("DELETE", "/life").json() == {"acknowledged": True}
    missing = http("DELETE", "/life")
    assert missing.status_code == 404 and err(missing)["type"] == "index_not_found_exception"
    assert err(missing)["reason"] == "no such index [life]"


@pytest.mark.parametrize("name,why", [
    ("Upper", "must be lowercase"), ("_under", "must not start with '_', '-', or '+'"),
    ("-dash", "must not start with '_', '-', or '+'"), ("a*b", "must not contain the following characters"),
    ("a:b", "must not contain ':'"),
])
def test_invalid_index_names(http, name, why):
    resp = http("PUT", f"/{name}", {})
    assert resp.status_code == 400 and err(resp)["type"] == "invalid_index_name_exception"
    assert err(resp)["reason"].startswith(f"Invalid index name [{name}], {why}")


@pytest.mark.parametrize("field,reason", [
    ({"type": "knn_vector"}, "Dimension value missing for vector: v"),
    ({"type": "knn_vector", "dimension": 3, "space_type": "euclid"}, "Unsupported space type: euclid"),
    ({"type": "knn_vector", "dimension": 3, "method": {"name": "hnsw", "engine": "nmslib"}},
     "nmslib engine is deprecated"),
])
def test_knn_mapping_validation(http, field, reason):
    resp = http("PUT", "/badmap", {"mappings": {"properties": {"v": field}}})
    assert resp.status_code == 400 and err(resp)["type"] == "mapper_parsing_exception"
    assert reason in err(resp)["reason"]


# --- bulk --------------------------------------------------------------------------------------
def test_bulk_operations_and_item_errors(http):
    http("PUT", "/bulky", KNN_INDEX)
    resp = bulk(http, ndjson(
        {"index": {"_index": "bulky", "_id": "1"}}, {"text": "one", "emb": [1, 0, 0]},
        {"index": {"_index": "bulky", "_id": "1"}}, {"text": "uno", "emb": [1, 0, 0]},
        {"create": {"_index": "bulky", "_id": "1"}}, {"text": "dup", "emb": [1, 0, 0]},
        {"update": {"_index": "bulky", "_id": "1"}}, {"doc": {"tag": "x"}},
        {"update": {"_index": "bulky", "_id": "2"}}, {"doc": {"text": "two", "emb": [0, 1, 0]}, "doc_as_upsert": True},
        {"update": {"_index": "bulky", "_id": "9"}}, {"doc": {"text": "nine"}},
        {"index": {"_index": "bulky", "_id": "dim"}}, {"emb": [1, 2]},
        {"index": {"_index": "bulky", "_id": "str"}}, {"emb": [1, "abc", 3]},
        {"delete": {"_index": "bulky", "_id": "2"}},
        {"delete": {"_index": "bulky", "_id": "404"}},
        {"index": {"_index": "bulky"}}, {"text": "auto id"},
    ))
    assert resp.status_code == 200
    body = resp.json()
    assert body["errors"] is True and isinstance(body["took"], int)
    items = [next(iter(i.items())) for i in body["items"]]
    assert [op for op, _ in items] == ["index", "index", "create", "update", "update", "update", "index",
                                       "index", "delete", "delete", "index"]
    first = items[0][1]
    assert first == {"_index": "bulky", "_id": "1", "_version": 1, "result": "created", "status": 201,
                     "_shards": {"total": 1, "successful": 1, "failed": 0}, "_seq_no": 0, "_primary_term": 1}
    assert (items[1][1]["result"], items[1][1]["status"], items[1][1]["_version"]) == ("updated", 200, 2)
    assert items[2][1]["status"] == 409 and items[2][1]["error"]["type"] == "version_conflict_engine_exception"
    assert items[2][1]["error"]["reason"] == "[1]: version conflict, document already exists (current version [2])"
    assert (items[3][1]["result"], items[3][1]["_version"]) == ("updated", 3)
    assert items[4][1]["result"] == "created"
    assert items[5][1]["status"] == 404 and items[5][1]["error"]["type"] == "document_missing_exception"
    dim = items[6][1]["error"]
    assert items[6][1]["status"] == 400 and dim["type"] == "mapper_parsing_exception"
    assert dim["caused_by"]["reason"] == "Vector dimension mismatch. Expected: 3, Given: 2"
    assert items[7][1]["error"]["type"] == "mapper_parsing_exception"
    assert (items[8][1]["result"], items[8][1]["status"]) == ("deleted", 200)
    assert (items[9][1]["result"], items[9][1]["status"]) == ("not_found", 404) and "error" not in items[9][1]
    assert items[10][1]["status"] == 201 and len(items[10][1]["_id"]) == 20
    doc = http("GET", "/bulky/_doc/1").json()
    assert doc["found"] and doc["_version"] == 3 and doc["_source"] == {"text": "uno", "emb": [1.0, 0.0, 0.0], "tag": "x"}
    assert http("GET", "/bulky/_doc/2").status_code == 404
    assert http("GET", "/bulky/_doc/2").json() == {"_index": "bulky", "_id": "2", "found": False}
    assert http("GET", "/bulky/_doc/dim").json()["found"] is False
    assert http("GET", "/nope/_doc/1").json()["error"]["type"] == "index_not_found_exception"


def test_bulk_non_finite_values(http):
    http("PUT", "/finite", KNN_INDEX)
    raw = b'{"index":{"_id":"n"}}\n{"emb":[1.0,NaN,0]}\n{"index":{"_id":"i"}}\n{"emb":[1e39,0,0]}\n'
    items = bulk(http, raw, "/finite/_bulk").json()["items"]
    assert items[0]["index"]["error"]["caused_by"]["reason"] == "KNN vector values cannot be NaN"
    assert items[1]["index"]["error"]["caused_by"]["reason"] == "KNN vector values cannot be infinity"


def test_bulk_request_errors_and_auto_create(http):
    no_newline = http("POST", "/_bulk", data=b'{"index":{"_index":"x","_id":"1"}}\n{"a":1}',
                      headers={"Content-Type": "application/x-ndjson"})
    assert no_newline.status_code == 400 and "must be terminated by a newline" in err(no_newline)["reason"]
    no_index = bulk(http, ndjson({"index": {"_id": "1"}}, {"a": 1}))
    assert no_index.status_code == 400 and err(no_index)["type"] == "action_request_validation_exception"
    resp = bulk(http, ndjson({"index": {"_id": "1"}}, {"title": "hello world", "n": 3, "ok": True}), "/autoidx/_bulk?refresh=true")
    assert resp.json()["errors"] is False
    props = http("GET", "/autoidx/_mapping").json()["autoidx"]["mappings"]["properties"]
    assert props["title"] == {"type": "text", "fields": {"keyword": {"type": "keyword", "ignore_above": 256}}}
    assert props["n"] == {"type": "long"} and props["ok"] == {"type": "boolean"}


def test_refresh_visibility(http):
    http("PUT", "/vis", {"settings": {"index": {"refresh_interval": "-1"}}})
    bulk(http, ndjson({"index": {"_id": "a"}}, {"v": 1}), "/vis/_bulk")
    assert http("GET", "/vis/_count").json()["count"] == 0
    assert http("GET", "/vis/_doc/a").json()["found"] is True  # GET is realtime
    assert http("POST", "/vis/_refresh").json()["_shards"]["failed"] == 0
    assert http("GET", "/vis/_count").json() == {"count": 1, "_shards": {"total": 1, "successful": 1, "skipped": 0, "failed": 0}}
    bulk(http, ndjson({"index": {"_id": "b"}}, {"v": 2}), "/vis/_bulk?refresh=true")
    assert http("GET", "/vis/_count").json()["count"] == 2


# --- search ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def docs(http):
    http("PUT", "/docs", KNN_INDEX)
    rows = [("a", "red apple", "fruit", [1, 0, 0]), ("b", "green apple pie", "food", [0, 1, 0]),
            ("c", "red car", "thing", [0, 0, 1]), ("d", "blue sky", "thing", [1, 1, 0])]
    objs = []
    for doc_id, text, tag, emb in rows:
        objs += [{"index": {"_id": doc_id}}, {"text": text, "tag": tag, "emb": emb}]
    bulk(http, ndjson(*objs), "/docs/_bulk?refresh=wait_for")
    return rows


def search(http, body, index="docs"):
    resp = http("POST", f"/{index}/_search", body)
    assert resp.status_code == 200, resp.text
    return resp.json()


def ids(result):
    return [h["_id"] for h in result["hits"]["hits"]]


def test_search_shapes_and_queries(http, docs):
    result = search(http, {"query": {"match_all": {}}, "size": 2, "from": 1, "_source": ["text"]})
    assert set(result) == {"took", "timed_out", "_shards", "hits"} and result["timed_out"] is False
    assert result["hits"]["total"] == {"value": 4, "relation": "eq"} and result["hits"]["max_score"] == 1.0
    assert result["hits"]["hits"] == [{"_index": "docs", "_id": "b", "_score": 1.0, "_source": {"text": "green apple pie"}},
                                      {"_index": "docs", "_id": "c", "_score": 1.0, "_source": {"text": "red car"}}]
    assert ids(search(http, {"query": {"ids": {"values": ["d", "a", "zz"]}}})) == ["a", "d"]
    assert ids(search(http, {"query": {"term": {"tag": "thing"}}})) == ["c", "d"]
    assert ids(search(http, {"query": {"term": {"text": "apple"}}})) == ["a", "b"]
    assert ids(search(http, {"query": {"match": {"text": "red apple"}}}))[0] == "a"
    assert ids(search(http, {"query": {"match": {"text": {"query": "red apple", "operator": "and"}}}})) == ["a"]
    assert ids(search(http, {"query": {"bool": {"filter": [{"term": {"tag": "thing"}}],
                                                "must_not": [{"match": {"text": "sky"}}]}}})) == ["c"]
    none = search(http, {"query": {"match": {"text": "zebra"}}})
    assert none["hits"] == {"total": {"value": 0, "relation": "eq"}, "max_score": None, "hits": []}
    no_src = search(http, {"query": {"ids": {"values": ["a"]}}, "_source": False})["hits"]["hits"][0]
    assert "_source" not in no_src
    excl = search(http, {"query": {"ids": {"values": ["a"]}}, "_source": {"excludes": ["emb"]}})["hits"]["hits"][0]
    assert excl["_source"] == {"text": "red apple", "tag": "fruit"}
    full = search(http, {"query": {"ids": {"values": ["a"]}}})["hits"]["hits"][0]
    assert full["_source"]["emb"] == [1.0, 0.0, 0.0]
    assert http("POST", "/docs/_count", {"query": {"term": {"tag": "thing"}}}).json()["count"] == 2
    bad = http("POST", "/docs/_search", {"query": {"fuzzy_wuzzy": {}}})
    assert bad.status_code == 400 and err(bad)["type"] == "parsing_exception"


def test_knn_l2_scores(http, docs):
    result = search(http, {"query": {"knn": {"emb": {"vector": [1, 0, 0], "k": 2}}}})
    hits = result["hits"]["hits"]
    assert [h["_id"] for h in hits] == ["a", "d"] and result["hits"]["total"]["value"] == 2
    assert hits[0]["_score"] == 1.0 and hits[1]["_score"] == pytest.approx(0.5)  # 1 / (1 + d^2)
    wrong = http("POST", "/docs/_search", {"query": {"knn": {"emb": {"vector": [1, 0], "k": 2}}}})
    assert wrong.status_code == 400 and "Query vector has invalid dimension: 2" in err(wrong)["reason"]
    filtered = search(http, {"query": {"knn": {"emb": {"vector": [1, 0, 0], "k": 3, "filter": {"term": {"tag": "thing"}}}}}})
    assert ids(filtered) == ["d", "c"]


@pytest.mark.parametrize("space,expected", [
    ("l2", {"x": 1 / (1 + 1.0), "y": 1 / (1 + 5.0)}),
    ("cosinesimil", {"x": (1 + 1 / math.sqrt(2)) / 2, "y": (1 - 1 / math.sqrt(2)) / 2}),
    ("innerproduct", {"x": 1 + 1.0, "y": 1 / (1 + 1.0)}),
])
def test_knn_space_types(http, space, expected):
    index = f"space-{space}"
    http("PUT", f"/{index}", {"mappings": {"properties": {"v": {"type": "knn_vector", "dimension": 2, "space_type": space}}}})
    bulk(http, ndjson({"index": {"_id": "x"}}, {"v": [1, 1]}, {"index": {"_id": "y"}}, {"v": [-1, -1]}), f"/{index}/_bulk")
    hits = search(http, {"query": {"knn": {"v": {"vector": [1, 0], "k": 2}}}}, index)["hits"]["hits"]
    assert {h["_id"]: h["_score"] for h in hits} == pytest.approx(expected, rel=1e-6)


# --- clients, faults, limits, persistence --------------------------------------------------------
def test_opensearch_py_client(service):
    host = {"host": "127.0.0.1", "port": int(service.url.rsplit(":", 1)[1])}
    client = OpenSearch(hosts=[host], http_auth=("admin", "pw"), use_ssl=False)
    client.indices.create(index="pyidx", body=KNN_INDEX)
    assert client.indices.exists(index="pyidx")
    resp = client.bulk(body=[{"index": {"_index": "pyidx", "_id": "1"}}, {"text": "hi", "emb": [0.1, 0.2, 0.3]}], refresh=True)
    assert resp["errors"] is False
    ok, errors = helpers.bulk(client, ({"_index": "pyidx", "_id": str(i), "text": f"t{i}", "emb": [i, 0, 0]} for i in range(2, 6)))
    assert ok == 4 and not errors
    client.indices.refresh(index="pyidx")
    assert client.count(index="pyidx")["count"] == 5
    hits = client.search(index="pyidx", body={"query": {"knn": {"emb": {"vector": [0.1, 0.2, 0.3], "k": 1}}}})
    assert hits["hits"]["hits"][0]["_id"] == "1"
    signed = OpenSearch(hosts=[host], http_auth=AWS4Auth(AK, SK, "us-east-1", "es"),
                        connection_class=RequestsHttpConnection, use_ssl=False)
    assert signed.search(index="pyidx", body={"query": {"ids": {"values": ["1"]}}})["hits"]["total"]["value"] == 1
    signed.bulk(body=[{"index": {"_index": "pyidx", "_id": "s"}}, {"text": "signed", "emb": [0, 0, 1]}], refresh=True)
    assert signed.get(index="pyidx", id="s")["_source"]["text"] == "signed"
    assert client.ping()


def test_bulk_item_429_fault(http, service):
    http("PUT", "/faulty", {})
    faults.init(service.state_dir)  # faults' file path is process-global; point it at this service
    faults.set_faults(service.state_dir, bulk_item_429={"count": 1, "ratio": 0.5})
    objs = []
    for i in range(4):
        objs += [{"index": {"_id": str(i)}}, {"n": i}]
    items = bulk(http, ndjson(*objs), "/faulty/_bulk?refresh=true").json()["items"]
    rejected = [i["index"] for i in items if i["index"]["status"] == 429]
    assert len(rejected) == 2
    assert rejected[0]["error"] == {"type": "es_rejected_execution_exception",
                                    "reason": "rejected execution of coordinating operation"}
    assert http("GET", "/faulty/_count").json()["count"] == 2  # rejected items are not written
    again = bulk(http, ndjson(*objs), "/faulty/_bulk?refresh=true").json()
    assert again["errors"] is False and http("GET", "/faulty/_count").json()["count"] == 4


def test_body_too_large(tmp_path):
    svc = start(tmp_path, auth=AUTH, max_content_length=1024)
    try:
        resp = requests.post(svc.url + "/_bulk", data=b"x" * 4096, auth=("admin", "pw"))
        assert resp.status_code == 413
        assert requests.get(svc.url + "/", auth=("admin", "pw")).status_code == 200
    finally:
        svc.stop()


def test_restart_keeps_everything(tmp_path):
    svc = start(tmp_path, auth=AUTH)
    s = requests.Session()
    s.auth = ("admin", "pw")
    s.put(svc.url + "/keep", json=KNN_INDEX)
    s.put(svc.url + "/keep/_settings", json={"index": {"refresh_interval": "-1"}})
    s.post(svc.url + "/keep/_bulk?refresh=true", data=ndjson({"index": {"_id": "k"}}, {"text": "kept", "emb": [1, 2, 3]}),
           headers={"Content-Type": "application/x-ndjson"})
    s.put(svc.url + "/_cluster/settings", json={"persistent": {"plugins.ml_commons.max_batch_inference_tasks": 3}})
    connector = {"name": "c", "version": "1", "protocol": "aws_sigv4", "credential": {"roleArn": "arn:aws:iam::1:role/r"},
                 "parameters": {"region": "us-east-1", "service_name": "sagemaker"},
                 "actions": [{"action_type": "predict", "method": "POST", "url": "http://127.0.0.1:9/x"}]}
    cid = s.post(svc.url + "/_plugins/_ml/connectors/_create", json=connector).json()["connector_id"]
    reg = s.post(svc.url + "/_plugins/_ml/models/_register", json={"name": "m", "function_name": "remote", "connector_id": cid}).json()
    svc.stop()
    svc = start(tmp_path, auth=AUTH)
    try:
        assert s.get(svc.url + "/keep/_count").json()["count"] == 1
        hit = s.post(svc.url + "/keep/_search", json={"query": {"knn": {"emb": {"vector": [1, 2, 3], "k": 1}}}}).json()
        assert hit["hits"]["hits"][0]["_source"] == {"text": "kept", "emb": [1.0, 2.0, 3.0]}
        assert s.get(svc.url + "/keep/_settings").json()["keep"]["settings"]["index"]["refresh_interval"] == "-1"
        assert s.get(svc.url + f"/_plugins/_ml/connectors/{cid}").json()["name"] == "c"
        assert s.get(svc.url + f"/_plugins/_ml/models/{reg['model_id']}").json()["connector_id"] == cid
        assert s.get(svc.url + f"/_plugins/_ml/tasks/{reg['task_id']}").json()["state"] == "COMPLETED"
        settings = s.get(svc.url + "/_cluster/settings?flat_settings=true").json()["persistent"]
        assert settings == {"plugins.ml_commons.max_batch_inference_tasks": "3"}
    finally:
        svc.stop()
