"""Rendering the benchmark table (plain text, fixed columns) and the missed-goals summary."""

from __future__ import annotations

from bench.common import Row

COLUMNS = ("row", "what", "unit", "ours", "naive (a)", "(b)", "ratio(s)", "goal", "met")


def fmt(value: float | None) -> str:
    if value is None:
        return "-"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.3g}"


def cells(row: Row) -> tuple[str, ...]:
    met = "ERROR" if row.error else ("-" if row.met is None else ("yes" if row.met else "NO"))
    return (row.key, row.what, row.unit, fmt(row.ours), fmt(row.naive_a), fmt(row.naive_b),
            row.ratios, row.goal, met)


def render(rows: list[Row]) -> str:
    body = [COLUMNS, *(cells(r) for r in rows)]
    widths = [max(len(line[i]) for line in body) for i in range(len(COLUMNS))]
    out = []
    for n, line in enumerate(body):
        out.append(" | ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip())
        if n == 0:
            out.append("-+-".join("-" * w for w in widths))
    notes = [note for r in rows for note in r.notes]
    notes += [f"{r.key}: ERROR {r.error}" for r in rows if r.error]
    return "\n".join(out + ([""] + notes if notes else []))


def summary(rows: list[Row]) -> str:
    missed = [r.key for r in rows if r.met is False]
    failed = [r.key for r in rows if r.error]
    if not missed and not failed:
        return "bench: every goal met"
    parts = []
    if missed:
        parts.append(f"goals missed: {', '.join(missed)}")
    if failed:
        parts.append(f"rows that crashed: {', '.join(failed)}")
    return "bench: " + "; ".join(parts)
