"""Staging's second pass: compare each staged shard with the index, keep only what changed.

Pass one (``staging.stage``) writes every valid record, stamped (``changes``), to
``staged/``. This pass reads the index's state of each shard (one scroll over its crc range)
and writes to ``input/`` (the transform job's input) only the new and changed records;
unchanged and superseded ones are counted. A full sync also lists, per shard, the documents
of its source the input no longer has (``deletes/``), and refuses before anything is
deleted when they exceed ``max_delete_ratio`` of the index.

When the index has nothing to compare with (a new physical index, or ``reembed: all``
without a full sync), pass one writes to ``input/`` directly and this pass only fills in the
counts, so a first run pays nothing extra.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

import orjson

from batchvec import changes, outputs, s3io
from batchvec.opensearch_hook import OpenSearchHook
from batchvec.plan import Plan
from batchvec.staging import shard_name

log = logging.getLogger(__name__)

STAGED = "staged"  # pass one's output when a diff follows
STAGED_MANIFEST = "staged-manifest.json"


class DeleteRefused(ValueError):
    """A full sync would delete more of the index than max_delete_ratio allows."""


def needs_diff(plan: Plan, index_docs: int) -> bool:
    """Whether staging must compare with the index (else pass one writes input/ directly)."""
    return index_docs > 0 and (plan.reembed == "changed" or plan.sync_mode == "full")


def carried_records(plan: Plan, hook: OpenSearchHook, previous: str) -> Iterator[tuple]:
    """The documents of the index a model switch replaces, as records for pass one, so the
    new index holds everything the alias served (the input wins where it has the id: it is
    staged after them, and versions order the rest). Each keeps its version and source."""
    fields = ["text", changes.FIELD, *plan.metadata_fields]
    for n, hit in enumerate(hook.scan(previous, {"match_all": {}}, includes=fields), 1):
        src = hit.get("_source") or {}
        record = {m: src[m] for m in plan.metadata_fields if m in src}
        record[plan.id_field] = hit["_id"]
        record[plan.text_field] = src.get("text")
        block = src.get(changes.FIELD) or {}
        # A document without a version (written before fingerprints) gets the lowest one.
        record[changes.FIELD] = {"v": max(1, int(block.get("v", 1))),
                                 "src": block.get("src") or f"index:{previous}"}
        yield f"opensearch:{previous}", n, record


def fill_without_diff(manifest: dict) -> dict:
    """Counts for a manifest whose shards all go to the model (no index to compare with)."""
    for shard in manifest["shards"]:
        shard.update(embed=shard["records"], unchanged=0, superseded=0, deletes=0)
    return _totals(manifest)


def diff(plan: Plan, manifest: dict, hook: OpenSearchHook, s3, index: str,
         index_docs: int) -> dict:
    """Pass two over every staged shard (``index_docs``: the index's count, for the delete
    ratio); returns the final manifest (not yet written)."""
    started = time.monotonic()
    full = plan.sync_mode == "full"
    numbers = {shard_name(i): i for i in range(plan.shards)}
    shards = []
    deletes_total = 0
    for shard in manifest["shards"]:
        entry = _diff_shard(plan, hook, s3, index, shard, numbers[shard["name"]], full)
        deletes_total += entry["deletes"]
        shards.append(entry)
        log.info("shard %s: %d records, %d to embed, %d unchanged, %d superseded%s",
                 shard["name"], entry["records"], entry["embed"], entry["unchanged"],
                 entry["superseded"], f", {entry['deletes']} to delete" if full else "")
    # A full sync needs every shard's deletes for the ratio; the input itself may be empty.
    if full:
        staged = {s["name"] for s in shards}
        for name, number in numbers.items():
            if name not in staged:
                entry = _diff_shard(plan, hook, s3, index, {"name": name, "records": 0},
                                    number, full)
                if entry["deletes"]:
                    deletes_total += entry["deletes"]
                    shards.append(entry)
        shards.sort(key=lambda s: s["name"])
        if index_docs and deletes_total / index_docs > plan.max_delete_ratio:
            raise DeleteRefused(
                f"the full sync would delete {deletes_total:,} of the {index_docs:,} documents "
                f"in {index} ({deletes_total / index_docs:.1%}), over max_delete_ratio "
                f"{plan.max_delete_ratio}: nothing was deleted. If the input really is the "
                "whole source now, rerun with a higher max_delete_ratio")
    manifest = {**manifest, "shards": shards, "diff_seconds": round(time.monotonic() - started, 2)}
    return _totals(manifest)


def _diff_shard(plan: Plan, hook, s3, index: str, shard: dict, number: int, full: bool) -> dict:
    # A shard the input left empty needs no state: all its own documents go (full sync).
    state = changes.load_state(hook.scan(
        index, changes.range_query(number, plan.shards),
        includes=[f"{changes.FIELD}.fp", f"{changes.FIELD}.v"])) if shard["records"] else None
    name = shard["name"]
    key = plan.key("input", name)
    writer = s3io.S3LineWriter(s3, plan.bucket, key)
    entry = {"name": name, "records": shard["records"]}
    try:
        if shard["records"]:
            staged = plan.key(STAGED, name)
            lines = outputs.iter_lines(s3io.iter_object_chunks(s3, plan.bucket, staged))
            result = changes.diff_lines(lines, state, writer.write,
                                        everything=plan.reembed == "all")
        else:
            result = changes.ShardDiff(seen=None)
    except BaseException:
        writer.abort()
        raise
    if result.embed:
        writer.close()
        entry.update(key=key, bytes=writer.bytes_written)
    else:
        writer.abort()
        s3.delete_object(Bucket=plan.bucket, Key=key)  # an earlier try's, now stale
    entry.update(embed=result.embed, unchanged=result.unchanged,
                 superseded=result.superseded, distinct=result.distinct, deletes=0)
    deletes_key = plan.key("deletes", name)
    if full:  # this source's documents the shard no longer has (all of them if it is empty)
        own = hook.scan(index, changes.range_query(number, plan.shards, plan.source_id),
                        includes=[])
        gone = (hit["_id"] for hit in own) if result.seen is None else \
            changes.absent_ids(own, state, result.seen)
        with s3io.S3LineWriter(s3, plan.bucket, deletes_key) as out:
            for doc_id in gone:
                out.write(orjson.dumps({"_id": doc_id}) + b"\n")
                entry["deletes"] += 1
        if entry["deletes"]:
            entry["deletes_key"] = deletes_key
    if not entry["deletes"]:
        s3.delete_object(Bucket=plan.bucket, Key=deletes_key)
    return entry


def _totals(manifest: dict) -> dict:
    shards = manifest["shards"]
    for name in ("embed", "unchanged", "superseded", "deletes"):
        manifest[f"{name}_total"] = sum(s.get(name, 0) for s in shards)
    return manifest
