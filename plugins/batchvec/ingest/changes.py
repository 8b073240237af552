"""What changed since the index was written: fingerprints, versions, and the per-shard diff.

Every staged record carries a small ``batchvec`` block that also lands in its document::

    {"_id": "d1", "text": "...", <metadata>, "batchvec": {"fp": <int64>, "v": <version>,
                                                          "src": "<source id>", "crc": <crc32>}}

- ``fp``: a 64-bit digest of the model's identity and the staged record (id, text, metadata),
  so a document whose text, metadata or model did not change has the same one;
- ``v``: the external version of the write (the run's logical date, or the record's
  ``version_field``): OpenSearch keeps the highest (``version_type: external_gte``), so an
  older day replayed by a backfill never overwrites a newer day's document;
- ``src``: the source that wrote it; a full sync deletes only its own source's documents;
- ``crc``: crc32 of the id, which also picks the staging shard (a range of the crc space),
  so one shard's documents are one range query on the index.

The index itself is the ledger: there is no second copy to drift from it, and overlapping
runs see each other's writes. Reading it back costs one scroll over a shard's crc range (no
per-document round trip); the shard's state is held as three int64 arrays (24 bytes/doc).
"""

from __future__ import annotations

import hashlib
import logging
import zlib
from array import array
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np
import orjson

log = logging.getLogger(__name__)

FIELD = "batchvec"  # reserved: the block's name in staged records and documents
CRC_SPACE = 1 << 32
SCAN_PAGE = 5000
DIFF_BATCH = 20_000  # staged lines looked up at once (vectorised)
# Mapping of the block: numbers for the range scan and comparisons, not searchable text.
MAPPING = {"properties": {"fp": {"type": "long"}, "v": {"type": "long"},
                          "src": {"type": "keyword"}, "crc": {"type": "long"}}}


def shard_of(doc_id: str, shards: int) -> int:
    """The staging shard of an id: its crc32's range of ``CRC_SPACE / shards``."""
    return (zlib.crc32(doc_id.encode()) * shards) >> 32


def shard_crc_range(index: int, shards: int) -> tuple[int, int]:
    """[lo, hi) of the crc32 values ``shard_of`` maps to shard ``index``."""
    return -(-index * CRC_SPACE // shards), -(-(index + 1) * CRC_SPACE // shards)


def make_stamper(model_identity: str, source_id: str):
    """``stamp(doc_id, line, version, src=None) -> line`` for staged lines ending ``}\\n``;
    ``src`` (a carried-over document's own source) defaults to the run's ``source_id``."""
    key = model_identity.encode() + b"\0"
    blake, crc32, dumps = hashlib.blake2b, zlib.crc32, orjson.dumps
    run_src = dumps(source_id)

    def stamp(doc_id: str, line: bytes, version: int, src: str | None = None) -> bytes:
        fp = int.from_bytes(blake(key + line, digest_size=8).digest(), "big", signed=True)
        return b'%s,"batchvec":{"fp":%d,"v":%d,"src":%s,"crc":%d}}\n' % (
            line[:-2], fp, version, run_src if src is None else dumps(src),
            crc32(doc_id.encode()))

    return stamp


# -- the index's state of one shard --------------------------------------------------------
@dataclass
class ShardState:
    """Documents of one crc range: id hash -> (fp, v), sorted by id hash."""

    ids: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))
    fps: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))
    versions: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))

    def __len__(self) -> int:
        return len(self.ids)

    def lookup(self, id_hashes: np.ndarray) -> np.ndarray:
        """Position of each hash in the state, or -1."""
        if not len(self.ids):
            return np.full(len(id_hashes), -1, np.int64)
        pos = np.searchsorted(self.ids, id_hashes)
        pos = np.minimum(pos, len(self.ids) - 1)
        return np.where(self.ids[pos] == id_hashes, pos, -1)


def range_query(index: int, shards: int, source_id: str | None = None) -> dict:
    lo, hi = shard_crc_range(index, shards)
    query: dict = {"range": {f"{FIELD}.crc": {"gte": lo, "lt": hi}}}
    if source_id is not None:
        query = {"bool": {"filter": [query, {"term": {f"{FIELD}.src": source_id}}]}}
    return query


def load_state(hits: Iterable[dict]) -> ShardState:
    """From scanned hits (``_id`` and ``_source.batchvec.{fp,v}``): documents written
    before fingerprints (no block) have none, so they count as changed."""
    ids, fps, vs = array("q"), array("q"), array("q")  # 8 bytes each, not a Python int's 28+
    for hit in hits:
        block = (hit.get("_source") or {}).get(FIELD) or {}
        ids.append(hash(hit["_id"]))
        fps.append(int(block.get("fp", 0)))
        vs.append(int(block.get("v", 0)))
    id_arr = np.frombuffer(ids, np.int64)
    order = np.argsort(id_arr, kind="stable")
    return ShardState(id_arr[order], np.frombuffer(fps, np.int64)[order],
                      np.frombuffer(vs, np.int64)[order])


@dataclass
class ShardDiff:
    records: int = 0
    embed: int = 0  # new or changed: sent to the model
    unchanged: int = 0
    superseded: int = 0  # older than the document's version: a newer write stands
    distinct: int = 0  # distinct ids among the staged records
    seen: np.ndarray | None = None  # state positions present in the input (for deletes)


def diff_lines(lines: Iterable[bytes], state: ShardState,
               write: Callable[[bytes], None], everything: bool = False) -> ShardDiff:
    """Stream one staged shard: lines to embed go to ``write``; the rest are counted.
    ``everything`` (``reembed: all``): every line is embedded, the state only serves deletes.

    Duplicate ids in one run compare against the index, not each other: each copy that
    differs from the index is embedded, and the last in input order wins as before.
    """
    diff = ShardDiff(seen=np.zeros(len(state), bool))
    all_ids: list[np.ndarray] = []
    for batch in _batches(lines, DIFF_BATCH):
        recs = [orjson.loads(line) for line in batch]
        ids = np.fromiter((hash(r["_id"]) for r in recs), np.int64, len(recs))
        fps = np.fromiter((r[FIELD]["fp"] for r in recs), np.int64, len(recs))
        vs = np.fromiter((r[FIELD]["v"] for r in recs), np.int64, len(recs))
        all_ids.append(ids)
        pos = state.lookup(ids)
        found = pos >= 0
        diff.seen[pos[found]] = True
        have_v = np.where(found, state.versions[np.maximum(pos, 0)] if len(state) else 0, 0)
        have_fp = np.where(found, state.fps[np.maximum(pos, 0)] if len(state) else 0, 0)
        older = found & (vs < have_v) & (not everything)
        same = found & ~older & (fps == have_fp) & (not everything)
        diff.records += len(recs)
        diff.superseded += int(older.sum())
        diff.unchanged += int(same.sum())
        for line, skip in zip(batch, older | same, strict=True):
            if not skip:
                write(line)
                diff.embed += 1
    diff.distinct = int(len(np.unique(np.concatenate(all_ids)))) if all_ids else 0
    return diff


def absent_ids(hits: Iterable[dict], state: ShardState, seen: np.ndarray) -> Iterator[str]:
    """Ids of scanned documents (of this source) that the input no longer has."""
    for hit in hits:
        pos = state.lookup(np.asarray([hash(hit["_id"])], np.int64))[0]
        if pos < 0 or not seen[pos]:
            yield hit["_id"]


def _batches(lines: Iterable[bytes], size: int) -> Iterator[list[bytes]]:
    batch: list[bytes] = []
    for line in lines:
        batch.append(line if line.endswith(b"\n") else line + b"\n")
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def version_reader(field_name: str) -> Callable[[dict], int | None]:
    """A record's ``version_field`` as an int: an integer, or an ISO date/time (epoch
    seconds, UTC when no zone is given). None when missing or unreadable."""
    from datetime import UTC, datetime

    def read(obj: dict) -> int | None:
        value = obj.get(field_name)
        if value.__class__ is int:
            return value if value >= 0 else None
        if isinstance(value, str) and value:
            if value.isdigit():
                return int(value)
            try:
                when = datetime.fromisoformat(value.replace("Z", "+00:00"))
            except ValueError:
                return None
            if when.tzinfo is None:
                when = when.replace(tzinfo=UTC)
            return int(when.timestamp())
        return None

    return read
