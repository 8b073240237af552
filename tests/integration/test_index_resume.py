"""index_shard resumes from its S3 checkpoint (batchvec.index.checkpoint), on the devstack's real
S3 and OpenSearch node: a try stopped right after its first checkpoint (the next bulk request
raises, no clock involved), then a retry. Nothing lost, nothing doubled, the counts and the
DLQ exact, and the retry re-sends at most one checkpoint interval, reading the `.out` from
the saved byte offset."""

from __future__ import annotations

import logging
import os
import uuid

import orjson
import pytest

from batchvec.hooks import s3io
from batchvec.hooks.opensearch import OpenSearchDomainHook
from batchvec.index import lifecycle, load
from batchvec.plan.run_plan import Plan
from batchvec.report.accounting import ShardReport
from batchvec.util.lines import iter_lines

pytestmark = [pytest.mark.devstack, pytest.mark.airflow]

DIM, LINES, INTERVAL, MAX_ACTIONS, LANES = 4, 240, 40, 5, 2
SHARD = "shard-00000"


class Killed(BaseException):
    """Stands for the SIGKILL: nothing after it runs in the try."""


class S3Spy:
    """The real client, noting the checkpoint PUTs and the ranged GETs."""

    def __init__(self, client):
        self._c, self.checkpoints, self.ranges = client, 0, []

    def __getattr__(self, name):
        return getattr(self._c, name)

    def put_object(self, **kw):
        out = self._c.put_object(**kw)
        self.checkpoints += "/checkpoints/index/" in kw["Key"]
        return out

    def get_object(self, **kw):
        self.ranges.append((kw["Key"], kw.get("Range")))
        return self._c.get_object(**kw)


class BulkSpy:
    """Counts the index and delete items the node is sent; raises Killed at the first
    request once `stop_when(spy)` holds."""

    def __init__(self, hook, stop_when=lambda body: False):
        self.hook, self.stop_when = hook, stop_when
        self.index_items = self.delete_items = 0

    def bulk(self, body: bytes) -> dict:
        if self.stop_when(body):
            raise Killed
        heads = body.split(b"\n")  # an index action is two lines, a delete one
        self.index_items += sum(h.startswith(b'{"index"') for h in heads)
        self.delete_items += sum(h.startswith(b'{"delete"') for h in heads)
        return self.hook.bulk(body)


def _vector(i: int) -> list[float]:
    return [1.0 + i % 7, 0.5, -0.25 * (i % 3), 0.1]


def _out_lines() -> tuple[bytes, dict]:
    """The shard's `.out`: good lines, conversion failures, node refusals, a duplicate id,
    blank and CRLF lines."""
    rows, expect = [], {"conversion": 0, "refused": 0, "duplicates": 0}
    for i in range(LINES):
        doc = {"_id": f"d{i:04d}", "text": f"doc {i}", "SageMakerOutput": [_vector(i)]}
        if i % 50 == 13:
            doc["SageMakerOutput"] = [[1.0, 2.0]]  # wrong dimension: dead-lettered at read
            expect["conversion"] += 1
        elif i % 50 == 29:
            doc["text"] = {"not": "text"}  # the node refuses it (mapper_parsing_exception)
            expect["refused"] += 1
        elif i == 200:
            doc["_id"] = "d0010"  # a later copy of an id: last wins
            expect["duplicates"] += 1
        rows.append(orjson.dumps(doc) + (b"\r\n" if i % 17 == 0 else b"\n"))
        if i % 31 == 0:
            rows.append(b"\n")
    return b"".join(rows), expect


@pytest.fixture
def shard_setup(airflow_env, monkeypatch):
    monkeypatch.setenv("BATCHVEC_CHECKPOINT_LINES", str(INTERVAL))
    monkeypatch.setenv("BATCHVEC_BULK_MAX_ACTIONS", str(MAX_ACTIONS))
    ep = airflow_env.endpoints
    s3 = airflow_env.s3.client()
    tag = uuid.uuid4().hex[:10]
    index = f"resume-{tag}"
    plan = Plan(dag_id="batch_embeddings", run_id=f"r-{tag}", run_key=f"resume-{tag}",
                ds="2026-03-05", input_uri="s3://unused/", input_format="jsonl", id_field="id",
                text_field="text", metadata_fields=[], index_name=index,
                vector_field="embedding", space_type="cosinesimil",
                knn_engine=os.environ.get("BATCHVEC_KNN_ENGINE", "lucene"), bucket=ep["bucket"],
                run_prefix=f"runs/resume-{tag}", shards=1, wait_timeout=60,
                max_reject_ratio=0.5, keep_staging=False, keep_outputs=True,
                bulk_concurrency=LANES, dimension=DIM, version=1000)
    hook = OpenSearchDomainHook()
    hook.create_index(index, lifecycle.index_body(DIM, "embedding", "cosinesimil",
                                                 plan.knn_engine))
    body, expect = _out_lines()
    s3.put_object(Bucket=plan.bucket, Key=plan.key("output", SHARD + ".out"), Body=body)
    # A full sync's deletes: 12 documents an earlier run indexed, absent from this input.
    old = [f"old-{i}" for i in range(12)]
    hook.bulk(b"".join(b'{"index":{"_index":"%s","_id":"%s"}}\n{"text":"old"}\n'
                       % (index.encode(), d.encode()) for d in old))
    deletes_key = plan.key("staging", SHARD + ".deletes.jsonl")
    s3.put_object(Bucket=plan.bucket, Key=deletes_key,
                  Body=b"".join(orjson.dumps({"_id": d}) + b"\n" for d in old))
    shard = {"name": SHARD, "records": LINES, "embed": LINES, "deletes_key": deletes_key}
    info = {"index": index, "dimension": DIM}
    yield plan, s3, hook, shard, info, expect, len(old)
    hook.delete_index(index)


def _dlq(s3, plan) -> list[dict]:
    keys = s3io.list_keys(s3, plan.bucket, plan.key("dlq", SHARD) + ".")
    return [orjson.loads(line) for key in keys
            for line in iter_lines(s3io.iter_object_chunks(s3, plan.bucket, key))]


def _check_final(plan, s3, hook, shard, info, expect, n_old, result):
    report = ShardReport.from_dict(result)
    assert report.balanced, result
    assert result["failed"] == {"output_dimension_mismatch": expect["conversion"],
                                "mapper_parsing_exception": expect["refused"]}
    assert result["created"] + result["updated"] == LINES - expect["conversion"] - expect["refused"]
    assert result["duplicates"] == expect["duplicates"]  # across the resume point too
    assert (result["deleted"], result["delete_failed"]) == (n_old, 0)
    dlq = _dlq(s3, plan)
    assert len(dlq) == len({d["_id"] for d in dlq}) == expect["conversion"] + expect["refused"]
    hook.refresh(info["index"])
    distinct = LINES - expect["conversion"] - expect["refused"] - expect["duplicates"]
    assert hook.count(info["index"]) == distinct  # the old ones deleted, each doc once
    assert s3io.get_json(s3, plan.bucket, plan.key("reports", SHARD + ".json")) == result
    assert not s3io.list_keys(s3, plan.bucket, plan.key("checkpoints"))  # cleared once saved


def test_a_shard_stopped_after_its_first_checkpoint_resumes_there(shard_setup, caplog):
    plan, s3, hook, shard, info, expect, n_old = shard_setup
    spy = S3Spy(s3)
    first = BulkSpy(hook, stop_when=lambda body: spy.checkpoints >= 1)
    with pytest.raises(Killed):
        load.index_shard(plan, shard, first, spy, info)
    saved = s3io.get_json(s3, plan.bucket, plan.key("checkpoints", "index", SHARD + ".json"))
    at = saved["output"]
    assert INTERVAL <= at["line"] < LINES and not at["done"] and saved["saves"] == 1
    assert s3io.list_keys(s3, plan.bucket, plan.key("dlq", SHARD))  # a part before the stop

    # What a try killed between a DLQ part and its checkpoint leaves: the retry drops it.
    s3.put_object(Bucket=plan.bucket, Key=plan.key("dlq", SHARD + ".part-0001.jsonl"),
                  Body=b'{"_id": "orphan", "reason": "x"}\n')
    caplog.set_level(logging.INFO, logger="batchvec.index.load")
    spy2, again = S3Spy(s3), BulkSpy(hook)
    result = load.index_shard(plan, shard, again, spy2, info)
    assert f"resuming shard {SHARD} at line {at['line']} of {LINES}" in caplog.text
    out_key = plan.key("output", SHARD + ".out")
    assert (out_key, f"bytes={at['offset']}-") in spy2.ranges  # a ranged GET, not from 0
    actions = LINES - expect["conversion"]
    resent = first.index_items + again.index_items - actions
    print(f"checkpoint at line {at['line']}: re-sent {resent} index items "
          f"(interval {INTERVAL}, {again.index_items} sent by the retry)")
    assert 0 <= resent <= INTERVAL
    assert again.delete_items == n_old and first.delete_items == 0
    _check_final(plan, s3, hook, shard, info, expect, n_old, result)


def test_a_shard_stopped_in_its_deletes_sends_none_of_its_output_again(shard_setup):
    plan, s3, hook, shard, info, expect, n_old = shard_setup
    first = BulkSpy(hook, stop_when=lambda body: body.startswith(b'{"delete"'))
    with pytest.raises(Killed):
        load.index_shard(plan, shard, first, s3, info)
    assert first.index_items == LINES - expect["conversion"]
    again = BulkSpy(hook)
    result = load.index_shard(plan, shard, again, s3, info)
    assert (again.index_items, again.delete_items) == (0, n_old)
    _check_final(plan, s3, hook, shard, info, expect, n_old, result)
