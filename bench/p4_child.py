"""P4's measured process: runs one pipeline step on generated input, prints its peak RSS.

    python -m bench.p4_child stage <input.jsonl> <endpoints.json>
    python -m bench.p4_child index <records> <endpoints.json> <bulk port>

``stage`` runs the staging task's code (``sources.open_input`` + ``staging.stage``) on a
local file into the devstack's S3. ``index`` runs ``index.load.index_shard`` itself, with
the real OpenSearchDomainHook pointed at the null `_bulk` server and the shard's `.out` streamed
from a generator in place of the S3 GET (10M lines are ~50 GB: no disk here holds that);
everything else (report, DLQ) goes to the devstack's S3. Progress lines go to stderr as
the task log would show them; the last stdout line is the JSON result.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path

from bench.common import OutLines, bench_spec


def rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_mb() -> float:
    """VmHWM, not ru_maxrss: Linux keeps ru_maxrss across exec, so a child started by a
    big parent would report the parent's peak; the high-water mark belongs to this image."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def s3_of(endpoints: dict):
    from bench.stack import s3_client

    return s3_client(endpoints)


def stage(path: str, endpoints: dict) -> dict:
    from batchvec.ingest import sources, staging

    s3 = s3_of(endpoints)
    baseline = rss_mb()
    spec = bench_spec()
    source = sources.open_input(path, s3_client=s3, spec=spec)
    total = sum(f.size for f in source.files)
    log = logging.getLogger("batchvec.tasks.staging")
    manifest = staging.stage(
        source, s3_client=s3, bucket=endpoints["bucket"], prefix=f"bench-p4/{Path(path).stem}",
        shards=2, spec=spec,
        progress=lambda p: log.info("staging: %s", staging.progress_line(p, total)))
    return {"baseline_mb": baseline, "records": manifest.records_in}


class GeneratedBody:
    """A streaming GET body whose bytes come from a generator (read(n) as botocore's)."""

    def __init__(self, chunks) -> None:
        self._chunks = chunks
        self._buf = b""

    def read(self, n: int = -1) -> bytes:
        while n < 0 or len(self._buf) < n:
            nxt = next(self._chunks, None)
            if nxt is None:
                break
            self._buf += nxt
        if n < 0:
            n = len(self._buf)
        out, self._buf = self._buf[:n], self._buf[n:]
        return out

    def close(self) -> None:
        self._chunks = iter(())


class StreamedOutputs:
    """The real S3 client, except that GETs of `.out` keys stream generated lines."""

    def __init__(self, client, records: int) -> None:
        self._client, self._records = client, records
        self.exceptions = client.exceptions

    def head_object(self, **kwargs):
        if kwargs["Key"].endswith(".out"):  # its size is never needed whole: a huge bound
            return {"ETag": f'"generated-{self._records}"', "ContentLength": 1 << 62}
        return self._client.head_object(**kwargs)

    def get_object(self, **kwargs):
        if kwargs["Key"].endswith(".out"):
            return {"Body": GeneratedBody(OutLines().chunks(self._records))}
        return self._client.get_object(**kwargs)

    def __getattr__(self, name):
        return getattr(self._client, name)


def index(records: int, endpoints: dict, bulk_port: int) -> dict:
    from batchvec.hooks.opensearch import OpenSearchDomainHook
    from batchvec.index import load
    from batchvec.plan.run_plan import Plan

    os.environ["AIRFLOW_CONN_BENCH_BULK"] = json.dumps({
        "conn_type": "generic", "host": "127.0.0.1", "port": bulk_port, "schema": "http",
        "extra": {"auth": "none"}})
    s3 = StreamedOutputs(s3_of(endpoints), records)
    plan = Plan(dag_id="bench", run_id="p4", run_key=f"bench-p4-{records}", ds="2026-01-01",
                input_uri="-", input_format="jsonl", id_field="id", text_field="text",
                metadata_fields=[], index_name="bench-index", vector_field="embedding",
                space_type="cosinesimil", knn_engine="faiss", bucket=endpoints["bucket"],
                run_prefix=f"bench-p4/{records}", shards=1, wait_timeout=60,
                max_reject_ratio=0.0, keep_staging=False, keep_outputs=True, bulk_concurrency=4)
    hook = OpenSearchDomainHook("bench_bulk", pool_size=plan.bulk_concurrency + 2)
    baseline = rss_mb()
    result = load.index_shard(plan, {"name": "part-00000.jsonl", "records": records},
                                  hook, s3, {"index": plan.index_name, "dimension": 384})
    if result["created"] + result["updated"] != records:
        raise RuntimeError(f"indexing lost documents: {result}")
    return {"baseline_mb": baseline, "records": result["output_lines"]}


def main(argv: list[str]) -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(message)s")
    for noisy in ("botocore", "boto3", "urllib3", "airflow"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    started = time.monotonic()
    if argv[0] == "stage":
        out = stage(argv[1], json.loads(Path(argv[2]).read_text()))
    else:
        out = index(int(argv[1]), json.loads(Path(argv[2]).read_text()), int(argv[3]))
    out.update(peak_mb=peak_mb(), seconds=round(time.monotonic() - started, 1))
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1:])
