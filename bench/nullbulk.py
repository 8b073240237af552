"""A small, fast `_bulk` endpoint for the bulk benchmarks, run as its own process.

Answers every action as OpenSearch does (per item ``created`` the first time an id is seen,
``updated`` after) and counts what arrived, so two clients can be shown to leave equal
server-side results: documents, distinct ids, and an order-independent digest of each
(id, source) with the source parsed and re-dumped canonically (so separators and key order
do not matter, values do). ``--light`` only counts documents (for sizes where a set of all
ids would not fit). ``python -m bench.nullbulk [--light]`` prints its port, then serves.

    GET  /_bench/stats   the counters        POST /_bench/reset   zero them
"""

from __future__ import annotations

import argparse
import sys
import threading
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import orjson

_SORT = orjson.OPT_SORT_KEYS
_MASK = (1 << 64) - 1


class Stats:
    def __init__(self, light: bool) -> None:
        self.light = light
        self.lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        self.ids: set[str] = set()
        self.docs = self.created = self.updated = self.requests = self.bytes = 0
        self.digest = 0

    def as_dict(self) -> dict:
        return {"docs": self.docs, "distinct_ids": len(self.ids), "created": self.created,
                "updated": self.updated, "requests": self.requests, "bytes": self.bytes,
                "digest": f"{self.digest:016x}"}


def _item(index: str, doc_id: str, created: bool) -> dict:
    return {"index": {"_index": index, "_id": doc_id, "_version": 1,
                      "result": "created" if created else "updated",
                      "_shards": {"total": 1, "successful": 1, "failed": 0},
                      "_seq_no": 0, "_primary_term": 1, "status": 201 if created else 200}}


_LIGHT_ITEM = orjson.dumps(_item("-", "-", True))


def answer_light(body: bytes, stats: Stats) -> bytes:
    """Counting only: one canned ``created`` item per action pair (cheap at 10M docs)."""
    n = body.count(b"\n") // 2
    with stats.lock:
        stats.requests += 1
        stats.bytes += len(body)
        stats.docs += n
        stats.created += n
    return b'{"took":1,"errors":false,"items":[' + b",".join([_LIGHT_ITEM] * n) + b"]}"


def answer_bulk(body: bytes, stats: Stats) -> bytes:
    """The `_bulk` response for an NDJSON body of index actions; updates ``stats``."""
    lines = body.split(b"\n")
    if lines and not lines[-1]:
        lines.pop()
    items, digest, pairs = [], 0, []
    for k in range(0, len(lines) - 1, 2):
        meta = orjson.loads(lines[k])
        action = meta.get("index") or meta.get("create") or {}
        doc_id = str(action.get("_id"))
        pairs.append((action.get("_index", ""), doc_id))
        if not stats.light:
            canon = orjson.dumps(orjson.loads(lines[k + 1]), option=_SORT)
            digest += zlib.crc32(doc_id.encode()) << 32 | zlib.crc32(canon)
    with stats.lock:
        stats.requests += 1
        stats.bytes += len(body)
        stats.docs += len(pairs)
        stats.digest = (stats.digest + digest) & _MASK
        for index, doc_id in pairs:
            created = stats.light or doc_id not in stats.ids
            if not stats.light:
                stats.ids.add(doc_id)
            stats.created += created
            stats.updated += not created
            items.append(_item(index, doc_id, created))
    return orjson.dumps({"took": 1, "errors": False, "items": items})


def make_handler(stats: Stats) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive: clients reuse connections

        def log_message(self, *args) -> None:  # quiet: thousands of requests
            pass

        def _reply(self, status: int, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            if self.path.startswith("/_bench/stats"):
                with stats.lock:
                    self._reply(200, orjson.dumps(stats.as_dict()))
            else:
                self._reply(200, b'{"version":{"number":"3.3.0","distribution":"opensearch"}}')

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if self.path.startswith("/_bench/reset"):
                with stats.lock:
                    stats.reset()
                self._reply(200, b"{}")
            elif self.path.split("?")[0].endswith("/_bulk"):
                answer = answer_light if stats.light else answer_bulk
                self._reply(200, answer(body, stats))
            else:
                self._reply(404, b'{"error":{"type":"not_found","reason":"bench server"}}')

        do_PUT = do_POST

    return Handler


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--light", action="store_true", help="count documents only")
    args = parser.parse_args()
    server = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(Stats(args.light)))
    server.daemon_threads = True
    print(server.server_address[1], flush=True)
    sys.stdout.close()
    server.serve_forever()


if __name__ == "__main__":
    main()
