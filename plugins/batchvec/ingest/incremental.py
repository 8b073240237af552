"""Staging's second pass, one task per shard: its pieces in input order, compared with the
index, into the model's input.

Pass one (``staging_groups``: one task per group of input files) writes every valid record,
stamped (``changes``), to its shard's piece of a segment. This pass reads a shard's pieces
in order and writes to ``input/part-<S>.jsonl`` (the transform job's input) the new and
changed records, comparing with the index's state of the shard (one scroll over its crc
range); unchanged and superseded ones are counted. A full sync also lists the documents of
its source the input no longer has (``deletes/``); the run refuses before anything is deleted
when they exceed ``max_delete_ratio`` of the index (``check_delete_ratio``).

When the index has nothing to compare with (a new physical index, or ``reembed: all``
without a full sync), the pieces are only joined: one piece is copied inside S3.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import orjson

from batchvec.hooks import s3io
from batchvec.hooks.opensearch import OpenSearchDomainHook
from batchvec.ingest import changes
from batchvec.ingest.staging import shard_name
from batchvec.plan.run_plan import Plan
from batchvec.util.lines import iter_lines

log = logging.getLogger(__name__)

class DeleteRefused(ValueError):
    """A full sync would delete more of the index than max_delete_ratio allows."""


def needs_diff(plan: Plan, index_docs: int) -> bool:
    """Whether staging must compare with the index (else pass one writes input/ directly)."""
    return index_docs > 0 and (plan.reembed == "changed" or plan.sync_mode == "full")


def carried_records(plan: Plan, hook: OpenSearchDomainHook, previous: str) -> Iterator[tuple]:
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


def stage_shard(plan: Plan, hook: OpenSearchDomainHook, s3, index: str, number: int,
                pieces: list[dict], diffing: bool) -> dict:
    """Pass two for shard ``number``: returns its manifest row (records, embed, unchanged,
    superseded, deletes and their keys)."""
    name = shard_name(number)
    records = sum(p["records"] for p in pieces)
    full = diffing and plan.sync_mode == "full"
    # A shard the input left empty needs no state: all its own documents go (full sync).
    state = changes.load_state(hook.scan(
        index, changes.range_query(number, plan.shards),
        includes=[f"{changes.FIELD}.fp", f"{changes.FIELD}.v"])) if diffing and records else None
    key = plan.key("input", name)
    entry = {"name": name, "records": records, "pieces": len(pieces)}
    if not records:
        result = changes.ShardDiff(seen=None)
        s3.delete_object(Bucket=plan.bucket, Key=key)  # an earlier try's, now stale
    elif not diffing and len(pieces) == 1:  # nothing to compare or join: copy
        s3.copy_object(Bucket=plan.bucket, Key=key,
                       CopySource={"Bucket": plan.bucket, "Key": pieces[0]["key"]})
        result = changes.ShardDiff(records=records, embed=records)
        entry.update(key=key, bytes=pieces[0]["bytes"])
    else:
        writer = s3io.S3LineWriter(s3, plan.bucket, key)
        try:
            lines = (line for p in pieces for line in iter_lines(
                s3io.iter_object_chunks(s3, plan.bucket, p["key"])))
            if diffing:
                result = changes.diff_lines(lines, state, writer.write,
                                            everything=plan.reembed == "all")
            else:
                result = changes.ShardDiff(seen=None)
                for line in lines:
                    writer.write(line + b"\n")
                    result.embed += 1
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
                 superseded=result.superseded, deletes=0)
    if diffing:  # ids are only told apart against the index's state (verify.check_build)
        entry["distinct"] = result.distinct
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
    log.info("shard %s: %d records from %d pieces, %d to embed, %d unchanged, %d superseded%s",
             name, records, len(pieces), entry["embed"], entry["unchanged"],
             entry["superseded"], f", {entry['deletes']} to delete" if full else "")
    return entry


def check_delete_ratio(plan: Plan, shards: list[dict], index: str, index_docs: int) -> None:
    """A full sync needs every shard's deletes for the ratio: checked before any is sent."""
    deletes = sum(s.get("deletes", 0) for s in shards)
    if plan.sync_mode == "full" and index_docs and deletes / index_docs > plan.max_delete_ratio:
        raise DeleteRefused(
            f"the full sync would delete {deletes:,} of the {index_docs:,} documents "
            f"in {index} ({deletes / index_docs:.1%}), over max_delete_ratio "
            f"{plan.max_delete_ratio}: nothing was deleted. If the input really is the "
            "whole source now, rerun with a higher max_delete_ratio")


def totals(manifest: dict) -> dict:
    shards = manifest["shards"]
    for name in ("embed", "unchanged", "superseded", "deletes"):
        manifest[f"{name}_total"] = sum(s.get(name, 0) for s in shards)
    return manifest
