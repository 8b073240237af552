"""P1: `.out` lines -> bulk NDJSON action pairs, docs per CPU second, against parse + dump.

All three converters produce the same action pair per line (checked after parsing, so the
row compares equal work): ``{"index":{"_index","_id"}}`` then the source with the vector.
"""

from __future__ import annotations

import json

import orjson

from batchvec.outputs.convert import ActionBuilder
from bench.common import DIM, OUTPUT_KEY, OutLines, Row, cpu_time, interleaved

INDEX = "bench-index"
FIELD = "embedding"


def naive_stdlib(line: bytes) -> tuple[str, bytes]:
    """What most code does: parse everything, move the vector, dump everything."""
    doc = json.loads(line)
    doc_id = doc.pop("_id")
    doc[FIELD] = doc.pop(OUTPUT_KEY)[0]
    head = json.dumps({"index": {"_index": INDEX, "_id": doc_id}})
    return doc_id, (head + "\n" + json.dumps(doc) + "\n").encode()


def naive_orjson(line: bytes) -> tuple[str, bytes]:
    """The same with the fastest JSON library: every float is still parsed and printed."""
    doc = orjson.loads(line)
    doc_id = doc.pop("_id")
    doc[FIELD] = doc.pop(OUTPUT_KEY)[0]
    head = orjson.dumps({"index": {"_index": INDEX, "_id": doc_id}})
    return doc_id, head + b"\n" + orjson.dumps(doc) + b"\n"


def ours() -> ActionBuilder:
    return ActionBuilder(INDEX, FIELD, DIM)


def cpu_rate(convert, lines: list[bytes]) -> float:
    """Docs per CPU second of this (single-threaded) conversion."""
    started = cpu_time()
    for line in lines:
        convert(line)
    return len(lines) / max(cpu_time() - started, 1e-9)


def same_actions(lines: list[bytes]) -> int:
    """Lines whose three conversions differ once parsed (0 = equal work)."""
    build = ours()
    bad = 0
    for line in lines:
        got = [conv(line) for conv in (build, naive_stdlib, naive_orjson)]
        parsed = [(i, [json.loads(part) for part in body.splitlines()]) for i, body in got]
        bad += any(p != parsed[0] for p in parsed[1:])
    return bad


def run(docs: int, repeats: int) -> Row:
    gen = OutLines()
    lines = list(gen.lines(docs))
    # stdlib is ~30x slower: a slice of the lines gives the same rate in a sane time.
    slow = lines[: max(1000, docs // 8)]
    build = ours()
    rates = interleaved(repeats, {
        "ours": lambda: cpu_rate(build, lines),
        "stdlib": lambda: cpu_rate(naive_stdlib, slow),
        "orjson": lambda: cpu_rate(naive_orjson, lines),
    })
    mismatched = same_actions(lines[:2000])
    r_std, r_orj = rates["ours"] / rates["stdlib"], rates["ours"] / rates["orjson"]
    met = rates["ours"] >= 60_000 and r_std >= 20 and mismatched == 0
    mb = sum(map(len, lines)) / len(lines) / 1e3
    return Row(
        key="P1", what=f"output conversion, {DIM}-d, docs/s per core ({docs:,} lines, "
                       f"{mb:.1f} KB each)",
        unit="docs/s", ours=rates["ours"], naive_a=rates["stdlib"], naive_b=rates["orjson"],
        ratios=f"{r_std:.1f}x (a), {r_orj:.1f}x (b)",
        goal=">= 60,000 docs/s and >= 20x (a)", met=met,
        notes=[f"P1: (a) stdlib json parse+dump, (b) orjson parse+dump; CPU time of one thread; "
               f"outputs equal after parsing on {min(2000, docs)} lines: "
               f"{'yes' if not mismatched else f'NO ({mismatched} differ)'}"],
    )
