"""Loading one shard's transform output into the index: streamed, converted, bulk-written
with a checkpoint to resume from, deletes of a full sync, and the shard's accounting.

What a retry needs is in S3 under the run prefix, not in XCom: each shard's checkpoint
and result.
"""

from __future__ import annotations

import logging
import time

import orjson

from batchvec import settings
from batchvec.errors import ShardFailed
from batchvec.hooks import s3io
from batchvec.hooks.opensearch import OpenSearchDomainHook
from batchvec.index import checkpoint
from batchvec.index.bulk_format import reason_key
from batchvec.index.bulk_writer import DEFAULT_MAX_ACTIONS, BulkWriter
from batchvec.outputs import convert
from batchvec.plan.run_plan import Plan
from batchvec.util import malloc
from batchvec.util.lines import iter_lines_at

log = logging.getLogger(__name__)

# The low end of the recommended 5-15 MiB (~1,000 actions at 384-d): the writer holds up to
# lanes x 3 requests, so 4 lanes stay near 60 MB and the task well under 256 MB.
BULK_MAX_BYTES = 5 << 20


def bulk_max_actions() -> int:
    """Documents per bulk request at most (`BATCHVEC_BULK_MAX_ACTIONS`; requests are also
    capped at BULK_MAX_BYTES). Small values make many requests per shard, as `make chaos` uses."""
    return settings.env_int("BATCHVEC_BULK_MAX_ACTIONS", DEFAULT_MAX_ACTIONS)


def index_shard(plan: Plan, shard: dict, hook: OpenSearchDomainHook, s3, index: dict) -> dict:
    """Stream one shard's `.out` into the index, then its deletes (a full sync). Returns the
    shard's accounting, also saved to S3 so the report finds it even if XCom is gone.

    Resumable: the point up to which every bulk request was acknowledged is checkpointed in
    S3 (batchvec.index.checkpoint) with the counts up to it, and a retry goes on from there."""
    name, expected = shard["name"], shard.get("embed", shard["records"])
    out_key = plan.key("output", name + ".out")
    if expected and not shard.get("output_present", True):
        raise ShardFailed(f"shard {name}: output s3://{plan.bucket}/{out_key} is missing "
                          f"({expected} records not indexed)")
    malloc.fix_mmap_threshold()  # 5 MB bulk bodies must not grow the heap
    started = time.monotonic()
    physical = index["index"]
    out = s3io.head(s3, plan.bucket, out_key) if expected else None
    deletes_key = shard.get("deletes_key")
    deletes = s3io.head(s3, plan.bucket, deletes_key) if deletes_key else None
    identity = {"index": physical, "version": plan.version,
                "output": out and [out["ETag"], out["ContentLength"]],
                "deletes": deletes and [deletes_key, deletes["ETag"]]}
    progress = checkpoint.ShardProgress.open(
        s3, plan.bucket, plan.key("checkpoints", "index", name + ".json"),
        plan.key("dlq", name), name, identity)
    cp = progress.cp
    if progress.resumed:
        log.info("resuming shard %s at line %d of %d (byte %d), %d already acknowledged; "
                 "deletes at line %d", name, cp.output.line, expected, cp.output.offset,
                 cp.output.acknowledged, cp.deletes.line)
    try:
        if expected:
            _index_output(plan, hook, s3, physical, index["dimension"], name, expected, out_key,
                          out["ContentLength"], progress, started)
        if deletes_key:
            _delete_absent(plan, hook, s3, physical, deletes_key, deletes["ContentLength"],
                           progress)
        progress.finish()
    except BaseException:
        progress.abort()
        raise
    o, d = cp.output, cp.deletes
    failed = dict(o.failed)
    if o.line < expected:  # SageMaker wrote fewer lines than it was given
        failed["missing_output_line"] = expected - o.line
    result = {
        "shard": name, "records_in": shard["records"], "created": o.created,
        "updated": o.updated, "unchanged": shard.get("unchanged", 0),
        "superseded": shard.get("superseded", 0) + o.stale, "duplicates": o.duplicates,
        "rejected": {}, "failed": failed, "output_lines": o.line, "sample_id": cp.sample_id,
        "seconds": round(time.monotonic() - started, 2),
        "bulk_requests": o.requests + d.requests, "retries": o.retries + d.retries,
        "deleted": d.created + d.updated, "delete_superseded": d.stale,
        "delete_failed": sum(d.failed.values()), "checkpoints": cp.saves,
        **({"deletes_key": deletes_key} if deletes_key else {}),
    }
    s3io.put_json(s3, plan.bucket, plan.key("reports", name + ".json"), result)
    progress.clear()
    log.info("shard %s: %d created, %d updated, %d unchanged, %d superseded (%d duplicate ids "
             "in the run), %d failed, %d deleted in %.1fs", name, o.created, o.updated,
             result["unchanged"], result["superseded"], o.duplicates, sum(failed.values()),
             result["deleted"], result["seconds"])
    return result


def _writer(plan: Plan, hook: OpenSearchDomainHook, **kwargs) -> BulkWriter:
    return BulkWriter(hook.bulk, concurrency=plan.bulk_concurrency, max_bytes=BULK_MAX_BYTES,
                      max_actions=bulk_max_actions(), **kwargs)


def _index_output(plan: Plan, hook: OpenSearchDomainHook, s3, physical: str, dimension: int,
                  name: str, expected: int, out_key: str, size: int,
                  progress: checkpoint.ShardProgress, started: float) -> None:
    state = progress.cp.output
    if state.done:
        return
    builder = convert.ActionBuilder(physical, plan.vector_field, dimension)
    prefix = progress.stream("output")
    lines = state.line
    start = state.offset
    first_sent = state.acknowledged  # by earlier tries

    def actions():
        nonlocal lines
        chunks = s3io.iter_object_chunks(s3, plan.bucket, out_key, start=start) \
            if start < size else ()
        for line, end in iter_lines_at(chunks, start):
            lines += 1
            try:
                doc_id, action = builder(line)
            except convert.OutputRejected as rej:
                prefix.line(end, ("failed", f"output_{rej.reason}", checkpoint.dlq_line(
                    rej.doc_id or f"line-{lines}", line, f"{rej.reason}: {rej}")))
                progress.maybe_save()
                continue
            if progress.cp.sample_id is None:
                progress.cp.sample_id = doc_id
            prefix.action(end)
            progress.maybe_save()
            yield doc_id, action

    dlq_line = checkpoint.dlq_line

    def on_done(finals: list) -> None:  # indexed ids: for the duplicates, across tries
        prefix.ack_many([
            (seq, outcome, doc_id) if outcome != "failed" else
            (seq, (outcome, reason_key(reason), dlq_line(doc_id, action, reason)), None)
            for seq, outcome, doc_id, action, reason in finals])

    def report(p: dict) -> None:
        sent = first_sent + p.get("sent", 0)
        rate = p.get("sent", 0) / max(time.monotonic() - started, 1e-6)
        eta = (expected - sent) / rate if rate else float("inf")
        log.info("shard %s: %d/%d docs sent (%.0f docs/s, %.1f MB, ETA %.0fs)", name,
                 sent, expected, rate, p.get("bytes", 0) / 1e6, eta)

    counts = _writer(plan, hook, on_done=on_done, progress=report).write(actions())
    with progress.lock:
        state.done, state.duplicates = True, progress.ids.count()
        state.requests += counts.requests
        state.retries += counts.retries
    if progress.cp.identity.get("deletes"):  # a kill in the deletes re-sends none of this
        progress.save()


def _delete_absent(plan: Plan, hook: OpenSearchDomainHook, s3, physical: str, key: str, size: int,
                   progress: checkpoint.ShardProgress) -> None:
    """A full sync's deletes for this shard, versioned like writes: a document a newer run
    wrote is not deleted by an older snapshot (counted in delete_superseded)."""
    state = progress.cp.deletes
    if state.done:
        return
    prefix = progress.stream("deletes")
    start = state.offset
    head = b'{"delete":{"_index":' + orjson.dumps(physical) + b',"_id":'
    tail = b',"version":%d,"version_type":"external_gte"}}\n' % plan.version

    def actions():
        chunks = s3io.iter_object_chunks(s3, plan.bucket, key, start=start) \
            if start < size else ()
        for line, end in iter_lines_at(chunks, start):
            doc_id = orjson.loads(line)["_id"]
            prefix.action(end)
            progress.maybe_save()
            yield doc_id, head + orjson.dumps(doc_id) + tail

    def on_done(finals: list) -> None:
        prefix.ack_many([
            (seq, outcome, None) if outcome != "failed" else
            (seq, (outcome, reason_key(reason), checkpoint.dlq_line(doc_id, action, reason)),
             None) for seq, outcome, doc_id, action, reason in finals])

    counts = _writer(plan, hook, on_done=on_done).write(actions())
    with progress.lock:
        state.done = True
        state.requests += counts.requests
        state.retries += counts.retries
