"""What every benchmark row shares: generated data, repeat-and-median timing, the row type.

Generated data is built from small pools of real model-shaped pieces (float32 vectors in
their shortest spelling, as the SageMaker worker writes them; ~300-char texts) joined with
unique ids, so millions of lines cost a bytes join each and never sit in memory.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import orjson

REPO = Path(__file__).resolve().parents[1]
OUT_DIR = REPO / "bench" / "out"
DIM = 384
TEXT_CHARS = 300
OUTPUT_KEY = "SageMakerOutput"
_WORDS = ("the model embeds every passage into a vector so that similar texts land close "
          "together and a k-NN query finds them again quickly across billions of records "
          "stored in shards on several nodes of the cluster").split()


@dataclass
class Row:
    """One line of the table: ours and up to two naive baselines, in the row's unit."""

    key: str
    what: str
    unit: str
    ours: float | None = None
    naive_a: float | None = None
    naive_b: float | None = None
    ratios: str = ""
    goal: str = ""
    met: bool | None = None
    notes: list[str] = field(default_factory=list)
    error: str | None = None


def text_of(i: int, chars: int = TEXT_CHARS) -> str:
    """A deterministic passage of about ``chars`` characters, words drawn by an LCG."""
    words, n, k = [], 0, (i * 2654435761 + 1) % 2**31
    while n < chars:
        k = (k * 1103515245 + 12345) % 2**31
        w = _WORDS[(k >> 8) % len(_WORDS)]
        words.append(w)
        n += len(w) + 1
    return f"doc {i}: " + " ".join(words)[: chars - 8 - len(str(i))]


def vector_pool(n: int = 512, dim: int = DIM, seed: int = 7) -> list[bytes]:
    """``n`` normalised float32 vectors as the JSON text of a list of one vector."""
    rng = np.random.default_rng(seed)
    vecs = rng.standard_normal((n, dim)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    return [orjson.dumps(v[None, :], option=orjson.OPT_SERIALIZE_NUMPY) for v in vecs]


class OutLines:
    """SageMaker join-format `.out` lines: ``{"_id","text","SageMakerOutput":[[...]]}``."""

    def __init__(self, pool: int = 512, texts: int = 256) -> None:
        self.vectors = vector_pool(pool)
        self.texts = [orjson.dumps(text_of(i)) for i in range(texts)]

    def line(self, i: int) -> bytes:
        return b"".join((b'{"_id":"doc-', str(i).encode(), b'","text":',
                         self.texts[i % len(self.texts)], b',"' + OUTPUT_KEY.encode() + b'":',
                         self.vectors[i % len(self.vectors)], b"}"))

    def lines(self, n: int, start: int = 0) -> Iterator[bytes]:
        for i in range(start, start + n):
            yield self.line(i)

    def chunks(self, n: int, chunk_bytes: int = 1 << 20) -> Iterator[bytes]:
        """The text of a `.out` with ``n`` lines, in chunks (what an S3 GET streams)."""
        buf: list[bytes] = []
        size = 0
        for line in self.lines(n):
            buf.append(line)
            buf.append(b"\n")
            size += len(line) + 1
            if size >= chunk_bytes:
                yield b"".join(buf)
                buf, size = [], 0
        if buf:
            yield b"".join(buf)


def input_line(i: int, texts: list[bytes]) -> bytes:
    """One input JSONL record as users hand it in: id, text, a metadata field."""
    return b"".join((b'{"id":"doc-', str(i).encode(), b'","text":', texts[i % len(texts)],
                     b',"lang":"en"}\n'))


def write_input(path: Path, n: int, chunk_records: int = 20_000, unique: bool = False,
                start: int = 0) -> int:
    """Stream ``n`` input records (ids ``doc-<start>`` on) to ``path`` (never more than one
    chunk in memory). Texts cycle through a pool of 256 unless ``unique`` (what the model
    sees must all differ, or identical vectors make the report's smoke k-NN query ambiguous)."""
    pool = [orjson.dumps(text_of(i)) for i in range(256)]
    size = 0
    with open(path, "wb") as fh:
        for first in range(start, start + n, chunk_records):
            ids = range(first, min(start + n, first + chunk_records))
            block = b"".join(input_line(i, [orjson.dumps(text_of(i))] if unique else pool)
                             for i in ids)
            fh.write(block)
            size += len(block)
    return size


def median_of(repeats: int, fn: Callable[[], float], between: Callable[[], None] | None = None) -> float:
    values = []
    for r in range(repeats):
        if between and r:
            between()
        values.append(fn())
    return statistics.median(values)


def interleaved(repeats: int, fns: dict[str, Callable[[], float]]) -> dict[str, float]:
    """Medians of each measurement, run round-robin so machine noise hits all sides alike."""
    values: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            values[name].append(fn())
    return {name: statistics.median(v) for name, v in values.items()}


def cpu_time() -> float:
    """CPU seconds of this process, all threads (user + system)."""
    return time.process_time()


def free_disk_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def bench_spec():
    """The records write_input makes: id, text and the metadata field lang."""
    from batchvec.ingest.records import RecordSpec

    return RecordSpec("id", "text", ("lang",))
