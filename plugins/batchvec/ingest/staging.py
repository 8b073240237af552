"""Stage 2: stream input records, validate them, write N JSONL shards + rejects + a manifest.

Layout under ``s3://<bucket>/<prefix>/``::

    input/part-00000.jsonl ...   accepted records, {"_id", "text", <metadata>} per line
    rejected/rejected.jsonl      {"source", "line", "reason", "detail", "raw"} per line
    manifest.json                counts; written last, so its presence means "staged"

A record's shard is its crc32's range (``changes.shard_of``): stable across processes and
retries, so every line with the same id lands in the same shard in input order and "last
wins" downstream, and one shard's documents are one range query on the index.
Duplicate ids are deliberately not detected here: remembering ids would make memory grow
with the input (billions of records); the bulk indexer's overwrite semantics resolve them.

Memory is bounded by ``shards x part_size`` (each shard buffers one multipart part).
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from typing import Any

import orjson

from batchvec.hooks.s3io import (
    DEFAULT_PART_SIZE,
    MIN_PART_SIZE,
    S3LineWriter,
    delete_keys,
    list_keys,
    put_json,
)
from batchvec.ingest.changes import FIELD
from batchvec.ingest.records import (
    DEFAULT_MAX_TEXT_BYTES,
    RecordSpec,
    Rejected,
    make_validator,
    parse_line,
)
from batchvec.plan.naming import join_key
from batchvec.util.malloc import fix_mmap_threshold

__all__ = ["MAX_SHARDS", "Manifest", "format_eta", "progress_line", "shard_name", "shard_of", "stage"]

MAX_SHARDS = 256  # memory is shards x part_size; 256 x 8 MiB is already 2 GiB
PROGRESS_EVERY_S = 5.0
_TICK = 8191  # look at the clock once every 8192 records


def shard_of(doc_id: str, shards: int) -> int:
    return (zlib.crc32(doc_id.encode()) * shards) >> 32  # the range changes.shard_of names


def shard_name(index: int) -> str:
    return f"part-{index:05d}.jsonl"


def format_eta(seconds: float) -> str:
    """``45s``, ``3m05s``, ``2h07m``: short enough for a progress line."""
    s = int(round(max(seconds, 0.0)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def progress_line(p: dict[str, Any], total_bytes: int | None = None) -> str:
    """One staging log line from ``stage``'s progress dict: records, MB of the total, rates
    and an ETA from the input's stored size (listed up front, so known before reading)."""
    line = f"{p['records']:,} records ({p['rejected']:,} rejected), {p['mb']:.1f}"
    if total_bytes:
        total_mb = total_bytes / 1e6
        line += f"/{total_mb:.1f} MB ({min(100.0, 100 * p['mb'] / total_mb):.0f}%)"
    else:
        line += " MB"
    line += f", {p['records_per_s']:,} records/s, {p['mb_per_s']:.1f} MB/s"
    if total_bytes and p["mb_per_s"] > 0:
        line += f", ETA {format_eta((total_bytes / 1e6 - p['mb']) / p['mb_per_s'])}"
    return line


@dataclass
class Manifest:
    bucket: str
    prefix: str
    records_in: int
    accepted: int
    rejected: dict[str, int]
    shards: list[dict[str, Any]]
    sources: list[dict[str, Any]]
    bytes_in: int
    input_prefix: str  # key prefix of the shards (ends with "/"): SageMaker's S3 input
    rejected_key: str | None
    spec: dict[str, Any] = field(default_factory=dict)
    rejected_examples: dict[str, str] = field(default_factory=dict)  # reason -> first detail
    elapsed_s: float = 0.0

    @property
    def rejected_total(self) -> int:
        return sum(self.rejected.values())

    @property
    def input_uri(self) -> str:
        return f"s3://{self.bucket}/{self.input_prefix}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> Manifest:
        return cls(**{k: doc[k] for k in cls.__dataclass_fields__ if k in doc})


class _Outputs:
    """The shard writers (opened on first use, so empty shards are never written) + rejects.

    Parts upload on a small thread pool so the CPU-bound loop keeps going while S3 receives.
    """

    def __init__(self, client: Any, bucket: str, prefix: str, shards: int, part_size: int,
                 pool: ThreadPoolExecutor, subdir: str = "input", rejected_key: str | None = None):
        self.client, self.bucket, self.prefix, self.part_size = client, bucket, prefix, part_size
        self.subdir = subdir
        self.pool = pool
        self.writers: list[S3LineWriter | None] = [None] * shards
        self.counts = [0] * shards
        self.rejected: dict[str, int] = {}
        self.first_detail: dict[str, str] = {}  # one example per reason, for messages
        self.rejects: S3LineWriter | None = None
        self.rejected_key = rejected_key or join_key(prefix, "rejected", "rejected.jsonl")

    def open_shard(self, index: int) -> S3LineWriter:
        key = join_key(self.prefix, self.subdir, shard_name(index))
        writer = S3LineWriter(self.client, self.bucket, key, self.part_size, executor=self.pool)
        self.writers[index] = writer
        return writer

    def reject(self, rej: Rejected) -> None:
        self.rejected[rej.reason] = self.rejected.get(rej.reason, 0) + rej.count
        self.first_detail.setdefault(rej.reason, rej.detail)
        if self.rejects is None:
            self.rejects = S3LineWriter(self.client, self.bucket, self.rejected_key,
                                        self.part_size, executor=self.pool)
        self.rejects.write(rej.to_json())

    def all_writers(self) -> list[S3LineWriter]:
        return [w for w in (*self.writers, self.rejects) if w is not None]

    def close(self) -> list[dict[str, Any]]:
        # Small shards are one put_object each at close: send them side by side, and let
        # every close end before an error propagates (the caller then aborts the rest).
        futures = [self.pool.submit(w.close) for w in self.all_writers()]
        wait(futures)
        for future in futures:
            future.result()
        return [{"name": shard_name(i), "key": w.key, "records": self.counts[i],
                 "bytes": w.bytes_written}
                for i, w in enumerate(self.writers) if w is not None]

    def abort(self) -> None:
        for w in self.all_writers():
            w.abort()


class _Sources:
    """Per-source counts, taken as deltas of the running totals when the source changes."""

    def __init__(self, files: Iterable[Any] | None) -> None:
        self.rows: dict[str, dict[str, Any]] = {}
        for f in files or ():
            self.rows[f.name] = {"name": f.name, "format": f.format, "gzip": f.gzip,
                                 "bytes": f.size, "records": 0, "accepted": 0, "rejected": 0}
        self.current: str | None = None
        self._base = (0, 0)

    def switch(self, source: str | None, accepted: int, rejected: int) -> None:
        if self.current is not None:
            row = self.rows.setdefault(self.current, {"name": self.current, "records": 0,
                                                      "accepted": 0, "rejected": 0})
            row["accepted"] += accepted - self._base[0]
            row["rejected"] += rejected - self._base[1]
            row["records"] = row["accepted"] + row["rejected"]
        self.current, self._base = source, (accepted, rejected)


def _counted(items: Iterable[Any], total: list[int]) -> Iterable[Any]:
    """Byte count for plain iterators (an InputSet counts stored bytes itself)."""
    for item in items:
        payload = item[2]
        if payload.__class__ is bytes:
            total[0] += len(payload) + 1
        yield item


def stage(
    records_iter: Iterable[tuple[str, int, Any]],
    *,
    s3_client: Any,
    bucket: str,
    prefix: str,
    shards: int,
    id_field: str = "id",
    text_field: str = "text",
    metadata_fields: Iterable[str] = (),
    max_text_bytes: int = DEFAULT_MAX_TEXT_BYTES,
    spec: RecordSpec | None = None,
    progress: Callable[[dict[str, Any]], None] | None = None,
    part_size: int = DEFAULT_PART_SIZE,
    progress_every_s: float = PROGRESS_EVERY_S,
    upload_threads: int = 4,
    stamp: Callable[..., bytes] | None = None,
    version: int = 0,
    version_of: Callable[[dict], int | None] | None = None,
    carried: Iterable[tuple[str, int, dict]] = (),
    subdir: str = "input",
    manifest_name: str = "manifest.json",
    rejected_key: str | None = None,
) -> Manifest:
    """Validate and shard ``(source, line, payload)`` items (see ``sources``) into S3.

    ``spec`` (or the field arguments) says which fields make a record; an ``InputSet`` must
    have been opened with the same one, since it picks Parquet/CSV columns by it.
    ``stamp`` (``changes.make_stamper``) adds each record's fingerprint block, with the
    run's ``version`` or the record's own (``version_of``: None rejects it). ``carried``
    records (from the index a model switch replaces) are staged first, each keeping the
    version and source in its own ``batchvec`` block. Shards go under ``subdir``, rejects to
    ``rejected_key`` (default ``<prefix>/rejected/rejected.jsonl``).
    """
    spec = spec or RecordSpec(id_field, text_field, tuple(metadata_fields), max_text_bytes)
    opened_with = getattr(records_iter, "spec", None)
    if opened_with is not None and opened_with != spec:
        raise ValueError(f"the input was opened with {opened_with}, staging was asked for {spec}")
    if isinstance(shards, bool) or not isinstance(shards, int) or not 1 <= shards <= MAX_SHARDS:
        raise ValueError(f"shards must be an integer in 1..{MAX_SHARDS}, got {shards!r}")
    if part_size < MIN_PART_SIZE:
        raise ValueError(f"part_size must be at least {MIN_PART_SIZE} bytes, got {part_size}")
    fix_mmap_threshold()  # multi-MB part buffers must not grow the heap with the input
    prefix = prefix.strip("/")
    manifest_key = join_key(prefix, manifest_name)
    # A manifest from an earlier try must not vouch for shards this try is rewriting.
    s3_client.delete_object(Bucket=bucket, Key=manifest_key)

    plain_bytes = [0]
    if not hasattr(records_iter, "bytes_read"):
        records_iter = _counted(records_iter, plain_bytes)
    pool = ThreadPoolExecutor(max(1, upload_threads), thread_name_prefix="stage-upload")
    out = _Outputs(s3_client, bucket, prefix, shards, part_size, pool, subdir, rejected_key)
    sources = _Sources(getattr(records_iter, "files", None))
    started = time.monotonic()

    def bytes_in() -> int:
        return getattr(records_iter, "bytes_read", None) or plain_bytes[0]

    def report(accepted: int) -> None:
        elapsed = max(time.monotonic() - started, 1e-9)
        done = accepted + sum(out.rejected.values())
        progress({"records": done, "accepted": accepted, "rejected": done - accepted,
                  "mb": round(bytes_in() / 1e6, 1), "elapsed_s": round(elapsed, 1),
                  "mb_per_s": round(bytes_in() / 1e6 / elapsed, 1),
                  "records_per_s": round(done / elapsed)})

    check = make_validator(spec)
    try:
        accepted = 0
        if stamp is not None and carried:
            accepted = _loop(carried, _stamping(check, stamp, None, None), out, sources,
                             shards, report if progress else None, progress_every_s)
        if stamp is not None:
            check = _stamping(check, stamp, version, version_of)
        accepted += _loop(records_iter, check, out, sources, shards,
                          report if progress else None, progress_every_s, accepted)
        shard_rows = out.close()
    except BaseException:
        out.abort()
        raise
    finally:
        pool.shutdown(wait=True)
    _remove_stale(s3_client, bucket, prefix, {w.key for w in out.all_writers()}, subdir)
    manifest = Manifest(
        bucket=bucket, prefix=prefix, records_in=accepted + sum(out.rejected.values()),
        accepted=accepted, rejected=dict(sorted(out.rejected.items())), shards=shard_rows,
        sources=list(sources.rows.values()), bytes_in=bytes_in(),
        input_prefix=join_key(prefix, "input") + "/",  # the model's (incremental.py)
        rejected_key=out.rejected_key if out.rejects is not None else None,
        spec={"id_field": spec.id_field, "text_field": spec.text_field,
              "metadata_fields": list(spec.metadata_fields),
              "max_text_bytes": spec.max_text_bytes, "shards": shards},
        rejected_examples=dict(sorted(out.first_detail.items())),
        elapsed_s=round(time.monotonic() - started, 3),
    )
    put_json(s3_client, bucket, manifest_key, manifest.to_dict())
    if progress:
        report(accepted)
    return manifest


def _loop(
    items: Iterable[tuple[str, int, Any]],
    check: Callable[[dict], tuple[str, bytes] | Rejected],
    out: _Outputs,
    sources: _Sources,
    shards: int,
    report: Callable[[int], None] | None,
    every_s: float,
    before: int = 0,
) -> int:
    """The hot loop: everything it touches per record is a local; returns the accepted count
    (``before``: accepted by an earlier pass, for the progress figures)."""
    loads, decode_error, crc32 = orjson.loads, orjson.JSONDecodeError, zlib.crc32
    writers, counts, open_shard = out.writers, out.counts, out.open_shard
    clock = time.monotonic
    next_report = clock() + every_s
    accepted = 0
    current = None
    for source, line, payload in items:
        if source is not current:
            sources.switch(source, before + accepted, sum(out.rejected.values()))
            current = source
        kind = payload.__class__
        if kind is bytes:
            try:
                obj = loads(payload)
            except decode_error:
                obj = parse_line(payload, first_line=line == 1)
                if obj is None:  # blank line: not a record
                    continue
        else:
            obj = payload
        if obj.__class__ is dict:
            res = check(obj)
            if res.__class__ is tuple:
                index = (crc32(res[0].encode()) * shards) >> 32
                writer = writers[index] or open_shard(index)
                writer.write(res[1])
                counts[index] += 1
                accepted += 1
                if report and not accepted & _TICK and clock() >= next_report:
                    report(before + accepted)
                    next_report = clock() + every_s
                continue
            obj = res
        elif obj.__class__ is not Rejected:  # valid JSON, but an array, string, number...
            obj = parse_line(payload, first_line=line == 1)
        out.reject(obj.at(source, line, payload if kind is not Rejected else None))
        if report and clock() >= next_report:
            report(before + accepted)
            next_report = clock() + every_s
    sources.switch(None, before + accepted, sum(out.rejected.values()))
    return accepted


def _stamping(check: Callable[[dict], tuple[str, bytes] | Rejected], stamp: Callable[..., bytes],
              version: int | None, version_of: Callable[[dict], int | None] | None):
    """The validator, then the fingerprint block. ``version`` None: a carried record's own
    ``batchvec`` block gives version and source."""
    def checked(obj: dict) -> tuple[str, bytes] | Rejected:
        res = check(obj)
        if res.__class__ is not tuple:
            return res
        if version is None:
            block = obj[FIELD]
            return res[0], stamp(res[0], res[1], int(block["v"]), block["src"])
        v = version if version_of is None else version_of(obj)
        if v is None:
            return Rejected("bad_version", "the version_field is missing, negative, or neither "
                            "an integer nor an ISO date")
        return res[0], stamp(res[0], res[1], v)

    return checked


def _remove_stale(client: Any, bucket: str, prefix: str, written: set[str],
                  subdir: str = "input") -> None:
    """Objects an earlier try left (e.g. with more shards) would be read as input: drop them."""
    stale = [k for sub in (subdir + "/", "rejected/")
             for k in list_keys(client, bucket, join_key(prefix, sub)) if k not in written]
    if stale:
        delete_keys(client, bucket, stale)
