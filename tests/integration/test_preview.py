"""The dry-run preview against a real S3 (SeaweedFS): exact listing, estimates within tolerance,
and the CLI's JSON and table output (the rules alone are in tests/unit/plan/test_preview.py)."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys

from batchvec.plan import estimates, preview
from tests.helpers.paths import REPO
from tests.helpers.preview_helpers import TOLERANCE, jsonl, parquet, records


def _upload(s3_stack, bucket: str) -> dict:
    """Four large JSONL files, a small one, a .gz over 1 MiB and a Parquet file."""
    s3 = s3_stack.client()
    bodies = {f"in/part-{i}.jsonl": jsonl(records(10 + i, 6000, f"p{i}")) for i in range(4)}
    bodies["in/small.jsonl"] = jsonl(records(20, 77, "s"))
    bodies["in/more.jsonl.gz"] = gzip.compress(jsonl(records(30, 15_000, "g")))
    bodies["in/table.parquet"] = parquet(records(40, 4321, "q"))
    bodies["in/empty.jsonl"] = b""  # counted, read as no records
    bodies["in/_SUCCESS"] = b""
    for key, body in bodies.items():
        s3.put_object(Bucket=bucket, Key=key, Body=body)
    del bodies["in/_SUCCESS"]  # writer metadata: not input
    return bodies


def _check(found: dict, bodies: dict, bucket: str) -> None:
    assert found["input"]["files"] == len(bodies) == 8
    assert found["input"]["bytes"] == sum(len(b) for b in bodies.values())
    largest = max(bodies, key=lambda k: len(bodies[k]))
    assert found["input"]["largest"][0] == {"name": f"s3://{bucket}/{largest}",
                                            "bytes": len(bodies[largest])}
    formats = found["records"]["formats"]
    assert formats["parquet"]["records"] == 4321 and formats["parquet"]["exact"]
    assert formats["jsonl"]["files"] == 6 and formats["jsonl"]["sampled_files"] == 3
    assert abs(formats["jsonl"]["records"] - 24_077) <= TOLERANCE * 24_077
    assert abs(formats["jsonl.gz"]["records"] - 15_000) <= TOLERANCE * 15_000
    assert not found["records"]["exact"]
    assert found["transform"]["jobs"] == 1


def test_preview_against_real_s3_lists_exactly_and_estimates_within_tolerance(s3_stack, fresh_bucket):
    bodies = _upload(s3_stack, fresh_bucket)
    s3 = s3_stack.client()
    settings = {**preview.staging_defaults(), "staging_group_mb": 2, "shards": 4,
                "instance_type": "ml.m5.xlarge", "instance_count": 2,
                **estimates.resolve({})[0]}
    found = preview.preview(f"s3://{fresh_bucket}/in/", "auto", s3, settings)
    _check(found, bodies, fresh_bucket)
    assert found["staging"]["groups"] > 1  # 2 MB groups over ~8 MB
    assert sum(g["bytes"] for g in found["staging"]["rows"]) == found["input"]["bytes"]
    # read-only: the bucket holds what was uploaded, nothing more
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=fresh_bucket)["Contents"]}
    assert keys == {*bodies, "in/_SUCCESS"}


def test_cli_prints_json_and_a_table(s3_stack, fresh_bucket):
    bodies = _upload(s3_stack, fresh_bucket)
    env = {**os.environ, "PYTHONPATH": f"{REPO / 'plugins'}:{REPO}",
           "AWS_ACCESS_KEY_ID": s3_stack.access_key, "AWS_SECRET_ACCESS_KEY": s3_stack.secret_key}
    env.pop("AIRFLOW_CONN_AWS_DEFAULT", None)
    base = [sys.executable, "-m", "batchvec.plan.preview", "--input", f"s3://{fresh_bucket}/in/",
            "--endpoint-url", s3_stack.endpoint, "--region", s3_stack.region,
            "--instance-count", "3", "--index-docs-per-s", "1000"]
    out = subprocess.run([*base, "--json"], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    found = json.loads(out.stdout)
    _check(found, bodies, fresh_bucket)
    assert found["shards"]["count"] == 6 and found["transform"]["instances"] == 3
    assert found["indexing"]["wall_s"] == round(found["records"]["total"] / 1000, 1)
    table = subprocess.run(base, env=env, capture_output=True, text=True, timeout=120)
    assert table.returncode == 0 and "transform jobs" in table.stdout
    assert "instance-hours" in table.stdout and "4,321 records" in table.stdout
    # on a worker: the Airflow connection (here the devstack S3's, as make airflow sets it)
    conn = {"conn_type": "aws", "login": s3_stack.access_key, "password": s3_stack.secret_key,
            "extra": {"region_name": s3_stack.region,
                      "service_config": {"s3": {"endpoint_url": s3_stack.endpoint}}}}
    worker = {k: v for k, v in env.items() if not k.startswith("AWS_")}
    worker["AIRFLOW_CONN_AWS_DEFAULT"] = json.dumps(conn)
    out = subprocess.run([*base[:5], "--json"], env=worker, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["input"] == found["input"]
    missing = subprocess.run([*base[:4], f"s3://{fresh_bucket}/nothing/", *base[5:]], env=env,
                             capture_output=True, text=True, timeout=120)
    assert missing.returncode == 2 and "no input objects" in missing.stderr

