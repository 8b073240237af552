"""P2: staging throughput (validate + shard + upload to the devstack's S3), MB/s of input.

Ours is the pipeline's own staging (``sources.open_input`` + ``staging.stage``) on a local
JSONL file. (a) is the way it is often done: pandas ``read_json(lines=True)``, drop rows
without id or text, ``to_json(lines=True)``, upload. (b) is the floor: boto3's managed
upload of the same bytes with no validation at all.
"""

from __future__ import annotations

import io
import tempfile
import time
from pathlib import Path

from bench.common import Row, interleaved, write_input
from bench.stack import devstack, s3_client

SHARDS = 2  # the DAG's default for one SageMaker instance


def stage_ours(s3, bucket: str, path: Path, prefix: str) -> dict:
    from batchvec import sources, staging

    manifest = staging.stage(sources.open_input(str(path), s3_client=s3), s3_client=s3,
                             bucket=bucket, prefix=prefix, shards=SHARDS, metadata_fields=("lang",))
    return {"accepted": manifest.accepted, "rejected": manifest.rejected_total}


def stage_pandas(s3, bucket: str, path: Path, prefix: str) -> dict:
    import pandas as pd

    df = pd.read_json(path, lines=True, dtype=False)
    ok = df["id"].notna() & df["text"].astype(str).str.strip().ne("") & df["text"].notna()
    good = df[ok].rename(columns={"id": "_id"})
    body = good.to_json(orient="records", lines=True, force_ascii=False).encode()
    s3.upload_fileobj(io.BytesIO(body), bucket, f"{prefix}/input/all.jsonl")
    return {"accepted": int(ok.sum()), "rejected": int((~ok).sum())}


def upload_plain(s3, bucket: str, path: Path, prefix: str) -> dict:
    s3.upload_file(str(path), bucket, f"{prefix}/input/{path.name}")
    return {}


def run(records: int, repeats: int) -> Row:
    with tempfile.TemporaryDirectory(prefix="bench-p2-") as tmp, devstack(("s3",)) as (_, ep):
        path = Path(tmp) / "input.jsonl"
        size = write_input(path, records)
        s3 = s3_client(ep)
        bucket = ep["bucket"]
        counts: dict[str, dict] = {}
        rounds = {"n": 0}

        def timed(name: str, fn) -> float:
            rounds["n"] += 1
            started = time.perf_counter()
            counts[name] = fn(s3, bucket, path, f"bench-p2/{name}-{rounds['n']}")
            return size / 1e6 / (time.perf_counter() - started)

        mbps = interleaved(repeats, {
            "ours": lambda: timed("ours", stage_ours),
            "pandas": lambda: timed("pandas", stage_pandas),
            "plain": lambda: timed("plain", upload_plain),
        })
    ours, a, b = mbps["ours"], mbps["pandas"], mbps["plain"]
    met = ours >= 10 * a and ours * 1.25 >= b
    return Row(
        key="P2", what=f"staging: validate+shard+upload to S3 ({records:,} records, "
                       f"{size / 1e6:.0f} MB)",
        unit="MB/s", ours=ours, naive_a=a, naive_b=b,
        ratios=f"{ours / a:.1f}x (a), {b / ours:.2f}x slower than (b)",
        goal=">= 10x (a), within 1.25x of (b)", met=met,
        notes=[f"P2: (a) pandas read_json(lines)+to_json+upload, (b) boto3 upload_file of the "
               f"same bytes, no validation; wall time, SeaweedFS on this machine; ours staged "
               f"{counts['ours']['accepted']:,} records in {SHARDS} shards"],
    )
