"""util.lines: the one splitter of a byte stream into lines, with the resume offsets."""

from __future__ import annotations

import random

import pytest

from batchvec.util.lines import iter_lines, iter_lines_at


def _stream(lines: list[bytes], rng: random.Random, crlf: bool) -> list[bytes]:
    data = b"".join(line + (b"\r\n" if crlf else b"\n") for line in lines)
    if rng.random() < 0.5:
        data = data.rstrip(b"\r\n")  # final line without newline
    cuts = sorted(rng.sample(range(1, len(data)), min(len(data) - 1, rng.randint(0, 40))))
    return [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]


def test_iter_lines_random_chunking() -> None:
    rng = random.Random(3)
    for trial in range(300):
        lines = [
            bytes(rng.choice(b"ab{}\r ") for _ in range(rng.randint(1, 30))).strip(b"\r") or b"x"
            for _ in range(rng.randint(1, 12))
        ]
        chunks = _stream(lines, rng, crlf=trial % 2 == 0)
        assert list(iter_lines(chunks)) == lines


def test_iter_lines_edge_cases() -> None:
    assert list(iter_lines([])) == []
    assert list(iter_lines([b"", b"\n", b"\n\n"])) == []
    assert list(iter_lines([b"a\r", b"\nb\r\n", b"c"])) == [b"a", b"b", b"c"]
    big = [b"x" * 10] * 1000  # one line spread over many chunks
    assert list(iter_lines([*big, b"\nz"])) == [b"x" * 10_000, b"z"]


@pytest.mark.parametrize("seed", range(5))
def test_iter_lines_at_gives_each_line_and_offsets_resume(seed):
    rng = random.Random(seed)
    lines = [b"x" * rng.randint(0, 30) for _ in range(60)]
    data = b"".join(line + rng.choice([b"\n", b"\r\n", b"\n\n"]) for line in lines) + b"tail"

    def chunks(blob):
        i = 0
        while i < len(blob):
            n = rng.randint(1, 17)
            yield blob[i:i + n]
            i += n

    got = list(iter_lines_at(chunks(data)))
    assert [line for line, _ in got] == [line for line in lines if line] + [b"tail"]
    assert got[-1][1] == len(data)
    for k in (0, 5, len(got) // 2, len(got) - 1):
        end = got[k][1]  # resuming there reads exactly the lines after line k
        rest = list(iter_lines_at(chunks(data[end:]), end))
        assert rest == got[k + 1:]
