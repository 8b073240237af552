"""Counting duplicate ids in one shard exactly, in memory that does not grow with it.

Duplicate ids of a run all land in one shard, in input order (staging shards by id), so a
shard can count them alone: keep a 64-bit hash of each id sent, count repeats at the end.
hash() is stable within the task's process and ~20x cheaper than a hashlib digest on the
hot path. Past `budget` hashes (8 bytes each) they spill to a temp file, and the count runs
one hash partition at a time, so memory stays at about two budgets whatever the shard size.
"""

from __future__ import annotations

import math
import tempfile
from array import array

DEFAULT_BUDGET = 1 << 20  # hashes held in memory: 8 MiB
SPILL_EVERY = 1 << 16  # how often the caller should offer to spill (records)


def _int64(values):
    import numpy as np

    return np.frombuffer(values, dtype=np.int64) if isinstance(values, array) else values


def count_duplicates(sent, failed=None) -> int:
    """Records superseded by a later one with the same id: per id, indexed copies - 1.

    ``sent`` holds a 64-bit hash of each id sent to the index, ``failed`` one per record the
    index refused (those superseded nothing); array('q') or int64 numpy arrays. ``sent`` is
    sorted in place.
    """
    import numpy as np

    if len(sent) < 2:
        return 0
    ids = _int64(sent)
    ids.sort()
    if failed is None or not len(failed):
        return int(np.count_nonzero(ids[1:] == ids[:-1]))
    uniq, copies = np.unique(ids, return_counts=True)
    gone, gone_copies = np.unique(_int64(failed), return_counts=True)
    at = np.searchsorted(uniq, gone)
    known = (at < len(uniq)) & (uniq[np.minimum(at, len(uniq) - 1)] == gone)
    np.subtract.at(copies, at[known], gone_copies[known])
    return int(np.maximum(copies - 1, 0).sum())


class DuplicateCounter:
    """`remember(hash(doc_id))` for each id sent, `refuse(doc_id)` for each the index
    refused, `maybe_spill()` now and then (every SPILL_EVERY records), `count()` at the end."""

    def __init__(self, budget: int = DEFAULT_BUDGET):
        self.budget = budget
        self._sent = array("q")
        self._refused = array("q")  # final per-item failures: few, kept in memory
        self.remember = self._sent.append  # bound once: the hot path is one call
        self._spill = None
        self._spilled = 0

    def remember_all(self, digests: bytes) -> None:
        """Many int64 hashes at once (a resumed shard's earlier tries), spilling as needed."""
        self._sent.frombytes(digests)
        self.maybe_spill()

    def refuse(self, doc_id: str) -> None:
        self._refused.append(hash(doc_id))

    def maybe_spill(self) -> None:
        if len(self._sent) >= self.budget:
            if self._spill is None:
                self._spill = tempfile.TemporaryFile(prefix="batchvec-ids-")
            self._spill.write(self._sent.tobytes())
            self._spilled += len(self._sent)
            del self._sent[:]  # in place: `remember` stays bound to it

    def count(self) -> int:
        if self._spill is None:
            return count_duplicates(self._sent, self._refused)
        import numpy as np

        self._spill.write(self._sent.tobytes())
        total = self._spilled + len(self._sent)
        del self._sent[:]
        partitions = max(2, math.ceil(total / self.budget))
        refused = _int64(self._refused)
        duplicates = 0
        for part in range(partitions):  # an id's copies all fall in one partition
            self._spill.seek(0)
            picked = []
            while chunk := self._spill.read(self.budget * 8):
                ids = np.frombuffer(chunk, dtype=np.int64)
                picked.append(ids[ids % partitions == part])
            duplicates += count_duplicates(np.concatenate(picked),
                                           refused[refused % partitions == part])
        self._spill.close()
        return duplicates
