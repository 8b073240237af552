"""P2's parallel staging task: one process staging one input file, as one ``stage_group`` does.

    python -m bench.p2_child <input.jsonl> <endpoints.json> <prefix>

It imports and connects first, prints ``ready``, then waits for a line on stdin, so the
parent times the staging alone (an Airflow worker's task start is not what P2 measures).
The last stdout line is the JSON result.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    from batchvec.ingest import sources, staging
    from bench.common import bench_spec
    from bench.stack import s3_client

    path, endpoints_file, prefix = argv
    endpoints = json.loads(Path(endpoints_file).read_text())
    s3 = s3_client(endpoints)
    s3.head_bucket(Bucket=endpoints["bucket"])  # connected before the clock starts
    print("ready", flush=True)
    sys.stdin.readline()
    spec = bench_spec()
    manifest = staging.stage(sources.open_input(path, s3_client=s3, spec=spec), s3_client=s3,
                             bucket=endpoints["bucket"], prefix=prefix, shards=2, spec=spec)
    print(json.dumps({"accepted": manifest.accepted, "rejected": manifest.rejected_total}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
