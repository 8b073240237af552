"""What the OpenSearch front decides about request bodies, as pure functions: the k-NN guard
(mappings the node cannot serve) and the `bulk_item_429` fault (which items are taken out of a
`_bulk`, and how the node's answer and the rejected items are merged back in order)."""

from __future__ import annotations

import gzip
import json
import re
import secrets

BULK_PATH = re.compile(r"^/(?:[^/_][^/]*/)?_bulk$")
MAPPING_PATH = re.compile(
    r"^/(?:[^/_][^/]*(?:/_mappings?)?|_index_template/[^/]+|_template/[^/]+|_component_template/[^/]+)$")
REJECTED = {"type": "es_rejected_execution_exception",
            "reason": "rejected execution of coordinating operation"}


def _decoded(body: bytes, headers) -> bytes:
    return gzip.decompress(body) if headers.get("Content-Encoding", "").lower() == "gzip" else body


def native_knn_refusal(body: bytes, headers) -> str | None:
    """Why this mapping would crash a node without k-NN native libraries; None if it would not."""
    try:
        raw = _decoded(body, headers)
        doc = json.loads(raw) if raw.strip() else None
    except (ValueError, OSError):
        return None  # the node will say what is wrong with it
    found = []

    def walk(obj, trail):
        if isinstance(obj, dict):
            if obj.get("type") == "knn_vector":
                engine = (obj.get("method") or {}).get("engine") if isinstance(obj.get("method"), dict) else None
                if engine != "lucene":
                    found.append((".".join(t for t in trail if t not in ("properties", "mappings", "template")),
                              engine or "faiss (default)"))
                return
            for key, value in obj.items():
                walk(value, [*trail, key])
        elif isinstance(obj, list):
            for value in obj:
                walk(value, trail)

    walk(doc, [])
    if not found:
        return None
    field, engine = found[0]
    return (f"devstack: this OpenSearch node has no k-NN native libraries (the Maven k-NN zip ships "
            f"none), so the first write into knn_vector field [{field}] with engine [{engine}] "
            f"would crash it; set \"engine\": \"lucene\" in the field's method")



def split_bulk(body: bytes, headers, path: str, ratio: float):
    """(kept lines, {position: rejected item}, item count), or None for a body we cannot parse.
    The share `ratio` of items is rejected, spread evenly and deterministically."""
    try:
        lines = [line for line in _decoded(body, headers).split(b"\n") if line.strip()]
    except (OSError, EOFError):
        return None
    default_index = path.rsplit("/_bulk", 1)[0].lstrip("/") or None
    kept, rejected = [], {}
    i = pos = 0
    try:
        while i < len(lines):
            kind, meta = next(iter(json.loads(lines[i]).items()))
            n = 1 if kind == "delete" else 2
            if ratio and int((pos + 1) * ratio) > int(pos * ratio):
                meta = meta or {}
                doc_id = secrets.token_urlsafe(15) if meta.get("_id") is None else str(meta["_id"])
                rejected[pos] = {kind: {"_index": meta.get("_index") or default_index, "_id": doc_id,
                                        "status": 429, "error": dict(REJECTED)}}
            else:
                kept.extend(lines[i:i + n])
            i, pos = i + n, pos + 1
    except (ValueError, AttributeError, StopIteration, TypeError):
        return None
    return kept, rejected, pos


def merge_bulk(data: bytes, rejected: dict, total: int) -> bytes | None:
    """The node's `_bulk` answer with the rejected items in their places; None when the answer
    is not a bulk response with one item per kept action (an error, or filter_path)."""
    try:
        merged = json.loads(data)
        node_items = iter(merged["items"])
        merged["items"] = [rejected[p] if p in rejected else next(node_items) for p in range(total)]
    except (ValueError, KeyError, TypeError, StopIteration):
        return None
    merged["errors"] = True
    return json.dumps(merged).encode()
