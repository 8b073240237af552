"""P3n: our bulk client against `helpers.parallel_bulk` into the real OpenSearch node.

The same documents as P3 (ours: the converter's action bytes; opensearch-py: action dicts
with the vector as floats), sent through the devstack's HTTPS front (TLS verified, basic
auth) into a fresh k-NN index per client and repeat, created as the pipeline loads one: the
pipeline's `index_body` (HNSW, lucene: the node has no native engines), refresh off, no
replicas. Measured in this process: CPU seconds per 100k documents and docs/s of wall time
until the last answer (the node indexes on the same cores, so docs/s is mostly the node's
pace; CPU is the client's own cost). Afterwards every index is refreshed and read back from
the node: `_count`, and an order-independent digest of (id, text, vector as float32) of
each document, which must be equal for both clients.
"""

from __future__ import annotations

import json
import logging
import os
import time
import zlib

import numpy as np

from bench.common import DIM, Row, cpu_time, interleaved
from bench.p3_bulk import FIELD, Docs, timed_parallel_bulk
from bench.stack import devstack, opensearch_connection, opensearch_session

MASK = (1 << 64) - 1
CPU_GOAL, RATE_GOAL = 0.2, 0.9


def create_index(session, base: str, index: str) -> None:
    from batchvec.index.lifecycle import index_body

    body = index_body(DIM, FIELD, "cosinesimil", engine="lucene")
    body["settings"]["index"].update({"refresh_interval": "-1", "number_of_replicas": 0})
    session.delete(f"{base}/{index}", timeout=60)
    session.put(f"{base}/{index}", json=body, timeout=60).raise_for_status()


def read_back(session, base: str, index: str) -> dict:
    """(count, distinct ids, digest) as the node holds them, after a refresh."""
    session.post(f"{base}/{index}/_refresh", timeout=300).raise_for_status()
    count = session.get(f"{base}/{index}/_count", timeout=60).json()["count"]
    digest, ids = 0, set()
    page = session.post(f"{base}/{index}/_search", params={"scroll": "2m"}, timeout=300,
                        json={"size": 1000, "sort": ["_doc"]}).json()
    while page["hits"]["hits"]:
        for hit in page["hits"]["hits"]:
            src = hit["_source"]
            vec = np.asarray(src[FIELD], dtype=np.float32).tobytes()
            ids.add(hit["_id"])
            digest += zlib.crc32(hit["_id"].encode()) << 32 | zlib.crc32(src["text"].encode() + b"\0" + vec)
        page = session.post(f"{base}/_search/scroll", timeout=300,
                            json={"scroll": "2m", "scroll_id": page["_scroll_id"]}).json()
    session.delete(f"{base}/_search/scroll", json={"scroll_id": page["_scroll_id"]}, timeout=60)
    return {"docs": count, "distinct_ids": len(ids), "digest": f"{digest & MASK:016x}"}


def send_ours(endpoints: dict, docs: Docs) -> float:
    """BulkWriter through the OpenSearchDomainHook, wired as index.load.index_shard wires them."""
    from batchvec.hooks.opensearch import OpenSearchDomainHook
    from batchvec.index.bulk_writer import BulkWriter
    from batchvec.index.load import BULK_MAX_BYTES, bulk_max_actions

    os.environ["AIRFLOW_CONN_BENCH_NODE"] = json.dumps(opensearch_connection(endpoints))
    hook = OpenSearchDomainHook("bench_node", pool_size=6)
    hook.session  # noqa: B018 - connect (Airflow connection lookup) before the clock starts
    started = cpu_time()
    counts = BulkWriter(hook.bulk, concurrency=4, max_bytes=BULK_MAX_BYTES,
                        max_actions=bulk_max_actions()).write(docs.actions())
    spent = cpu_time() - started
    if counts.failed or counts.sent != docs.n:
        raise RuntimeError(f"our writer: {counts}")
    return spent


def send_parallel_bulk(endpoints: dict, docs: Docs) -> float:
    """opensearch-py's parallel_bulk with its defaults (4 threads, 500-action chunks); the
    client's pool holds 4 connections (its default of 1 would make 3 threads handshake TLS
    again for each request, a cost of the setup, not of the helper)."""
    from opensearchpy import OpenSearch

    logging.getLogger("opensearch").setLevel(logging.WARNING)  # one info line per request
    host, port = endpoints["opensearch"].split("://", 1)[1].rsplit(":", 1)
    client = OpenSearch(hosts=[{"host": host, "port": int(port)}], use_ssl=True, verify_certs=True,
                        ca_certs=endpoints["opensearch_ca"], timeout=120,
                        pool_maxsize=4,  # one kept-alive TLS connection per thread, as ours
                        http_auth=(endpoints["opensearch_user"], endpoints["opensearch_password"]))
    return timed_parallel_bulk(client, docs)


def run(n: int, repeats: int) -> Row:
    results: dict[str, dict] = {}
    rates: dict[str, list[float]] = {"ours": [], "parallel_bulk": []}
    with devstack(("opensearch",)) as (_state, endpoints):
        session, base = opensearch_session(endpoints), endpoints["opensearch"]

        def measured(name: str, send) -> float:
            index = f"bench-p3n-{name.replace('_', '-')}"
            create_index(session, base, index)
            docs = Docs(n, index)
            wall = time.perf_counter()
            spent = send(endpoints, docs)
            rates[name].append(n / (time.perf_counter() - wall))
            results[name] = read_back(session, base, index)  # the last repeat's is compared
            session.delete(f"{base}/{index}", timeout=60)
            return spent * 100_000 / n

        # The node's first writes (class loading, JIT, a first segment) would land on
        # whichever client goes first: both warm it up before anything is measured.
        for send in (send_ours, send_parallel_bulk):
            create_index(session, base, "bench-p3n-warmup")
            send(endpoints, Docs(min(n, 1000), "bench-p3n-warmup"))
        session.delete(f"{base}/bench-p3n-warmup", timeout=60)
        cpu = interleaved(repeats, {
            "ours": lambda: measured("ours", send_ours),
            "parallel_bulk": lambda: measured("parallel_bulk", send_parallel_bulk),
        })
    a, b = results["ours"], results["parallel_bulk"]
    equal = a == b and a["docs"] == a["distinct_ids"] == n
    ratio = cpu["ours"] / cpu["parallel_bulk"]
    rate = {k: float(np.median(v)) for k, v in rates.items()}
    rate_ratio = rate["ours"] / rate["parallel_bulk"]
    return Row(
        key="P3n", what=f"bulk client into the real node, CPU s per 100k docs ({n:,} docs, "
                        "k-NN lucene, via HTTPS front)",
        unit="CPU s", ours=cpu["ours"], naive_a=cpu["parallel_bulk"],
        ratios=f"{ratio:.3f}x of (a) (1/{1 / ratio:.0f}); {rate['ours']:,.0f} vs "
               f"{rate['parallel_bulk']:,.0f} docs/s ({rate_ratio:.2f}x)",
        goal=f"<= 1/5 of (a) CPU, >= {RATE_GOAL}x (a) docs/s, equal node results",
        met=ratio <= CPU_GOAL and rate_ratio >= RATE_GOAL and equal,
        notes=[f"P3n: (a) opensearch-py helpers.parallel_bulk defaults over TLS; the node holds "
               f"ours {a['docs']} docs/{a['distinct_ids']} ids, (a) {b['docs']} docs/"
               f"{b['distinct_ids']} ids; digests of (id, text, float32 vector) read back "
               f"{'equal' if equal else 'DIFFER'} ({a['digest']} / {b['digest']})"],
    )
