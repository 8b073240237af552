"""Contract tests of batchvec's OpenSearch client against the devstack's real OpenSearch 3.6
node: the k-NN index body (lucene) per space type, `_bulk` item outcomes as bulk_format and
the bulk writer classify them (including the vector text the output converter passes on
unparsed), 429 items retried, compare-and-set documents, bulk-load settings and the index
API errors the pipeline branches on."""

from __future__ import annotations

import json

import pytest

from batchvec.hooks.opensearch import OpenSearchDomainHook, OpenSearchError, VersionConflict
from batchvec.index import bulk_format, lifecycle, load_settings
from batchvec.index.bulk_writer import BulkWriter
from batchvec.outputs import convert
from devstack import faults
from tests.helpers.contract_helpers import unique

pytestmark = [pytest.mark.devstack, pytest.mark.airflow]


@pytest.fixture(scope="module")
def hook(airflow_env):
    return OpenSearchDomainHook()


@pytest.fixture
def index(hook):
    name = unique("contract-os")
    hook.create_index(name, lifecycle.index_body(3, "emb", "l2", "lucene"))
    return name


def pair(op: str, index: str, doc_id: str, source: dict | str) -> bytes:
    body = source if isinstance(source, str) else json.dumps(source)
    return f'{json.dumps({op: {"_index": index, "_id": doc_id}})}\n{body}\n'.encode()


@pytest.mark.parametrize("space,nearest", [("l2", ["a", "b", "c"]),
                                           ("cosinesimil", ["b", "a", "c"]),
                                           ("innerproduct", ["c", "b", "a"])])
def test_index_body_with_lucene_is_served_as_written(hook, space, nearest):
    name = unique(f"contract-{space}")
    body = lifecycle.index_body(3, "emb", space, "lucene")
    assert hook.create_index(name, body)["acknowledged"] is True
    mapping = hook.get_mapping(name)
    assert mapping["properties"]["emb"]["method"] | {"parameters": {}} == {
        "name": "hnsw", "engine": "lucene", "space_type": space, "parameters": {}}
    assert lifecycle.existing_dimension(mapping, "emb") == 3
    assert mapping["properties"]["text"] == {"type": "text"}
    assert hook.get_settings(name)["knn"] == "true"
    # Query [1, 0.1, 0]: a is closest by distance, b by angle, c has the largest dot product.
    docs = {"a": [1, 0, 0], "b": [2, 0.3, 0], "c": [9, 5, 0]}
    hook.bulk(b"".join(pair("index", name, k, {"emb": v, "text": k}) for k, v in docs.items()))
    hook.refresh(name)
    hits = hook.search(name, {"query": {"knn": {"emb": {"vector": [1, 0.1, 0], "k": 3}}}})
    assert [h["_id"] for h in hits["hits"]["hits"]] == nearest


def test_bulk_item_outcomes_are_classified_as_the_writer_expects(hook, index):
    body = b"".join([
        pair("index", index, "1", {"emb": [1, 0, 0]}),
        pair("index", index, "1", {"emb": [1, 1, 0]}),
        pair("create", index, "1", {"emb": [0, 0, 1]}),
        pair("index", index, "dim", {"emb": [1, 2]}),
        pair("index", index, "str", {"emb": [1, "abc", 3]}),
        pair("index", index, "nan", '{"emb": [1.0, NaN, 0]}'),
        pair("index", index, "inf", {"emb": [1e39, 0, 0]}),
        pair("update", index, "missing", {"doc": {"text": "x"}}),
    ])
    resp = hook.bulk(body)
    assert resp["errors"] is True
    got = {next(iter(i.values()))["_id"] + f"#{n}": bulk_format.classify_item(i)
           for n, i in enumerate(resp["items"])}
    assert [outcome for outcome, _ in got.values()] == [
        "created", "updated", "failed", "failed", "failed", "failed", "failed", "failed"]
    reasons = [reason for _, reason in got.values()]
    assert reasons[2].startswith("version_conflict_engine_exception: [1]: version conflict, "
                                 "document already exists (current version [2])")
    assert reasons[3].startswith("mapper_parsing_exception: failed to parse field [emb] of type "
                                 "[knn_vector]")
    assert reasons[3].endswith("(caused by illegal_argument_exception: Vector dimension "
                               "mismatch. Expected: 3, Given: 2)")
    assert "(caused by number_format_exception: " in reasons[4]
    assert "(caused by json_parse_exception: Non-standard token 'NaN'" in reasons[5]
    assert reasons[6].endswith("(caused by illegal_argument_exception: KNN vector values "
                               "cannot be infinity)")
    assert reasons[7].startswith("document_missing_exception: [missing]: document missing")
    assert {bulk_format.reason_key(r) for r in reasons[2:]} == {
        "version_conflict_engine_exception", "mapper_parsing_exception",
        "document_missing_exception"}


def test_vector_text_the_converter_keeps_unparsed_is_refused_per_document(hook, index):
    """outputs.py leaves the number grammar to the node: each bad vector fails its own
    document with mapper_parsing_exception, the rest of the request is written."""
    builder = convert.ActionBuilder(index, "emb", 3)
    lines = [b'{"_id": "ok", "text": "t", "SageMakerOutput": [[0.1, 0.2, 0.3]]}',
             b'{"_id": "dots", "text": "t", "SageMakerOutput": [[1.2.3, 0.2, 0.3]]}',
             b'{"_id": "commas", "text": "t", "SageMakerOutput": [[1,,2]]}',
             b'{"_id": "huge", "text": "t", "SageMakerOutput": [[' + b"9" * 400 + b', 0, 0]]}',
             b'{"_id": "ok2", "text": "t", "SageMakerOutput": [[0.4, 0.5, 0.6]]}']
    failed: dict[str, str] = {}
    writer = BulkWriter(hook.bulk, concurrency=1, on_failed=lambda i, _a, r: failed.update({i: r}))
    counts = writer.write(builder(line) for line in lines)
    assert (counts.created, counts.failed, counts.requests) == (2, 3, 1)
    assert counts.failed_reasons == {"mapper_parsing_exception": 3}
    assert sorted(failed) == ["commas", "dots", "huge"]
    assert "json_parse_exception" in failed["dots"] and "json_parse_exception" in failed["commas"]
    assert "KNN vector values cannot be infinity" in failed["huge"]
    hook.refresh(index)
    assert hook.count(index) == 2
    assert hook.get_document(index, "ok2")["_source"] == {"text": "t", "emb": [0.4, 0.5, 0.6]}


def test_items_the_front_rejects_with_429_are_resent_and_land(hook, index, airflow_env):
    state = airflow_env.state_dir
    faults.set_faults(state, bulk_item_429={"count": 1, "ratio": 0.5})
    try:
        writer = BulkWriter(hook.bulk, concurrency=1, backoff_base=0.05)
        counts = writer.write((str(i), pair("index", index, str(i), {"emb": [i, 1, 0]}))
                              for i in range(8))
    finally:
        faults.unset(state, "bulk_item_429")
    assert (counts.created, counts.failed, counts.retries, counts.requests) == (8, 0, 4, 2)
    hook.refresh(index)
    assert hook.count(index) == 8


def test_compare_and_set_documents(hook):
    index = unique("contract-cas")
    first = hook.put_versioned(index, "lease", {"holders": ["a"]}, create=True)
    with pytest.raises(VersionConflict) as err:
        hook.put_versioned(index, "lease", {"holders": ["b"]}, create=True)
    assert err.value.type == "version_conflict_engine_exception"
    source, version = hook.get_versioned(index, "lease")
    assert (source, version) == ({"holders": ["a"]}, first)
    second = hook.put_versioned(index, "lease", {"holders": ["a", "b"]}, version=version)
    assert second[0] > first[0] and second[1] == first[1]
    with pytest.raises(VersionConflict):  # a writer still holding the first version loses
        hook.put_versioned(index, "lease", {"holders": []}, version=first)
    with pytest.raises(VersionConflict):
        hook.delete_versioned(index, "lease", version=first)
    hook.delete_versioned(index, "lease", version=second)
    assert hook.get_versioned(index, "lease") is None
    assert hook.get_document("contract-no-such-index", "x") is None


def test_bulk_load_settings_are_set_and_restored(hook, index):
    assert load_settings.current_settings(hook, index) == {"refresh_interval": "1s",
                                                       "number_of_replicas": 1}
    original = load_settings.enter(hook, index, "run-a")
    assert original == {"refresh_interval": "1s", "number_of_replicas": 1}
    settings = hook.get_settings(index)
    assert (settings["refresh_interval"], settings["number_of_replicas"]) == ("-1", "0")
    load_settings.enter(hook, index, "run-b")
    assert load_settings.leave(hook, index, "run-a") is None  # run-b still loading
    assert hook.get_settings(index)["refresh_interval"] == "-1"
    assert load_settings.leave(hook, index, "run-b") == original
    settings = hook.get_settings(index)
    assert (settings["refresh_interval"], settings["number_of_replicas"]) == ("1s", "1")
    assert hook.get_versioned(load_settings.LEASE_INDEX, index) is None


def test_index_api_errors_carry_the_type_the_pipeline_branches_on(hook, index):
    with pytest.raises(OpenSearchError) as err:
        hook.create_index(index, lifecycle.index_body(3, "emb", "l2", "lucene"))
    # prepare_index treats this as "a parallel run made it first"
    assert err.value.status == 400 and "resource_already_exists" in str(err.value)
    with pytest.raises(OpenSearchError) as err:
        hook.create_index("Contract_Upper", {})
    assert err.value.type == "invalid_index_name_exception" and "must be lowercase" in err.value.reason
    with pytest.raises(OpenSearchError) as err:
        hook.count("contract-no-such-index")
    assert (err.value.status, err.value.type) == (404, "index_not_found_exception")
    assert hook.index_exists(index) and not hook.index_exists("contract-no-such-index")
