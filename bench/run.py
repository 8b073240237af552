"""`make bench`: the project's own stages against the naive way, side by side in one run.

Prints one table (row, what, ours, naive (a), (b), ratios, goal, met). Every number is a
median of ``--repeats`` runs taken round-robin with its baselines in this same process, so
machine noise hits both sides alike. Exits non-zero only when a row crashed; missed goals
are listed after the table.

    .venv/bin/python bench/run.py                  default sizes (the goals' sizes)
    .venv/bin/python bench/run.py --quick          small sizes, about three minutes
    .venv/bin/python bench/run.py --only P1,P3 --repeats 5 --p1-docs 50000
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
for sub in ("plugins", "tools", "dags", ""):
    if str(REPO / sub) not in sys.path:
        sys.path.insert(0, str(REPO / sub))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from bench.common import Row  # noqa: E402
from bench.table import render, summary  # noqa: E402

ROWS = ("P1", "P2", "P3", "P3N", "P4", "P5", "P6", "P7", "P8")
DEFAULTS = {"p1_docs": 50_000, "p2_records": 200_000, "p3_docs": 100_000, "p3n_docs": 20_000,
            "p4_sizes": "100000,10000000", "p5_docs": 10_000, "p6_docs": 2_000,
            "p7_docs": 1_000_000, "p8_docs": 100_000, "repeats": 3}
QUICK = {"p1_docs": 10_000, "p2_records": 50_000, "p3_docs": 20_000, "p3n_docs": 5_000,
         "p4_sizes": "20000,200000", "p5_docs": 300, "p6_docs": 300, "p7_docs": 5_000,
         "p8_docs": 5_000, "repeats": 3}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes for a quick run")
    parser.add_argument("--only", default=",".join(ROWS), help="rows to run, e.g. P1,P3")
    parser.add_argument("--repeats", type=int, help="repeats per measurement (median)")
    parser.add_argument("--p1-docs", type=int, help=".out lines converted per repeat")
    parser.add_argument("--p2-records", type=int, help="input records staged per repeat")
    parser.add_argument("--p3-docs", type=int, help="documents sent per repeat")
    parser.add_argument("--p3n-docs", type=int, help="documents sent into the real node per repeat")
    parser.add_argument("--p4-sizes", help="two input sizes (records), small,large")
    parser.add_argument("--p5-docs", type=int, help="documents through the whole DAG")
    parser.add_argument("--p6-docs", type=int, help="passages through the model container")
    parser.add_argument("--p7-docs", type=int,
                        help="documents end to end through a real Airflow's DAG run (P7)")
    parser.add_argument("--p8-docs", type=int, help="documents in P8's full run and its rerun")
    args = parser.parse_args(argv)
    base = QUICK if args.quick else DEFAULTS
    for name, value in base.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    args.only = [r.strip().upper() for r in args.only.split(",") if r.strip()]
    unknown = sorted(set(args.only) - set(ROWS))
    if unknown:
        parser.error(f"unknown rows {unknown}; choose from {', '.join(ROWS)}")
    return args


def run_row(key: str, args: argparse.Namespace) -> Row:
    if key == "P1":
        from bench import p1_convert

        return p1_convert.run(args.p1_docs, args.repeats)
    if key == "P2":
        from bench import p2_staging

        return p2_staging.run(args.p2_records, args.repeats)
    if key == "P3":
        from bench import p3_bulk

        return p3_bulk.run(args.p3_docs, args.repeats)
    if key == "P3N":
        from bench import p3_node

        return p3_node.run(args.p3n_docs, args.repeats)
    if key == "P4":
        from bench import p4_memory

        small, large = (int(s) for s in args.p4_sizes.split(","))
        return p4_memory.run(small, large)
    if key == "P6":
        from bench import p6_container

        return p6_container.run(args.p6_docs, args.repeats)
    if key == "P7":
        from bench import p7_airflow

        return p7_airflow.run(args.p7_docs)
    if key == "P8":
        from bench import p8_incremental

        return p8_incremental.run(args.p8_docs)
    from bench import p5_dag

    return p5_dag.run(args.p5_docs)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    rows: list[Row] = []
    for key in args.only:
        started = time.monotonic()
        print(f"bench: {key} ...", file=sys.stderr, flush=True)
        try:
            row = run_row(key, args)
        except Exception as exc:  # one row's crash must not hide the others' results
            traceback.print_exc()
            row = Row(key=key, what="(crashed)", unit="", error=f"{type(exc).__name__}: {exc}")
        print(f"bench: {key} done in {time.monotonic() - started:.0f}s", file=sys.stderr,
              flush=True)
        rows.append(row)
    print(render(rows))
    print(summary(rows))
    return 1 if any(r.error for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
