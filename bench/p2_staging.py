"""P2: staging throughput (validate + shard + upload to the devstack's S3), MB/s of input.

Ours is the pipeline's own staging (``sources.open_input`` + ``staging.stage``) on local
JSONL: one task on the whole file, and (the row's figure) two staging tasks side by side,
separate processes on one half each, as two ``stage_group`` tasks run on a worker
(``bench.p2_child``). (a) is the way it is often done: pandas ``read_json(lines=True)``,
drop rows without id or text, ``to_json(lines=True)``, upload. (b) is the floor: boto3's
managed upload of the same bytes with no validation at all.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import Row, bench_spec, interleaved, write_input
from bench.stack import REPO, devstack, python_env, s3_client

TASKS = 2  # parallel staging tasks: this machine's cores

SHARDS = 2  # the DAG's default for one SageMaker instance


def stage_ours(s3, bucket: str, path: Path, prefix: str) -> dict:
    from batchvec.ingest import sources, staging

    spec = bench_spec()
    manifest = staging.stage(sources.open_input(str(path), s3_client=s3, spec=spec),
                             s3_client=s3, bucket=bucket, prefix=prefix, shards=SHARDS, spec=spec)
    return {"accepted": manifest.accepted, "rejected": manifest.rejected_total}


def stage_pandas(s3, bucket: str, path: Path, prefix: str) -> dict:
    import pandas as pd

    df = pd.read_json(path, lines=True, dtype=False)
    ok = df["id"].notna() & df["text"].astype(str).str.strip().ne("") & df["text"].notna()
    good = df[ok].rename(columns={"id": "_id"})
    body = good.to_json(orient="records", lines=True, force_ascii=False).encode()
    s3.upload_fileobj(io.BytesIO(body), bucket, f"{prefix}/input/all.jsonl")
    return {"accepted": int(ok.sum()), "rejected": int((~ok).sum())}


def split_input(path: Path, parts: int) -> list[Path]:
    """``parts`` files of whole lines, about equal in bytes."""
    data = path.read_bytes()
    out, start = [], 0
    for i in range(parts):
        end = len(data) if i == parts - 1 else data.index(b"\n", len(data) * (i + 1) // parts) + 1
        part = path.with_name(f"{path.stem}-{i}.jsonl")
        part.write_bytes(data[start:end])
        out.append(part)
        start = end
    return out


def stage_parallel(endpoints_file: Path, parts: list[Path], prefix: str) -> tuple[float, dict]:
    """Wall seconds from "go" until every task has staged its part, and their counts."""
    procs = [subprocess.Popen([sys.executable, "-m", "bench.p2_child", str(part),
                               str(endpoints_file), f"{prefix}/g{i}"], cwd=REPO,
                              env=python_env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True) for i, part in enumerate(parts)]
    try:
        for p in procs:
            if p.stdout.readline().strip() != "ready":
                raise RuntimeError("a P2 staging task did not start")
        started = time.perf_counter()
        for p in procs:
            p.stdin.write("go\n")
            p.stdin.flush()
        results = [json.loads(p.communicate(timeout=3600)[0].strip().splitlines()[-1])
                   for p in procs]
        seconds = time.perf_counter() - started
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    if any(p.returncode for p in procs):
        raise RuntimeError("a P2 staging task failed")
    return seconds, {k: sum(r[k] for r in results) for k in ("accepted", "rejected")}


def upload_plain(s3, bucket: str, path: Path, prefix: str) -> dict:
    s3.upload_file(str(path), bucket, f"{prefix}/input/{path.name}")
    return {}


def run(records: int, repeats: int) -> Row:
    with tempfile.TemporaryDirectory(prefix="bench-p2-") as tmp, devstack(("s3",)) as (_, ep):
        path = Path(tmp) / "input.jsonl"
        size = write_input(path, records)
        parts = split_input(path, TASKS)
        endpoints_file = Path(tmp) / "endpoints.json"
        endpoints_file.write_text(json.dumps(ep))
        s3 = s3_client(ep)
        bucket = ep["bucket"]
        counts: dict[str, dict] = {}
        rounds = {"n": 0}

        def timed(name: str, fn) -> float:
            rounds["n"] += 1
            started = time.perf_counter()
            counts[name] = fn(s3, bucket, path, f"bench-p2/{name}-{rounds['n']}")
            return size / 1e6 / (time.perf_counter() - started)

        def parallel() -> float:
            rounds["n"] += 1
            seconds, counts["parallel"] = stage_parallel(endpoints_file, parts,
                                                         f"bench-p2/parallel-{rounds['n']}")
            return size / 1e6 / seconds

        mbps = interleaved(repeats, {
            "parallel": parallel,
            "ours": lambda: timed("ours", stage_ours),
            "pandas": lambda: timed("pandas", stage_pandas),
            "plain": lambda: timed("plain", upload_plain),
        })
    ours, one, a, b = mbps["parallel"], mbps["ours"], mbps["pandas"], mbps["plain"]
    if counts["parallel"] != counts["ours"]:
        raise RuntimeError(f"P2: parallel staging counted {counts['parallel']}, one task "
                           f"{counts['ours']}")
    met = ours >= 10 * a and ours >= 0.8 * b
    return Row(
        key="P2", what=f"staging: validate+shard+upload to S3, {TASKS} tasks side by side "
                       f"({records:,} records, {size / 1e6:.0f} MB)",
        unit="MB/s", ours=ours, naive_a=a, naive_b=b,
        ratios=f"{ours / a:.1f}x (a), {ours / b:.2f}x (b); one task {one:.1f} MB/s",
        goal=">= 10x (a), >= 0.8x (b)", met=met,
        notes=[f"P2: {TASKS} staging processes on half the input each (stage_group), (a) "
               f"pandas read_json(lines)+to_json+upload, (b) boto3 upload_file of the same "
               f"bytes, no validation; wall time, SeaweedFS on this machine; staged "
               f"{counts['parallel']['accepted']:,} records in {SHARDS} shards; one staging "
               f"task on the whole file: {one:.1f} MB/s"],
    )
