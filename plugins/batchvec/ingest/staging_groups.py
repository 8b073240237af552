"""Staging in parallel: the input's files in groups, one mapped task per group.

Pass one (``stage_group``) reads a group's files in listing order and writes each record to
its shard's piece of a *segment*: ``staged/g<G>/s<N>/input/part-<S>.jsonl``. A segment ends
at the first file boundary past ``staging_commit_mb`` of input and is committed by its
``commit.json`` (written last), so a retried group skips the segments it committed and
redoes at most one. Segment bounds come from the listing's sizes alone, so every try cuts the
same segments. Pass two (``incremental.stage_shard``, mapped over shards) reads a shard's
pieces in (group, segment) order, which is input order: "the last line of an id wins" holds
across groups, and the model's input is one object per shard again.

The listing (``groups.json``) is written once per run and reused by every retry, so a file
that appears in the input prefix mid-run does not move the groups.
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from typing import Any

from batchvec.hooks import s3io
from batchvec.plan.naming import join_key

log = logging.getLogger(__name__)

MAX_STAGING_TASKS = 1024
MB = 1_000_000
STAGED = "staged"
LISTING = "groups.json"
GROUP_MANIFEST = "group.json"
COMMIT = "commit.json"


def group_files(sizes: list[int], target_bytes: int, max_groups: int) -> list[tuple[int, int]]:
    """``[start, end)`` file ranges, in listing order, of about ``target_bytes`` each (a file
    is never split), at most ``max_groups`` of them: past it the target grows."""
    if not sizes:
        return []
    target = max(1, target_bytes, -(-sum(sizes) // max(1, max_groups)))
    while True:
        groups, start, acc = [], 0, 0
        for i, size in enumerate(sizes):
            acc += size
            if acc >= target:
                groups.append((start, i + 1))
                start, acc = i + 1, 0
        if start < len(sizes):
            groups.append((start, len(sizes)))
        if len(groups) <= max_groups:
            return groups
        target = int(target * 1.25) + 1  # uneven sizes: a few files more per group


def segments(sizes: list[int], start: int, end: int, commit_bytes: int) -> list[tuple[int, int]]:
    """A group's commit units: files ``[a, b)`` ending at the first boundary past
    ``commit_bytes`` (0: every file its own)."""
    out, a, acc = [], start, 0
    for i in range(start, end):
        acc += sizes[i]
        if acc >= commit_bytes:
            out.append((a, i + 1))
            a, acc = i + 1, 0
    if a < end:
        out.append((a, end))
    return out


def listing_doc(files: list[Any], target_bytes: int, max_groups: int,
                commit_bytes: int) -> dict:
    """What ``groups.json`` holds: the files (``sources.SourceFile``) and their groups."""
    sizes = [f.size for f in files]
    groups = group_files(sizes, target_bytes, max_groups)
    return {"files": [asdict(f) for f in files], "bytes": sum(sizes),
            "groups": [{"group": g, "start": a, "end": b, "bytes": sum(sizes[a:b]),
                        "segments": segments(sizes, a, b, commit_bytes)}
                       for g, (a, b) in enumerate(groups)]}


def group_prefix(run_prefix: str, group: int) -> str:
    return join_key(run_prefix, STAGED, f"g{group:05d}")


def segment_prefix(run_prefix: str, group: int, segment: int) -> str:
    return join_key(group_prefix(run_prefix, group), f"s{segment:05d}")


def rejected_key(run_prefix: str, group: int, segment: int) -> str:
    """Outside ``staged/``: cleanup removes that, the rejects stay with the report."""
    return join_key(run_prefix, "rejected", f"g{group:05d}-s{segment:05d}.jsonl")


def listing_key(run_prefix: str) -> str:
    return join_key(run_prefix, STAGED, LISTING)


def group_manifest_key(run_prefix: str, group: int) -> str:
    return join_key(group_prefix(run_prefix, group), GROUP_MANIFEST)


def read_listing(s3, bucket: str, run_prefix: str) -> dict | None:
    try:
        return s3io.get_json(s3, bucket, listing_key(run_prefix))
    except s3.exceptions.NoSuchKey:
        return None


def group_summary(group: int, commits: list[dict]) -> dict:
    """A group's manifest from its segments' commits (``staging.Manifest`` dicts): per shard
    the pieces in segment order, the sources in listing order, rejects and their files."""
    pieces: dict[str, list[dict]] = {}
    rejected: dict[str, int] = {}
    examples: dict[str, str] = {}
    for commit in commits:
        for row in commit["shards"]:
            pieces.setdefault(row["name"], []).append(
                {"key": row["key"], "records": row["records"], "bytes": row["bytes"]})
        for reason, n in commit["rejected"].items():
            rejected[reason] = rejected.get(reason, 0) + n
        for reason, detail in commit.get("rejected_examples", {}).items():
            examples.setdefault(reason, detail)
    return {
        "group": group,
        "records_in": sum(c["records_in"] for c in commits),
        "accepted": sum(c["accepted"] for c in commits),
        "rejected": dict(sorted(rejected.items())),
        "rejected_examples": dict(sorted(examples.items())),
        "rejected_keys": [c["rejected_key"] for c in commits if c.get("rejected_key")],
        "sources": [row for c in commits for row in c["sources"]],
        "bytes_in": sum(c["bytes_in"] for c in commits),
        "pieces": pieces,
        "segments": len(commits),
    }


def pieces_key(run_prefix: str, group: int, shard: str) -> str:
    """The group's pieces of one shard, in segment order (read by that shard's pass two)."""
    return join_key(group_prefix(run_prefix, group), "pieces", shard + ".json")


def shard_result_key(run_prefix: str, shard: str) -> str:
    return join_key(run_prefix, STAGED, "shards", shard + ".json")


def run_manifest(plan: Any, listing: dict, summaries: list[dict], shards: list[dict]) -> dict:
    """The run's manifest (what ``staging.Manifest`` holds for one pass, over every group)."""
    summaries = sorted(summaries, key=lambda g: g["group"])
    rejected: dict[str, int] = {}
    examples: dict[str, str] = {}
    for g in summaries:
        for reason, n in g["rejected"].items():
            rejected[reason] = rejected.get(reason, 0) + n
        for reason, detail in g["rejected_examples"].items():
            examples.setdefault(reason, detail)
    rows = [row for g in summaries for row in g["sources"]]
    keys = [k for g in summaries for k in g["rejected_keys"]]
    spec = plan.record_spec
    return {
        "bucket": plan.bucket, "prefix": plan.run_prefix,
        "records_in": sum(g["records_in"] for g in summaries),
        "accepted": sum(g["accepted"] for g in summaries),
        "rejected": dict(sorted(rejected.items())), "shards": shards, "sources": rows,
        "bytes_in": sum(g["bytes_in"] for g in summaries),
        "input_prefix": join_key(plan.run_prefix, "input") + "/",
        "rejected_key": keys[0] if keys else None, "rejected_keys": keys,
        "spec": {"id_field": spec.id_field, "text_field": spec.text_field,
                 "metadata_fields": list(spec.metadata_fields),
                 "max_text_bytes": spec.max_text_bytes, "shards": plan.shards},
        "rejected_examples": dict(sorted(examples.items())),
        "carried": sum(r["records"] for r in rows if r["name"].startswith("opensearch:")),
        "groups": len(summaries), "segments": sum(g["segments"] for g in summaries),
        "input_files": len(listing["files"]),
    }
