"""Resumable indexing: how far a shard's bulk writes are acknowledged, saved in S3.

BulkWriter's lanes settle requests out of order, so a shard's progress is the contiguous
prefix of its lines whose every action is final (indexed, stale or dead-lettered).
`AckPrefix` tracks it in memory bounded by what is read ahead of it (the requests in flight);
`ShardProgress` saves that point, with the counts up to it, to
`<run>/checkpoints/index/<shard>.json` every `checkpoint_every()` lines, together with the
DLQ lines of exactly those lines (one DLQ object per saved segment: `dlq/<shard>.jsonl`,
then `dlq/<shard>.part-0001.jsonl`, ...). A retry reads the checkpoint, deletes DLQ parts
past it (written by a try killed before its checkpoint landed), and reads the `.out` from
the saved byte offset with a ranged GET. The ids indexed up to each checkpoint are saved too,
as 64-bit digests (`<shard>.ids-0000.bin`, ...), so a resumed shard still counts its
duplicate ids exactly.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import threading
from array import array
from collections import deque
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import orjson

from batchvec import settings
from batchvec.hooks import s3io
from batchvec.index.duplicates import SPILL_EVERY, DuplicateCounter

log = logging.getLogger(__name__)

# Lines of a shard (its `.out`, or its deletes) acknowledged between two checkpoints: a
# killed index_shard re-sends at most this many plus the requests in flight (lanes x 3).
# ~200 MB of 384-d output, well under a minute of bulk indexing; one small PUT per interval.
DEFAULT_CHECKPOINT_LINES = 50_000
FORMAT = 1


def checkpoint_every() -> int:
    """`BATCHVEC_CHECKPOINT_LINES` (default DEFAULT_CHECKPOINT_LINES)."""
    return settings.env_int("BATCHVEC_CHECKPOINT_LINES", DEFAULT_CHECKPOINT_LINES)


@dataclass
class StreamState:
    """One input stream of a shard (its `.out` or its deletes) up to the acknowledged point."""

    line: int = 0  # non-blank lines whose fate is final
    offset: int = 0  # byte offset of the object to read on from
    done: bool = False
    created: int = 0
    updated: int = 0
    stale: int = 0
    failed: dict[str, int] = field(default_factory=dict)  # reason -> count
    duplicates: int = 0  # set when the stream completes (see indexing)
    requests: int = 0
    retries: int = 0

    def apply(self, outcome: str, reason: str | None) -> None:
        if outcome == "failed":
            self.failed[reason or "failed"] = self.failed.get(reason or "failed", 0) + 1
        else:
            setattr(self, outcome, getattr(self, outcome) + 1)

    @property
    def acknowledged(self) -> int:
        return self.created + self.updated + self.stale + sum(self.failed.values())


@dataclass
class Checkpoint:
    shard: str
    identity: dict[str, Any]  # what the saved point is a point of: sources' ETags, index
    output: StreamState = field(default_factory=StreamState)
    deletes: StreamState = field(default_factory=StreamState)
    dlq_parts: int = 0  # DLQ objects written (part n is the lines of segment n)
    dlq_lines: int = 0
    id_parts: int = 0  # objects of indexed ids' digests (duplicates across tries)
    sample_id: str | None = None
    saves: int = 0

    def to_dict(self) -> dict:
        return {"format": FORMAT, **asdict(self)}

    @classmethod
    def from_dict(cls, data: dict) -> Checkpoint:
        if data.get("format") != FORMAT:
            raise ValueError(f"checkpoint format {data.get('format')!r}, expected {FORMAT}")
        data = {k: v for k, v in data.items() if k != "format"}
        return cls(**{**data, "output": StreamState(**data["output"]),
                      "deletes": StreamState(**data["deletes"])})


# A line's fate: "created", "updated" or "stale" (a bare string: nothing allocated for the
# common case), or ("failed", reason, DLQ line).
Fate = "str | tuple[str, str, bytes]"


def id_digest(doc_id: str) -> int:
    """A 64-bit digest of an id that is the same in every process (hash() is not)."""
    return int.from_bytes(hashlib.blake2b(doc_id.encode("utf-8", "surrogatepass"),
                                          digest_size=8).digest(), "little", signed=True)


class AckPrefix:
    """Lines read from one stream, in order, whose fates arrive in any order (`ack` by the
    action's place among the stream's actions); folds the contiguous final head into
    `state` and hands its DLQ lines to `dlq` and its indexed ids to `indexed`.
    Thread-safe with the lock given."""

    def __init__(self, state: StreamState, lock: threading.Lock, dlq=None,
                 indexed=None) -> None:
        self.state = state
        self._lock = lock
        self._dlq = dlq
        self._indexed = indexed
        self._units: deque[list] = deque()  # [end offset, Fate | None, id], from state.line
        self._by_seq: dict[int, list] = {}
        self._seqs = 0

    def line(self, end: int, fate: Fate) -> None:
        """A line that is final as soon as read (it never became an action)."""
        with self._lock:
            self._units.append([end, fate, None])
            self._fold()

    def action(self, end: int) -> None:
        """A line that became the next action given to the writer."""
        unit = [end, None, None]
        with self._lock:
            self._units.append(unit)
            self._by_seq[self._seqs] = unit
            self._seqs += 1

    def ack(self, seq: int, fate: Fate, doc_id: str | None = None) -> None:
        self.ack_many(((seq, fate, doc_id),))

    def ack_many(self, acks: Iterable[tuple[int, Fate, str | None]]) -> None:
        """Fates of actions (one response's, in any order), with the id of an indexed one
        for `indexed`: one lock, one fold."""
        with self._lock:
            by_seq = self._by_seq
            for seq, fate, doc_id in acks:
                unit = by_seq.pop(seq)
                unit[1], unit[2] = fate, doc_id
            self._fold()

    @property
    def in_flight(self) -> int:
        return len(self._units)

    def _fold(self) -> None:
        units, state = self._units, self.state
        while units and units[0][1] is not None:
            end, fate, doc_id = units.popleft()
            state.line += 1
            state.offset = end
            if fate.__class__ is str:
                setattr(state, fate, getattr(state, fate) + 1)
                if doc_id is not None and self._indexed is not None and fate != "stale":
                    self._indexed(doc_id)  # a stale write indexed no copy
                continue
            outcome, reason, dlq_line = fate
            state.apply(outcome, reason)
            if self._dlq is not None:
                self._dlq(dlq_line)


def dlq_line(doc_id: str, action: bytes, reason: str) -> bytes:
    """A final per-item failure as a DLQ line, with the server's reason."""
    source = action.split(b"\n", 2)[1] if action.count(b"\n") >= 2 else action
    return orjson.dumps({"_id": doc_id, "reason": reason,
                         "source_excerpt": source[:1024].decode(errors="replace")}) + b"\n"


class ShardProgress:
    """A shard's checkpoint in S3 and its DLQ segments; `stream(name)` gives the AckPrefix of
    the stream being indexed, `maybe_save()` is cheap to call per line."""

    def __init__(self, s3, bucket: str, key: str, dlq_base: str, cp: Checkpoint,
                 every: int) -> None:
        self.s3, self.bucket, self.key, self.dlq_base = s3, bucket, key, dlq_base
        self.cp, self.every = cp, every
        self.lock = threading.Lock()
        self._writer: s3io.S3LineWriter | None = None
        self._saved_at = cp.output.line + cp.deletes.line
        self.ids = DuplicateCounter()  # exact, in bounded memory: see duplicates.py
        self._id_part = array("q")  # indexed since the last checkpoint

    @classmethod
    def open(cls, s3, bucket: str, key: str, dlq_base: str, shard: str,
             identity: dict[str, Any], every: int | None = None) -> ShardProgress:
        """The saved checkpoint if it is one of these sources and index, else a fresh start;
        DLQ parts past it are deleted (their lines will be written again)."""
        cp = None
        try:
            cp = Checkpoint.from_dict(s3io.get_json(s3, bucket, key))
        except s3.exceptions.NoSuchKey:
            pass
        if cp is not None and cp.identity != identity:
            log.warning("shard %s: checkpoint s3://%s/%s is of other sources or another index "
                        "(%s, now %s): starting over", shard, bucket, key, cp.identity, identity)
            cp = None
        progress = cls(s3, bucket, key, dlq_base, cp or Checkpoint(shard, identity),
                       every or checkpoint_every())
        progress._drop_dlq_parts_from(progress.cp.dlq_parts)
        if not progress.cp.output.done:
            progress._load_ids()
        return progress

    def ids_key(self, part: int) -> str:
        return f"{self.key.removesuffix('.json')}.ids-{part:04d}.bin"

    def _load_ids(self) -> None:
        for part in range(self.cp.id_parts):  # ~400 KB each at the default interval
            self.ids.remember_all(s3io.get_bytes(self.s3, self.bucket, self.ids_key(part)))

    @property
    def resumed(self) -> bool:
        return self.cp.saves > 0

    def dlq_key(self, part: int) -> str:
        return f"{self.dlq_base}.jsonl" if part == 0 else f"{self.dlq_base}.part-{part:04d}.jsonl"

    def _drop_dlq_parts_from(self, first: int) -> None:
        stale = []
        for key in s3io.list_keys(self.s3, self.bucket, self.dlq_base + "."):
            rest = key[len(self.dlq_base):]
            number = rest.removeprefix(".part-").removesuffix(".jsonl")
            part = 0 if rest == ".jsonl" else int(number) if number.isdigit() else None
            if part is not None and part >= first:
                stale.append(key)
        if stale:
            log.info("dropping DLQ parts past the checkpoint: %s", stale)
            s3io.delete_keys(self.s3, self.bucket, stale)

    def stream(self, name: str) -> AckPrefix:
        return AckPrefix(getattr(self.cp, name), self.lock, self._dlq_write,
                         self._remember if name == "output" else None)

    def _remember(self, doc_id: str) -> None:  # under self.lock, from AckPrefix._fold
        digest = id_digest(doc_id)
        self.ids.remember(digest)
        self._id_part.append(digest)
        if not len(self._id_part) % SPILL_EVERY:
            self.ids.maybe_spill()

    def _dlq_write(self, line: bytes) -> None:  # under self.lock, from AckPrefix._fold
        if self._writer is None:
            self._writer = s3io.S3LineWriter(self.s3, self.bucket,
                                             self.dlq_key(self.cp.dlq_parts))
        self._writer.write(line)
        self.cp.dlq_lines += 1

    def _close_segment(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
            self.cp.dlq_parts += 1

    def maybe_save(self) -> None:
        cp = self.cp
        if cp.output.line + cp.deletes.line - self._saved_at >= self.every:
            self.save()

    def save(self) -> None:
        """The acknowledged point, its counts and its DLQ lines, as one consistent cut."""
        with self.lock:
            self._close_segment()
            if self._id_part:
                s3io.put_bytes(self.s3, self.bucket, self.ids_key(self.cp.id_parts),
                               self._id_part.tobytes())
                self.cp.id_parts += 1
                del self._id_part[:]
            self.cp.saves += 1
            doc = copy.deepcopy(self.cp.to_dict())
        self._saved_at = doc["output"]["line"] + doc["deletes"]["line"]
        s3io.put_json(self.s3, self.bucket, self.key, doc)
        log.info("shard %s: checkpoint %d at output line %d (byte %d), deletes line %d; "
                 "%d DLQ lines in %d parts", self.cp.shard, doc["saves"], doc["output"]["line"],
                 doc["output"]["offset"], doc["deletes"]["line"], doc["dlq_lines"],
                 doc["dlq_parts"])

    def finish(self) -> None:
        with self.lock:
            self._close_segment()

    def abort(self) -> None:
        """A try that fails: the DLQ lines past the checkpoint are written again by the next."""
        with self.lock:
            if self._writer is not None:
                self._writer.abort()
                self._writer = None

    def clear(self) -> None:
        """The shard's result is saved: a later try or rerun starts over, as before."""
        base = self.key.removesuffix(".json")
        keys = [k for k in s3io.list_keys(self.s3, self.bucket, base + ".")
                if k == self.key or k.startswith(base + ".ids-")]
        s3io.delete_keys(self.s3, self.bucket, keys)
