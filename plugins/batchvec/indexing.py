"""Index lifecycle (create, bulk-load settings, restore) and indexing one shard's output.

Everything a retry needs is in S3 under the run prefix, not in XCom: the index's original
settings, and each shard's result.
"""

from __future__ import annotations

import logging
import os
import time

import orjson

from batchvec import bulk_load, changes, memory, outputs, s3io
from batchvec.bulk import DEFAULT_MAX_ACTIONS, BulkCounts, BulkWriter
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
    """A k-NN index for the model's vectors: HNSW on `engine`, text searchable too, and the
    fingerprint block incremental runs compare with (changes.py)."""
    return {
        "settings": {"index": {"knn": True, "number_of_shards": 1}},
        "mappings": {"properties": {
            vector_field: {"type": "knn_vector", "dimension": dimension,
                           "method": {"name": "hnsw", "engine": engine, "space_type": space_type}},
            text_field: {"type": "text"},
            changes.FIELD: changes.MAPPING,
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


def prepare_index(plan: Plan, hook: OpenSearchHook, dimension: int, target) -> dict:
    """Create the run's physical index if missing (or check its dimension). Only an index no
    alias serves yet (a build) gets bulk-load settings, counted in with bulk_load.enter (the
    originals are those from before the first run loading it); one that may be serving
    queries keeps its replicas and refresh interval."""
    index = target.physical
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
    mapping = hook.get_mapping(index)
    have = existing_dimension(mapping, plan.vector_field)
    if have is not None and have != dimension:
        raise ValueError(f"index {index} has {plan.vector_field} of dimension {have}, "
                         f"but the model produces {dimension}: use another index_name"
                         + (" (or migrate it to an alias: README)" if target.mode == "legacy"
                            else ""))
    if changes.FIELD not in mapping.get("properties", {}):  # an index from before fingerprints
        hook.put_mapping(index, {"properties": {changes.FIELD: changes.MAPPING}})
    original = None if target.serving else bulk_load.enter(hook, index, plan.run_key)
    return {"index": index, "alias": plan.index_name, "created": created,
            "dimension": dimension, "original": original, "bulk_load": not target.serving}


def restore_index(manifest: dict, hook: OpenSearchHook, plan: Plan) -> dict | None:
    """This run's part of a build's bulk load is over; the last run loading the index
    restores its settings (see bulk_load). Returns them when restored now."""
    from batchvec.index_alias import Target

    target = Target.from_dict(manifest["target"])
    if not hook.index_exists(target.physical):
        log.info("index %s does not exist: the load never started", target.physical)
        return None
    if target.serving:  # its refresh interval may be long: make this run's writes searchable
        hook.refresh(target.physical)
        log.info("%s may be serving queries: its settings were never changed; refreshed",
                 target.physical)
        return None
    return bulk_load.leave(hook, target.physical, plan.run_key)


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


def index_shard(plan: Plan, shard: dict, hook: OpenSearchHook, s3, index: dict) -> dict:
    """Stream one shard's `.out` into the index, then its deletes (a full sync). Returns the
    shard's accounting, also saved to S3 so the report finds it even if XCom is gone."""
    name, expected = shard["name"], shard.get("embed", shard["records"])
    out_key = plan.key("output", name + ".out")
    if expected and not shard.get("output_present", True):
        raise ShardFailed(f"shard {name}: output s3://{plan.bucket}/{out_key} is missing "
                          f"({expected} records not indexed)")
    memory.fix_mmap_threshold()  # 5 MB bulk bodies must not grow the heap
    started = time.monotonic()
    physical = index["index"]
    dlq = _DlqWriter(s3, plan.bucket, plan.key("dlq", name + ".jsonl"))
    try:
        counts, lines, conversion_failed, duplicates, sample = (
            _index_output(plan, hook, s3, physical, index["dimension"], name, expected, out_key,
                          dlq, started) if expected else (BulkCounts(), 0, {}, 0, None))
        deletes = _delete_absent(plan, hook, s3, physical, shard, dlq)
    finally:
        dlq.close()
    failed = dict(counts.failed_reasons)
    for reason, n in conversion_failed.items():
        failed[f"output_{reason}"] = failed.get(f"output_{reason}", 0) + n
    if lines < expected:  # SageMaker wrote fewer lines than it was given
        failed["missing_output_line"] = expected - lines
    result = {
        "shard": name, "records_in": shard["records"], "created": counts.created,
        "updated": counts.updated, "unchanged": shard.get("unchanged", 0),
        "superseded": shard.get("superseded", 0) + counts.stale, "duplicates": duplicates,
        "rejected": {}, "failed": failed, "output_lines": lines, "sample_id": sample,
        "seconds": round(time.monotonic() - started, 2), "bulk_requests": counts.requests,
        "retries": counts.retries, **deletes,
    }
    s3io.put_json(s3, plan.bucket, plan.key("reports", name + ".json"), result)
    log.info("shard %s: %d created, %d updated, %d unchanged, %d superseded (%d duplicate ids "
             "in the run), %d failed, %d deleted in %.1fs", name, counts.created, counts.updated,
             result["unchanged"], result["superseded"], duplicates, sum(failed.values()),
             deletes["deleted"], result["seconds"])
    return result


def _index_output(plan: Plan, hook: OpenSearchHook, s3, physical: str, dimension: int,
                  name: str, expected: int, out_key: str, dlq: _DlqWriter, started: float):
    builder = outputs.ActionBuilder(physical, plan.vector_field, dimension)
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

    # A stale write (a newer version stands) indexed nothing: not a copy for the duplicates.
    writer = BulkWriter(hook.bulk, concurrency=plan.bulk_concurrency, max_bytes=BULK_MAX_BYTES,
                        max_actions=bulk_max_actions(), on_failed=refused, on_stale=ids.refuse,
                        progress=progress)
    counts = writer.write(actions())
    return counts, lines, conversion_failed, ids.count(), sample_id[0] if sample_id else None


def _delete_absent(plan: Plan, hook: OpenSearchHook, s3, physical: str, shard: dict,
                   dlq: _DlqWriter) -> dict:
    """A full sync's deletes for this shard, versioned like writes: a document a newer run
    wrote is not deleted by an older snapshot (counted in delete_superseded)."""
    key = shard.get("deletes_key")
    if not key:
        return {"deleted": 0, "delete_superseded": 0, "delete_failed": 0}
    head = b'{"delete":{"_index":' + orjson.dumps(physical) + b',"_id":'
    tail = b',"version":%d,"version_type":"external_gte"}}\n' % plan.version

    def actions():
        for line in outputs.iter_lines(s3io.iter_object_chunks(s3, plan.bucket, key)):
            doc_id = orjson.loads(line)["_id"]
            yield doc_id, head + orjson.dumps(doc_id) + tail

    writer = BulkWriter(hook.bulk, concurrency=plan.bulk_concurrency, max_bytes=BULK_MAX_BYTES,
                        max_actions=bulk_max_actions(), on_failed=dlq)
    counts = writer.write(actions())
    return {"deleted": counts.created + counts.updated, "delete_superseded": counts.stale,
            "delete_failed": counts.failed, "deletes_key": key}
