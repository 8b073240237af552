"""Cutting a byte stream (S3 chunks) into lines: the one splitter for staged and output files.

Input files are cut by `ingest.sources` instead: there every line is numbered, blank ones
included, for the rejects file, and an over-long line is refused rather than held.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator


def iter_lines(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """Split a byte stream into lines without the newline (LF or CRLF); skips empty lines."""
    for line, _ in iter_lines_at(chunks):
        yield line


def iter_lines_at(chunks: Iterable[bytes], start: int = 0) -> Iterator[tuple[bytes, int]]:
    """``iter_lines``' lines, each with the byte offset just past it, counting from ``start``
    (where the chunks begin in the object): a resume point (checkpoint.py).

    Pieces of a line that spans chunks are collected in a list and joined once, so a long
    line costs one copy rather than one per chunk.
    """
    pos = start
    pending: list[bytes] = []
    for chunk in chunks:
        if not chunk:
            continue
        parts = chunk.split(b"\n")
        if len(parts) == 1:
            pending.append(chunk)
            continue
        last = parts.pop()
        if pending:
            pending.append(parts[0])
            parts[0] = b"".join(pending)
            pending = []
        for part in parts:
            pos += len(part) + 1
            if part[-1:] == b"\r":
                part = part[:-1]
            if part:
                yield part, pos
        if last:
            pending.append(last)
    if pending:
        tail = b"".join(pending)
        pos += len(tail)
        if tail[-1:] == b"\r":
            tail = tail[:-1]
        if tail:
            yield tail, pos
