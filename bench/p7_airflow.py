"""P7: N documents end to end as a real DAG run on a real Airflow, against its unavoidable parts.

A fresh devstack like P8's (S3, SageMaker with the devstack's hash-embedder-384 model: exact,
weightless vectors, so the model is not what the run waits on; the real OpenSearch node with
ML Commons behind its HTTPS front) and the private Airflow that `make chaos` uses
(tools/chaos/airflow_stack.py: api-server, scheduler with the LocalExecutor, dag-processor,
triggerer; every task try its own process), not `dag.test()`, which runs every task in one
process. The input is FILES JSONL files in the devstack S3, grouped two files per staging
group, so the `stage_group` tasks run side by side.

Measured, all in this one bench run:

- the run's wall time (trigger to the run's end, as the REST API reports it) and each task
  id's span (first start to last end over its map indexes) with the sum of its tries' time;
- the peak RSS of each task kind: every task runner process (`airflow worker -- <ti id>`,
  found by chaos.procs) is sampled with psutil every SAMPLE_S while it lives; its USS (pages
  only it holds) beside it, and the LocalExecutor supervisor it was forked from, whose
  pages the runner shares until it writes them;
- the unavoidable parts: (a) reading the input's bytes once from the devstack S3 with plain
  boto3 (one GET per file, in turn, bytes discarded), (b) bulk-indexing N documents at the
  node's rate, measured here before the run as P3n measures it (our BulkWriter, P3's
  384-d documents, a fresh lucene k-NN index with bulk-load settings, after a warm-up) at
  RATE_DOCS documents and scaled linearly to N (the node's cost per document grows with the
  index, so the scaled figure is if anything low: the ratio is not flattered).

A run that does not index every input record, or fails, is a bug, not a number: the row raises.
"""

from __future__ import annotations

import json
import math
import sys
import tempfile
import time
from collections import defaultdict
from datetime import datetime
from pathlib import Path

from bench.common import REPO, Row, write_input
from bench.stack import devstack, opensearch_session, s3_client

GOAL_MB = 256
MODEL = "hash-embedder-384"
INDEX = "bench-p7"
RUN_ID = "bench-p7"
FILES = 8
FILES_PER_GROUP = 2
SHARDS = 4
# Bulk lanes per index_shard task. The DAG's default 4 with 4 shards indexing at once is 16
# requests of 5 MB in flight: the devstack node (1 GB heap) refuses that with 429
# (indexing pressure: max_coordinating_and_primary_bytes, 10% of the heap) longer than
# BulkWriter's backoff waits, and every try fails (measured 2026-12-02). 1 lane per shard
# is 4 in flight, as many as the single client of the node-rate measurement (P3n's) has.
BULK_LANES = 1
SAMPLE_S = 0.2
USS_EVERY_S = 1.0
RUN_TIMEOUT_S = 3 * 3600
INPUT_PREFIX = "bench-p7/input/"
# Task kinds in DAG order (the table's order); anything else is appended.
KINDS = ("plan", "list_input", "shard_numbers", "stage_group", "stage_shard", "stage",
         "ensure_model", "batch_predict", "check_outputs", "prepare_index", "index_shard",
         "restore_index", "switch_alias", "report", "cleanup")


def rate_docs(docs: int) -> int:
    """Documents for the node's rate measurement: 5% of the run, 2,000..50,000."""
    return min(docs, max(2_000, min(50_000, docs // 20)))


# -- input --------------------------------------------------------------------------------
def stage_input(endpoints: dict, docs: int, tmp: Path) -> dict:
    """FILES JSONL files of unique documents (ids doc-0..doc-N-1) uploaded to the devstack S3."""
    s3, bucket = s3_client(endpoints), endpoints["bucket"]
    per = math.ceil(docs / FILES)
    sizes, keys, start = [], [], 0
    for n in range(FILES):
        count = min(per, docs - start)
        if count <= 0:
            break
        path = tmp / f"part-{n:02d}.jsonl"
        sizes.append(write_input(path, count, unique=True, start=start))
        key = f"{INPUT_PREFIX}part-{n:02d}.jsonl"
        s3.upload_file(str(path), bucket, key)
        path.unlink()
        keys.append(key)
        start += count
    return {"bucket": bucket, "keys": keys, "sizes": sizes, "bytes": sum(sizes),
            "uri": f"s3://{bucket}/{INPUT_PREFIX}"}


def read_input_once(endpoints: dict, staged: dict) -> float:
    """Seconds to GET every input byte once with plain boto3 (files in turn, 1 MiB reads)."""
    s3 = s3_client(endpoints)
    started, got = time.perf_counter(), 0
    for key in staged["keys"]:
        body = s3.get_object(Bucket=staged["bucket"], Key=key)["Body"]
        for chunk in body.iter_chunks(1 << 20):
            got += len(chunk)
    seconds = time.perf_counter() - started
    if got != staged["bytes"]:
        raise RuntimeError(f"read {got} input bytes back, not {staged['bytes']}")
    return seconds


def node_rate(endpoints: dict, n: int) -> float:
    """The node's bulk-indexing rate (docs/s), as P3n measures ours: warm-up, then n docs."""
    from bench.p3_bulk import Docs
    from bench.p3_node import create_index, send_ours

    session, base = opensearch_session(endpoints), endpoints["opensearch"]
    create_index(session, base, "bench-p7-rate-warmup")
    send_ours(endpoints, Docs(min(n, 1000), "bench-p7-rate-warmup"))
    session.delete(f"{base}/bench-p7-rate-warmup", timeout=60)
    create_index(session, base, "bench-p7-rate")
    started = time.perf_counter()
    send_ours(endpoints, Docs(n, "bench-p7-rate"))
    rate = n / (time.perf_counter() - started)  # to the last answer, as P3n (no refresh)
    session.post(f"{base}/bench-p7-rate/_refresh", timeout=600).raise_for_status()
    count = session.get(f"{base}/bench-p7-rate/_count", timeout=60).json()["count"]
    session.delete(f"{base}/bench-p7-rate", timeout=60)
    if count != n:
        raise RuntimeError(f"the rate measurement's index holds {count} documents, not {n}")
    return rate


# -- the run and its sampler --------------------------------------------------------------
class Sampler:
    """Peak RSS (and USS) of every task runner process, keyed by its ti id (one per try)."""

    def __init__(self, stack_id: str, root: str) -> None:
        self.stack_id, self.root = stack_id, root
        self.rss: dict[str, int] = defaultdict(int)
        self.uss: dict[str, int] = defaultdict(int)
        self.supervisor_rss: dict[str, int] = defaultdict(int)
        self.pids: dict[str, set[int]] = defaultdict(set)
        self.samples = 0
        self._uss_at: dict[int, float] = {}

    def sample(self) -> None:
        import psutil

        from chaos import procs

        now = time.monotonic()
        for ti_id, proc in procs.task_workers(self.stack_id, self.root).items():
            try:
                rss = proc.memory_info().rss
                self.rss[ti_id] = max(self.rss[ti_id], rss)
                self.pids[ti_id].add(proc.pid)
                if now - self._uss_at.get(proc.pid, 0.0) >= USS_EVERY_S:
                    self._uss_at[proc.pid] = now
                    self.uss[ti_id] = max(self.uss[ti_id], proc.memory_full_info().uss)
                    parent = proc.parent()
                    if parent is not None:
                        self.supervisor_rss[ti_id] = max(self.supervisor_rss[ti_id],
                                                         parent.memory_info().rss)
            except (psutil.Error, OSError):
                continue
        self.samples += 1


def _when(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def run_dag(stack, conf: dict, root: Path) -> dict:
    """Trigger the run, sample its task runners until it ends; its timings and peaks."""
    sampler = Sampler(stack.stack_id, str(root))
    seen: dict[str, dict] = {}
    started = time.monotonic()
    stack.trigger(RUN_ID, conf)
    state, last_rest = "queued", 0.0
    while time.monotonic() - started < RUN_TIMEOUT_S:
        now = time.monotonic()
        if now - last_rest >= 1.0:
            last_rest = now
            state = stack.dag_run(RUN_ID)["state"]
            seen.update({t["id"]: t for t in stack.task_instances(RUN_ID)})
            if state in ("success", "failed"):
                break
        sampler.sample()
        time.sleep(SAMPLE_S)
    else:
        state = f"timeout after {RUN_TIMEOUT_S}s"
    observed = time.monotonic() - started
    run = stack.dag_run(RUN_ID)
    final = stack.task_instances(RUN_ID)
    seen.update(try_ids(stack.home / "airflow.db"))  # tries too short for a REST poll
    seen.update({t["id"]: t for t in final})
    begin, end = _when(run.get("start_date")), _when(run.get("end_date"))
    return {"state": state, "observed_s": observed,
            "wall_s": (end - begin).total_seconds() if begin and end else observed,
            "queued_s": ((begin - _when(run["queued_at"])).total_seconds()
                         if begin and run.get("queued_at") else 0.0),
            "stages": stages(final, begin), "memory": memory(sampler, seen),
            "retried": {label(t): t["try_number"] for t in final if (t["try_number"] or 0) > 1},
            "not_success": {label(t): t["state"] for t in final if t["state"] != "success"},
            "samples": sampler.samples}


def try_ids(db: Path) -> dict[str, dict]:
    """ti id -> {task_id, map_index} of every try of the run, from the stack's Airflow DB
    (earlier tries are in task_instance_history; the REST API's tries carry no id)."""
    import sqlite3
    import uuid

    out: dict[str, dict] = {}
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        for table, col in (("task_instance_history", "task_instance_id"), ("task_instance", "id")):
            rows = con.execute(f"SELECT {col}, task_id, map_index FROM {table} WHERE run_id = ?",
                               (RUN_ID,)).fetchall()
            for ti_id, task_id, map_index in rows:
                key = str(uuid.UUID(ti_id)) if isinstance(ti_id, str) and len(ti_id) == 32 else str(ti_id)
                out[key] = {"task_id": task_id, "map_index": map_index}
    finally:
        con.close()
    return out


def label(ti: dict) -> str:
    return ti["task_id"] + (f"[{ti['map_index']}]" if ti.get("map_index", -1) >= 0 else "")


def _order(kind: str) -> tuple[int, str]:
    return (KINDS.index(kind) if kind in KINDS else len(KINDS), kind)


def stages(tis: list[dict], run_start: datetime | None) -> dict[str, dict]:
    """Per task id: span (first start to last end, s), busy (sum of the instances' time),
    instances, and the start offset from the run's start."""
    by: dict[str, list[tuple[datetime, datetime]]] = defaultdict(list)
    for t in tis:
        a, b = _when(t.get("start_date")), _when(t.get("end_date"))
        if a and b:
            by[t["task_id"]].append((a, b))
    out = {}
    for kind in sorted(by, key=_order):
        spans = by[kind]
        first, last = min(a for a, _ in spans), max(b for _, b in spans)
        out[kind] = {"span_s": round((last - first).total_seconds(), 1),
                     "busy_s": round(sum((b - a).total_seconds() for a, b in spans), 1),
                     "n": len(spans),
                     "at_s": round((first - run_start).total_seconds(), 1) if run_start else None}
    return out


def memory(sampler: Sampler, tis: dict[str, dict]) -> dict[str, dict]:
    """Per task kind, MB: peak runner RSS, its USS at the sampled peaks, the supervisor's
    RSS, and how many tries (processes) were sampled."""
    mb = 1 << 20
    out: dict[str, dict] = {}
    for ti_id, rss in sampler.rss.items():
        kind = tis.get(ti_id, {}).get("task_id", "unmatched")
        entry = out.setdefault(kind, {"rss_mb": 0.0, "uss_mb": 0.0, "supervisor_mb": 0.0,
                                      "tries": 0, "processes": 0})
        entry["rss_mb"] = round(max(entry["rss_mb"], rss / mb), 1)
        entry["uss_mb"] = round(max(entry["uss_mb"], sampler.uss.get(ti_id, 0) / mb), 1)
        entry["supervisor_mb"] = round(max(entry["supervisor_mb"],
                                           sampler.supervisor_rss.get(ti_id, 0) / mb), 1)
        entry["tries"] += 1
        entry["processes"] += len(sampler.pids[ti_id])
    return dict(sorted(out.items(), key=lambda kv: _order(kv[0])))


def index_count(endpoints: dict, alias: str) -> int:
    session, base = opensearch_session(endpoints), endpoints["opensearch"]
    session.post(f"{base}/{alias}/_refresh", timeout=600).raise_for_status()
    return session.get(f"{base}/{alias}/_count", timeout=60).json()["count"]


def report_of(endpoints: dict, run_id: str) -> dict | None:
    from batchvec.plan.naming import run_key

    s3 = s3_client(endpoints)
    try:
        obj = s3.get_object(Bucket=endpoints["bucket"],
                            Key=f"runs/{run_key('batch_embeddings', run_id)}/report.json")
    except s3.exceptions.NoSuchKey:
        return None
    return json.loads(obj["Body"].read())


# -- the row ------------------------------------------------------------------------------
def measure(docs: int, keep_logs: Path | None = None) -> dict:
    """Everything P7 reports, as a dict (the smoke test checks it; ``row`` renders it)."""
    from chaos.airflow_stack import AirflowStack  # before scripts/, whose chaos.py shadows it

    sys.path.append(str(REPO / "scripts"))
    from devstack import launcher, seed
    from devstack_connections import airflow_env as devstack_airflow_env

    with tempfile.TemporaryDirectory(prefix="bench-p7-") as tmp, \
            devstack(launcher.SERVICES) as (_state, endpoints):
        root = Path(tmp).resolve()
        t0 = time.monotonic()
        staged = stage_input(endpoints, docs, root)
        print(f"P7: {docs:,} documents, {staged['bytes'] / 1e6:.1f} MB in {len(staged['keys'])} "
              f"files, generated and uploaded in {time.monotonic() - t0:.0f}s", file=sys.stderr,
              flush=True)
        model, endpoint = seed.ensure_hash_model(endpoints, MODEL)
        n_rate = rate_docs(docs)
        rate = node_rate(endpoints, n_rate)
        read_s = read_input_once(endpoints, staged)
        print(f"P7: node rate {rate:,.0f} docs/s ({n_rate:,} docs); input read once in "
              f"{read_s:.2f}s", file=sys.stderr, flush=True)
        group_mb = sum(staged["sizes"][:FILES_PER_GROUP]) * 0.99 / 1e6
        conf = {"input_uri": staged["uri"], "index_name": INDEX, "metadata_fields": ["lang"],
                "sagemaker_model_name": model, "sagemaker_endpoint_name": endpoint,
                "shards": SHARDS, "bulk_concurrency": BULK_LANES, "staging_group_mb": group_mb}
        stack = AirflowStack(root, devstack_airflow_env(endpoints), retries=2)
        try:
            t0 = time.monotonic()
            stack.start()
            print(f"P7: Airflow up in {time.monotonic() - t0:.0f}s; triggering", file=sys.stderr,
                  flush=True)
            result = run_dag(stack, conf, root)
        finally:
            left = stack.stop()
            if keep_logs is not None:
                import shutil

                shutil.copytree(root / "logs", keep_logs, dirs_exist_ok=True)
        result.update(docs=docs, input_bytes=staged["bytes"], files=len(staged["keys"]),
                      groups=math.ceil(len(staged["keys"]) / FILES_PER_GROUP), shards=SHARDS,
                      read_s=read_s, rate_docs_per_s=rate, rate_docs=n_rate,
                      index_s=docs / rate, left_alive=left,
                      indexed=index_count(endpoints, INDEX) if "success" in result["state"] else None,
                      report=report_of(endpoints, RUN_ID))
    result["unavoidable_s"] = result["read_s"] + result["index_s"]
    result["ratio"] = result["wall_s"] / result["unavoidable_s"]
    print(f"P7 result: {json.dumps(result, default=str)}", file=sys.stderr, flush=True)
    return result


def check(result: dict) -> None:
    """The run succeeded and indexed every input record; each task kind's RSS was sampled."""
    docs = result["docs"]
    if "success" not in result["state"]:
        raise RuntimeError(f"the DAG run ended {result['state']}: {result['not_success']}")
    if result["indexed"] != docs:
        raise RuntimeError(f"the index holds {result['indexed']} documents, not {docs}")
    totals = (result.get("report") or {}).get("totals") or {}
    if totals.get("records_in") != docs or totals.get("created") != docs:
        raise RuntimeError(f"the report counts {totals.get('records_in')} in and "
                           f"{totals.get('created')} created, not {docs}: {totals}")
    missing = [k for k in result["stages"] if not result["memory"].get(k, {}).get("rss_mb")]
    if missing:
        raise RuntimeError(f"no RSS sampled for task kinds {missing}")


def row(result: dict) -> Row:
    check(result)
    docs, mem, st = result["docs"], result["memory"], result["stages"]
    peak_kind = max(mem, key=lambda k: mem[k]["rss_mb"])
    peak = mem[peak_kind]["rss_mb"]
    over = [k for k, m in mem.items() if m["rss_mb"] >= GOAL_MB]
    notes = [
        f"P7: real Airflow (scheduler + LocalExecutor, triggerer, a process per task try), "
        f"{result['files']} input files ({result['input_bytes'] / 1e6:,.0f} MB) in "
        f"{result['groups']} staging groups, {result['shards']} shards x {BULK_LANES} bulk lane, "
        f"model {MODEL}; run wall "
        f"{result['wall_s']:.1f}s (+{result['queued_s']:.1f}s queued; trigger to observed end "
        f"{result['observed_s']:.1f}s); index holds {result['indexed']:,} of {docs:,}",
        "P7 stages (span s [busy s over n]): " + ", ".join(
            f"{k} {v['span_s']:.1f}" + (f" [{v['busy_s']:.1f}/{v['n']}]" if v["n"] > 1 else "")
            for k, v in st.items()),
        "P7 peak RSS MB per task kind (runner RSS / its USS; supervisor RSS): " + ", ".join(
            f"{k} {m['rss_mb']:.0f}/{m['uss_mb']:.0f}; {m['supervisor_mb']:.0f}"
            for k, m in mem.items()),
        f"P7 unavoidable: (a) read {result['input_bytes'] / 1e6:,.0f} MB once with boto3 "
        f"{result['read_s']:.1f}s, (b) {docs:,} docs at the node's {result['rate_docs_per_s']:,.0f} "
        f"docs/s (measured on {result['rate_docs']:,} docs before the run, scaled linearly) "
        f"{result['index_s']:.1f}s; sum {result['unavoidable_s']:.1f}s",
    ]
    if result["retried"]:
        notes.append(f"P7 retried tries: {result['retried']}")
    return Row(
        key="P7", what=f"end to end on real Airflow, hash model ({docs:,} docs)", unit="s",
        ours=result["wall_s"], naive_a=result["read_s"], naive_b=result["index_s"],
        ratios=f"{result['ratio']:.2f}x (a)+(b); peak RSS {peak:.0f} MB ({peak_kind})",
        goal=f"RSS < {GOAL_MB} MB per task kind", met=not over,
        notes=notes + ([f"P7: RSS at or over {GOAL_MB} MB: {', '.join(over)}"] if over else []),
    )


def run(docs: int) -> Row:
    return row(measure(docs))
