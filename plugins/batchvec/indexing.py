"""Index lifecycle (create, bulk-load settings, restore) and indexing one shard's output.

Everything a retry needs is in S3 under the run prefix, not in XCom: the index's original
settings, and each shard's result.
"""

from __future__ import annotations

import logging
import os
import time

import orjson

from batchvec import bulk_load, memory, outputs, s3io
from batchvec.bulk import DEFAULT_MAX_ACTIONS, BulkWriter
from batchvec.duplicates import SPILL_EVERY, DuplicateCounter
from batchvec.opensearch_hook import OpenSearchHook
from batchvec.plan import Plan

log = logging.getLogger(__name__)

# The low end of the recommended 5-15 MiB (~1,000 actions at 384-d): the writer holds up to
# lanes x 3 requests, so 4 lanes stay near 60 MB and the task well under 256 MB.
BULK_MAX_BYTES = 5 << 20


class ShardFailed(Exception):
    pass


def bulk_max_actions() -> int:
    """Documents per bulk request at most (`BATCHVEC_BULK_MAX_ACTIONS`; requests are also
    capped at BULK_MAX_BYTES). Small values make many requests per shard, as `make chaos` uses."""
    value = int(os.environ.get("BATCHVEC_BULK_MAX_ACTIONS", DEFAULT_MAX_ACTIONS))
    if value < 1:
        raise ValueError(f"BATCHVEC_BULK_MAX_ACTIONS must be >= 1, got {value}")
    return value


def index_body(dimension: int, vector_field: str, space_type: str, engine: str = "faiss",
               text_field: str = "text") -> dict:
    """A k-NN index for the model's vectors: HNSW on `engine`, text searchable too."""
    return {
        "settings": {"index": {"knn": True, "number_of_shards": 1}},
        "mappings": {"properties": {
            vector_field: {"type": "knn_vector", "dimension": dimension,
                           "method": {"name": "hnsw", "engine": engine, "space_type": space_type}},
            text_field: {"type": "text"},
        }},
    }


def existing_dimension(mapping: dict, vector_field: str) -> int | None:
    field = mapping.get("properties", {}).get(vector_field)
    if field is None:
        return None
    if field.get("type") != "knn_vector":
        raise ValueError(f"field {vector_field!r} exists but is {field.get('type')!r}, not knn_vector")
    return int(field["dimension"])


def first_output_line(s3, bucket: str, key: str) -> bytes:
    for line in outputs.iter_lines(s3io.iter_object_chunks(s3, bucket, key, chunk_size=256 * 1024)):
        return line
    raise ShardFailed(f"output s3://{bucket}/{key} is empty")


def prepare_index(plan: Plan, hook: OpenSearchHook, dimension: int) -> dict:
    """Create the index if missing (or check its dimension) and count this run into the
    index's bulk load (bulk_load.enter: the originals are those from before the first run
    that is loading it now, whatever the retries and overlapping runs)."""
    index = plan.index_name
    created = False
    if not hook.index_exists(index):
        try:
            hook.create_index(index, index_body(dimension, plan.vector_field, plan.space_type,
                                                plan.knn_engine))
            created = True
            log.info("created index %s (knn_vector %d-d, %s, %s)", index, dimension,
                     plan.space_type, plan.knn_engine)
        except Exception as exc:
            if "resource_already_exists" not in str(exc):  # a parallel run made it first
                raise
    have = existing_dimension(hook.get_mapping(index), plan.vector_field)
    if have is not None and have != dimension:
        raise ValueError(f"index {index} has {plan.vector_field} of dimension {have}, "
                         f"but the model produces {dimension}: use another index_name")
    original = bulk_load.enter(hook, index, plan.run_key)
    return {"index": index, "created": created, "dimension": dimension, "original": original}


def restore_index(plan: Plan, hook: OpenSearchHook) -> dict | None:
    """This run's part of the bulk load is over; the last run loading the index restores
    its settings (see bulk_load). Returns them when restored now."""
    if not hook.index_exists(plan.index_name):
        log.info("index %s does not exist: the load never started", plan.index_name)
        return None
    return bulk_load.leave(hook, plan.index_name, plan.run_key)


class _DlqWriter:
    """Final per-item failures, with the server's reason, as JSON lines in S3."""

    def __init__(self, s3, bucket: str, key: str):
        self._writer = s3io.S3LineWriter(s3, bucket, key)
        self.count = 0

    def __call__(self, doc_id: str, action: bytes, reason: str) -> None:
        source = action.split(b"\n", 2)[1] if action.count(b"\n") >= 2 else action
        self._writer.write(orjson.dumps({"_id": doc_id, "reason": reason,
                                         "source_excerpt": source[:1024].decode(errors="replace")})
                           + b"\n")
        self.count += 1

    def close(self) -> None:
        if self.count:
            self._writer.close()
        else:
            self._writer.abort()


def index_shard(plan: Plan, shard: dict, hook: OpenSearchHook, s3, dimension: int) -> dict:
    """Stream one shard's `.out` into the index. Returns the shard's accounting, also saved
    to S3 so the report finds it even if this task's XCom is gone."""
    name, expected = shard["name"], shard["records"]
    out_key = plan.key("output", name + ".out")
    if not shard.get("output_present", True):
        raise ShardFailed(f"shard {name}: output s3://{plan.bucket}/{out_key} is missing "
                          f"({expected} records not indexed)")
    memory.fix_mmap_threshold()  # 5 MB bulk bodies must not grow the heap
    started = time.monotonic()
    builder = outputs.ActionBuilder(plan.index_name, plan.vector_field, dimension)
    dlq = _DlqWriter(s3, plan.bucket, plan.key("dlq", name + ".jsonl"))
    lines = 0
    conversion_failed: dict[str, int] = {}
    sample_id: list[str] = []
    ids = DuplicateCounter()  # exact, in bounded memory: see duplicates.py
    remember = ids.remember

    def actions():
        nonlocal lines
        for line in outputs.iter_lines(s3io.iter_object_chunks(s3, plan.bucket, out_key)):
            lines += 1
            try:
                doc_id, action = builder(line)
            except outputs.OutputRejected as rej:
                conversion_failed[rej.reason] = conversion_failed.get(rej.reason, 0) + 1
                dlq(rej.doc_id or f"line-{lines}", line, f"{rej.reason}: {rej}")
                continue
            if not sample_id:
                sample_id.append(doc_id)
            remember(hash(doc_id))
            if not lines % SPILL_EVERY:
                ids.maybe_spill()
            yield doc_id, action

    def refused(doc_id: str, action: bytes, reason: str) -> None:
        ids.refuse(doc_id)
        dlq(doc_id, action, reason)

    def progress(p: dict) -> None:
        rate = p.get("sent", 0) / max(time.monotonic() - started, 1e-6)
        eta = (expected - p.get("sent", 0)) / rate if rate else float("inf")
        log.info("shard %s: %d/%d docs sent (%.0f docs/s, %.1f MB, ETA %.0fs)", name,
                 p.get("sent", 0), expected, rate, p.get("bytes", 0) / 1e6, eta)

    writer = BulkWriter(hook.bulk, concurrency=plan.bulk_concurrency, max_bytes=BULK_MAX_BYTES,
                        max_actions=bulk_max_actions(), on_failed=refused, progress=progress)
    try:
        counts = writer.write(actions())
    finally:
        dlq.close()
    failed = dict(counts.failed_reasons)
    for reason, n in conversion_failed.items():
        failed[f"output_{reason}"] = failed.get(f"output_{reason}", 0) + n
    if lines < expected:  # SageMaker wrote fewer lines than it was given
        failed["missing_output_line"] = expected - lines
    duplicates = ids.count()
    result = {
        "shard": name, "records_in": expected, "created": counts.created,
        "updated": counts.updated, "duplicates": duplicates, "rejected": {}, "failed": failed,
        "output_lines": lines, "sample_id": sample_id[0] if sample_id else None,
        "seconds": round(time.monotonic() - started, 2), "bulk_requests": counts.requests,
        "retries": counts.retries,
    }
    s3io.put_json(s3, plan.bucket, plan.key("reports", name + ".json"), result)
    log.info("shard %s: %d created, %d updated (%d duplicate ids superseded), %d failed in %.1fs",
             name, counts.created, counts.updated, duplicates, sum(failed.values()),
             result["seconds"])
    return result
