"""P3: CPU seconds of the bulk client per 100k documents, ours vs `helpers.parallel_bulk`.

Both clients get the same documents in their natural form: ours the action bytes the
converter yields (vector text kept as the model wrote it), opensearch-py the action dicts
its helpers take (vector as a list of floats), and both send to the same null `_bulk`
server in another process, so only the client's CPU is counted (this process, all
threads). The server's counters prove both left the same documents behind.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator

import orjson

from bench.common import OutLines, Row, cpu_time, interleaved
from bench.stack import NullBulk, null_bulk

INDEX = "bench-index"
FIELD = "embedding"


class Docs:
    """The benchmark's documents, generated on the fly (never all in memory)."""

    def __init__(self, n: int, index: str = INDEX) -> None:
        gen = OutLines()
        self.n, self.index = n, index
        self.vec_text = [v[1:-1] for v in gen.vectors]  # b"[...]" without the outer list
        self.vec_list = [orjson.loads(v) for v in self.vec_text]
        self.text_json = gen.texts
        self.text_str = [orjson.loads(t) for t in gen.texts]

    def actions(self) -> Iterator[tuple[str, bytes]]:
        head = b'{"index":{"_index":"' + self.index.encode() + b'","_id":"'
        mid = b'"}}\n{"text":'
        vec = b',"' + FIELD.encode() + b'":'
        nt, nv = len(self.text_json), len(self.vec_text)
        for i in range(self.n):
            doc_id = f"doc-{i}"
            yield doc_id, b"".join((head, doc_id.encode(), mid, self.text_json[i % nt], vec,
                                    self.vec_text[i % nv], b"}\n"))

    def dicts(self) -> Iterator[dict]:
        nt, nv = len(self.text_str), len(self.vec_list)
        for i in range(self.n):
            yield {"_index": self.index, "_id": f"doc-{i}",
                   "_source": {"text": self.text_str[i % nt], FIELD: self.vec_list[i % nv]}}


def send_ours(server: NullBulk, docs: Docs) -> float:
    """Our BulkWriter through the OpenSearchDomainHook, as index.load.index_shard wires them."""
    from batchvec.hooks.opensearch import OpenSearchDomainHook
    from batchvec.index.bulk_writer import BulkWriter

    os.environ["AIRFLOW_CONN_BENCH_BULK"] = json.dumps(server.connection())
    hook = OpenSearchDomainHook("bench_bulk", pool_size=6)
    hook.session  # noqa: B018 - connect (Airflow connection lookup) before the clock starts
    started = cpu_time()
    counts = BulkWriter(hook.bulk, concurrency=4).write(docs.actions())
    spent = cpu_time() - started
    if counts.failed or counts.sent != docs.n:
        raise RuntimeError(f"our writer: {counts}")
    return spent


def send_parallel_bulk(server: NullBulk, docs: Docs) -> float:
    """opensearch-py's parallel_bulk with its defaults (4 threads, 500-action chunks)."""
    from opensearchpy import OpenSearch

    logging.getLogger("opensearch").setLevel(logging.WARNING)  # one info line per request
    client = OpenSearch(hosts=[{"host": "127.0.0.1", "port": server.port}], use_ssl=False)
    return timed_parallel_bulk(client, docs)


def timed_parallel_bulk(client, docs: Docs) -> float:
    """CPU seconds of parallel_bulk sending every document (all must succeed); closes it."""
    from opensearchpy import helpers

    started = cpu_time()
    ok = sum(1 for success, _ in helpers.parallel_bulk(client, docs.dicts()) if success)
    spent = cpu_time() - started
    client.close()
    if ok != docs.n:
        raise RuntimeError(f"parallel_bulk: {ok} of {docs.n} succeeded")
    return spent


def run(n: int, repeats: int) -> Row:
    docs = Docs(n)
    results: dict[str, dict] = {}
    with null_bulk() as server:

        def measured(name: str, send) -> float:
            server.reset()
            spent = send(server, docs)
            results[name] = server.stats()
            return spent * 100_000 / n

        cpu = interleaved(repeats, {
            "ours": lambda: measured("ours", send_ours),
            "parallel_bulk": lambda: measured("parallel_bulk", send_parallel_bulk),
        })
    a, b = results["ours"], results["parallel_bulk"]
    keys = ("docs", "distinct_ids", "created", "updated", "digest")
    equal = all(a[k] == b[k] for k in keys) and a["docs"] == n
    ratio = cpu["ours"] / cpu["parallel_bulk"]
    return Row(
        key="P3", what=f"bulk client, CPU s per 100k docs ({n:,} docs to a local _bulk)",
        unit="CPU s", ours=cpu["ours"], naive_a=cpu["parallel_bulk"],
        ratios=f"{ratio:.3f}x of (a) (1/{1 / ratio:.0f})",
        goal="<= 1/5 of (a), equal server results", met=ratio <= 0.2 and equal,
        notes=[f"P3: (a) opensearch-py helpers.parallel_bulk defaults; server saw "
               f"ours {a['docs']} docs/{a['distinct_ids']} ids in {a['requests']} requests, "
               f"(a) {b['docs']} docs/{b['distinct_ids']} ids in {b['requests']} requests; "
               f"content digests {'equal' if equal else 'DIFFER'} ({a['digest']})"],
    )
