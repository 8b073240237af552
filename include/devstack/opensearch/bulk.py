"""Document writes: `_bulk` (index/create/update/delete) and the single-document APIs, with
k-NN vector validation, dynamic mapping, per-item errors, and the `bulk_item_429` fault.
A bulk is validated in Python, then written in one SQLite transaction per index."""

from __future__ import annotations

import copy
import time

import numpy as np

from devstack import faults
from devstack.httpbase import HttpError
from devstack.opensearch import mapping
from devstack.opensearch.common import dumps, elapsed_ms, fail, loads, new_id, respond
from devstack.opensearch.indices import validate_name
from devstack.opensearch.mapping import ItemError

OPS = ("index", "create", "update", "delete")
REJECTED = {"type": "es_rejected_execution_exception",
            "reason": "rejected execution of coordinating operation"}


def _vector_error(field, doc_id, preview, err_type, reason):
    return ItemError("mapper_parsing_exception",
                     f"failed to parse field [{field}] of type [knn_vector] in document with id "
                     f"'{doc_id}'. Preview of field's value: '{preview}'",
                     {"type": err_type, "reason": reason})


def check_vector(value, dim: int, space: str, field: str, doc_id: str, arr=None) -> np.ndarray:
    """Validate one knn_vector value as the k-NN field mapper does; float32 array or ItemError."""
    if arr is None:
        if not isinstance(value, list):
            value = [value]
        for item in value:
            if isinstance(item, bool) or item is None or isinstance(item, dict | list):
                raise _vector_error(field, doc_id, item, "illegal_argument_exception",
                                    f"Current token [{type(item).__name__}] is not a number")
        try:
            with np.errstate(over="ignore"):  # too big for float32 -> inf, refused below
                arr = np.asarray(value, dtype=np.float32)
        except (TypeError, ValueError):
            bad = next((v for v in value if not _is_number(v)), value)
            raise _vector_error(field, doc_id, bad, "number_format_exception",
                                f'For input string: "{bad}"') from None
    if arr.shape != (dim,):
        raise _vector_error(field, doc_id, "null", "illegal_argument_exception",
                            f"Vector dimension mismatch. Expected: {dim}, Given: {arr.size}")
    if not np.isfinite(arr).all():
        nan = bool(np.isnan(arr).any())
        raise _vector_error(field, doc_id, "NaN" if nan else "Infinity", "illegal_argument_exception",
                            f"KNN vector values cannot be {'NaN' if nan else 'infinity'}")
    if space == "cosinesimil" and not arr.any():
        raise _vector_error(field, doc_id, "null", "illegal_argument_exception",
                            "zero vector is not supported when space type is [cosinesimil]")
    return arr


def _is_number(value) -> bool:
    try:
        float(value)
        return not isinstance(value, bool)
    except (TypeError, ValueError):
        return False


def _batch_vectors(values: list):
    """Fast path: one numpy conversion for a bulk's worth of well-formed vectors."""
    if not values:
        return None
    try:
        with np.errstate(over="ignore"):
            return np.array(values, dtype=np.float32)
    except (TypeError, ValueError):
        return None


def _deep_merge(target: dict, update: dict) -> None:
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(target.get(key), dict):
            _deep_merge(target[key], value)
        else:
            target[key] = value


class Writer:
    def __init__(self, indices, store):
        self.indices = indices
        self.store = store

    # --- the write engine -----------------------------------------------------------------
    def apply(self, state, ops: list[dict]) -> list[dict]:
        """Apply ops (dicts: op, id, body, error) to one index; returns the item results."""
        with state.lock:
            return self._apply(state, ops)

    def _apply(self, state, ops: list[dict]) -> list[dict]:
        knn = mapping.knn_fields(state.mappings)
        for field, (dim, space) in knn.items():  # pre-pass: validate new sources' vectors
            cand = [op for op in ops if op["op"] in ("index", "create") and op.get("error") is None
                    and isinstance(op.get("body"), dict)]
            values = [mapping.pop_path(op["body"], field) for op in cand]
            good = [i for i, v in enumerate(values) if isinstance(v, list) and len(v) == dim]
            batch = _batch_vectors([values[i] for i in good])
            rows = {} if batch is None else {i: batch[n] for n, i in enumerate(good)}
            for i, (op, value) in enumerate(zip(cand, values, strict=True)):
                if value is None:
                    continue
                try:
                    vec = check_vector(value, dim, space, field, op["id"], rows.get(i))
                    op.setdefault("vectors", {})[field] = vec
                except ItemError as err:
                    op["error"] = err
        existing = self.store.docs_state(state.name, [op["id"] for op in ops])
        need_source = [op["id"] for op in ops if op["op"] == "update" and op["id"] in existing]
        loaded = self.store.docs_by_ids(state.name, need_source) if need_source else {}
        loaded_vecs = self.store.vectors_for(state.name, need_source) if need_source else {}
        mappings = copy.deepcopy(state.mappings)
        meta_changed = False
        cur: dict = {}  # id -> None (deleted) | dict(version, cseq, source, vectors)
        deleted_once: set[str] = set()
        items = []
        for op in ops:
            doc_id = op["id"]
            if doc_id in cur:
                prev = cur[doc_id]
            elif doc_id in existing:
                version, _seq, cseq = existing[doc_id]
                prev = {"version": version, "cseq": cseq, "lazy": True}
            else:
                prev = None
            try:
                if op.get("error") is not None:
                    raise op["error"]
                kind = op["op"]
                if kind == "delete":
                    state.meta["seq"] += 1
                    if prev is None:
                        items.append(self._item(state, op, 1, "not_found", 404))
                        continue
                    cur[doc_id] = None
                    deleted_once.add(doc_id)
                    items.append(self._item(state, op, prev["version"] + 1, "deleted", 200))
                    continue
                if kind == "create" and prev is not None:
                    raise ItemError("version_conflict_engine_exception",
                                    f"[{doc_id}]: version conflict, document already exists "
                                    f"(current version [{prev['version']}])", None, 409,
                                    index=state.name, shard="0", index_uuid=state.uuid)
                if kind == "update":
                    source, vectors, noop = self._updated(state, op, prev, loaded, loaded_vecs, knn)
                    if noop:
                        items.append(self._item(state, op, prev["version"], "noop", 200, noop=True))
                        continue
                else:
                    source, vectors = op["body"], op.get("vectors", {})
                meta_changed |= mapping.dynamic_update(mappings, source, doc_id)
                state.meta["seq"] += 1
                seq = state.meta["seq"]
                if prev is None:
                    cur[doc_id] = {"version": 1, "cseq": seq, "seq": seq, "source": source,
                                   "vectors": vectors}
                    items.append(self._item(state, op, 1, "created", 201))
                else:
                    version = prev["version"] + 1
                    cur[doc_id] = {"version": version, "cseq": prev["cseq"], "seq": seq,
                                   "source": source, "vectors": vectors}
                    items.append(self._item(state, op, version, "updated", 200))
            except ItemError as err:
                items.append({"_index": state.name, "_id": doc_id, "status": err.status,
                              "error": err.body})
        self._persist(state, cur, deleted_once, knn, mappings if meta_changed else None)
        return items

    def _updated(self, state, op, prev, loaded, loaded_vecs, knn):
        body = op["body"] if isinstance(op["body"], dict) else {}
        doc = body.get("doc")
        if doc is None:
            if "script" in body:
                raise ItemError("illegal_argument_exception", "scripted updates are not supported by the devstack")
            raise ItemError("action_request_validation_exception",
                            "Validation Failed: 1: script or doc is missing;")
        doc = copy.deepcopy(doc)
        if prev is None:
            upsert = doc if body.get("doc_as_upsert") else body.get("upsert")
            if upsert is None:
                raise ItemError("document_missing_exception", f"[{op['id']}]: document missing",
                                None, 404, index=state.name, shard="0", index_uuid=state.uuid)
            upsert = copy.deepcopy(upsert)
            vectors = {f: check_vector(v, d, s, f, op["id"]) for f, (d, s) in knn.items()
                       if (v := mapping.pop_path(upsert, f)) is not None}
            return upsert, vectors, False
        if prev.get("lazy"):
            source = loaded[op["id"]][2]
            vectors = dict(loaded_vecs.get(op["id"], {}))
        else:
            source, vectors = copy.deepcopy(prev["source"]), dict(prev["vectors"])
        new_vectors = {f: check_vector(v, d, s, f, op["id"]) for f, (d, s) in knn.items()
                       if (v := mapping.pop_path(doc, f)) is not None}
        merged = copy.deepcopy(source)
        _deep_merge(merged, doc)
        changed_vecs = any(f not in vectors or not np.array_equal(vectors[f], v)
                           for f, v in new_vectors.items())
        if merged == source and not changed_vecs and body.get("detect_noop", True):
            return merged, vectors, True
        vectors.update(new_vectors)
        return merged, vectors, False

    def _item(self, state, op, version, result, status, noop=False) -> dict:
        shards = {"total": 0, "successful": 0, "failed": 0} if noop else state.shards_info()
        return {"_index": state.name, "_id": op["id"], "_version": version, "result": result,
                "_shards": shards, "_seq_no": state.meta["seq"], "_primary_term": 1,
                "status": status}

    def _persist(self, state, cur, deleted_once, knn, mappings) -> None:
        docs, vectors, drops = [], [], []
        for doc_id, doc in cur.items():
            if doc is None:
                continue
            docs.append((doc_id, doc["version"], doc["seq"], doc["cseq"], dumps(doc["source"])))
            for field in knn:
                vec = doc["vectors"].get(field)
                if vec is None:
                    drops.append((field, doc_id))
                else:
                    vectors.append((field, doc_id, doc["cseq"], vec.tobytes()))
        if mappings is not None:
            state.meta["mappings"] = mappings
        if state.immediate():
            state.meta["refreshed"] = state.meta["seq"]
        self.store.write(state.name, docs, vectors, drops, sorted(deleted_once), state.meta)
        state.generation += 1
        state.vector_cache.clear()

    # --- _bulk ----------------------------------------------------------------------------
    def handle_bulk(self, req):
        start = time.perf_counter()
        ops = self._parse(req.body, req.params.get("index"))
        reject = faults.take("bulk_item_429")
        ratio = float(reject.get("ratio", 1.0)) if reject else 0.0
        results: list = [None] * len(ops)
        by_index: dict[str, list] = {}
        for pos, op in enumerate(ops):
            if ratio and int((pos + 1) * ratio) > int(pos * ratio):  # spread evenly, deterministic
                results[pos] = {"_index": op["index"], "_id": op["id"], "status": 429,
                                "error": dict(REJECTED)}
                continue
            by_index.setdefault(op["index"], []).append((pos, op))
        touched = []
        for name, group in by_index.items():
            try:
                validate_name(name)
                state = self.indices.get_or_create(name)
            except Exception as exc:  # invalid name: every item of that index fails
                err = exc.body["error"] if hasattr(exc, "body") else {"type": "exception", "reason": str(exc)}
                err = {k: v for k, v in err.items() if k != "root_cause"}
                for pos, op in group:
                    results[pos] = {"_index": name, "_id": op["id"], "status": 400, "error": err}
                continue
            touched.append(state)
            for (pos, _op), item in zip(group, self.apply(state, [op for _, op in group]), strict=True):
                results[pos] = item
        if req.query.get("refresh") in ("", "true", "wait_for"):
            for state in touched:
                self.indices.refresh(state)
        items = [{op["op"]: res} for op, res in zip(ops, results, strict=True)]
        return respond({"took": elapsed_ms(start), "errors": any("error" in r for r in results),
                        "items": items})

    def _parse(self, body: bytes, default_index: str | None) -> list[dict]:
        if not body.strip():
            raise fail(400, "action_request_validation_exception",
                       "Validation Failed: 1: no requests added;")
        if not body.endswith(b"\n"):
            raise fail(400, "illegal_argument_exception",
                       "The bulk request must be terminated by a newline [\\n]")
        lines = [line for line in body.split(b"\n") if line and not line.isspace()]
        ops, i = [], 0
        while i < len(lines):
            try:
                action = loads(lines[i])
            except ValueError as exc:
                raise fail(400, "json_parse_exception", f"Malformed action/metadata line [{i + 1}]: {exc}") from None
            if not isinstance(action, dict) or len(action) != 1:
                raise fail(400, "illegal_argument_exception",
                           f"Malformed action/metadata line [{i + 1}], expected START_OBJECT or END_OBJECT")
            kind, meta = next(iter(action.items()))
            if kind not in OPS:
                raise fail(400, "illegal_argument_exception",
                           f"Malformed action/metadata line [{i + 1}], expected field [create], "
                           f"[delete], [index] or [update] but found [{kind}]")
            meta = meta or {}
            op = {"op": kind, "index": meta.get("_index") or default_index,
                  "id": None if meta.get("_id") is None else str(meta["_id"])}
            if not op["index"]:
                raise fail(400, "action_request_validation_exception", "Validation Failed: 1: index is missing;")
            i += 1
            if kind != "delete":
                if i >= len(lines):
                    raise fail(400, "illegal_argument_exception", "The bulk request must be terminated by a newline [\\n]")
                try:
                    op["body"] = loads(lines[i])
                except ValueError as exc:
                    op["body"] = None
                    op["error"] = ItemError("mapper_parsing_exception", "failed to parse",
                                            {"type": "json_parse_exception", "reason": str(exc)})
                i += 1
            if op["id"] is None:
                if kind in ("update", "delete"):
                    raise fail(400, "action_request_validation_exception", "Validation Failed: 1: id is missing;")
                op["id"] = new_id()
            if op.get("error") is None and kind != "delete" and not isinstance(op["body"], dict):
                op["error"] = ItemError("mapper_parsing_exception", "failed to parse, document is empty")
            ops.append(op)
        return ops

    # --- single-document APIs -------------------------------------------------------------
    def single(self, req, kind: str):
        name = req.params["index"]
        body = None
        if kind != "delete":
            try:
                body = loads(req.body) if req.body.strip() else None
            except ValueError as exc:
                raise fail(400, "mapper_parsing_exception", f"failed to parse: {exc}") from None
        if kind == "index" and req.query.get("op_type") == "create":
            kind = "create"
        op = {"op": kind, "index": name, "id": req.params.get("id") or new_id(), "body": body}
        if kind != "delete" and not isinstance(body, dict):
            raise fail(400, "parse_exception", "request body is required")
        if kind in ("update", "delete"):
            state = self.indices.get(name)
        else:
            validate_name(name)
            state = self.indices.get_or_create(name)
        item = self.apply(state, [op])[0]
        if req.query.get("refresh") in ("", "true", "wait_for"):
            self.indices.refresh(state)
        if "error" in item:
            err = item["error"]
            cause = {k: v for k, v in err.items() if k != "caused_by"}
            raise_body = {"error": {"root_cause": [cause], **err}, "status": item["status"]}
            raise HttpError(item["status"], raise_body)
        status = item.pop("status")
        return respond(item, status)
