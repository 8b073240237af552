"""P4: peak RSS of the staging and indexing steps at a small and a large input size.

Each step runs in a fresh process (``bench.p4_child``) so its peak RSS is its own: staging
on a generated JSONL file (written in chunks, never held in memory), indexing on generated
`.out` lines streamed through ``index.load.index_shard`` to the null `_bulk` server. Flat
means the large size's peak is within 10% (or 16 MB) of the small size's.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from bench.common import Row, free_disk_bytes, write_input
from bench.stack import devstack, null_bulk, python_env, run_child

LIMIT_MB = 256
RECORD_BYTES = 360  # a generated input line, rounded up: for the disk-space check


def flat(small: float, large: float) -> bool:
    return large <= max(small * 1.10, small + 16)


def measure_stage(records: int, endpoints_file: Path, tmp: Path) -> dict:
    need = records * RECORD_BYTES * 2  # the file here + its staged copy in SeaweedFS
    if free_disk_bytes(tmp) < need + (2 << 30):
        raise RuntimeError(f"not enough free disk under {tmp} for {records:,} records "
                           f"(~{need / 1e9:.1f} GB needed)")
    path = tmp / f"input-{records}.jsonl"
    write_input(path, records)
    try:
        return run_child(["bench.p4_child", "stage", str(path), str(endpoints_file)],
                         env=python_env())
    finally:
        path.unlink(missing_ok=True)


def measure_index(records: int, endpoints_file: Path, port: int) -> dict:
    return run_child(["bench.p4_child", "index", str(records), str(endpoints_file), str(port)],
                     env=python_env())


def run(small: int, large: int) -> Row:
    peaks: dict[tuple[str, int], dict] = {}
    with tempfile.TemporaryDirectory(prefix="bench-p4-") as tmp, \
            devstack(("s3",)) as (_, endpoints), null_bulk(light=True) as server:
        endpoints_file = Path(tmp) / "endpoints.json"
        endpoints_file.write_text(json.dumps(endpoints))
        for n in (small, large):
            peaks["stage", n] = measure_stage(n, endpoints_file, Path(tmp))
            peaks["index", n] = measure_index(n, endpoints_file, server.port)
    worst = max(p["peak_mb"] for p in peaks.values())
    steps = []
    ok = worst < LIMIT_MB
    for step in ("stage", "index"):
        a, b = peaks[step, small]["peak_mb"], peaks[step, large]["peak_mb"]
        ok = ok and flat(a, b)
        steps.append(f"{step} {a:.0f}->{b:.0f} MB")
    return Row(
        key="P4", what=f"peak RSS, staging and indexing, {small:,} -> {large:,} records",
        unit="MB", ours=worst, ratios=", ".join(steps),
        goal=f"< {LIMIT_MB} MB, flat", met=ok,
        notes=["P4: each step in a fresh process; " + "; ".join(
            f"{s} {n:,}: peak {p['peak_mb']:.0f} MB (after imports {p['baseline_mb']:.0f}), "
            f"{p['seconds']:.0f}s" for (s, n), p in peaks.items())],
    )
