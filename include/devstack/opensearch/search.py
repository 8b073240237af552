"""`_search` and `_count`: the query DSL subset from query.py plus exact k-NN (`knn`) and
`neural` (embed the text through the model's predict action, then k-NN), `_source` filtering,
sort, paging and OpenSearch's response shape. Vectors are scored with numpy over a per-field
float32 matrix cached until the index is written again."""

from __future__ import annotations

import fnmatch
import time

import numpy as np

from devstack.opensearch import knn, mapping
from devstack.opensearch.common import SEARCH_SHARDS, elapsed_ms, illegal, parse_body, respond
from devstack.opensearch.query import Evaluator, parsing_error, values_at

MAX_WINDOW = 10000
TOTAL_HITS_CAP = 10000


# --- _source filtering -----------------------------------------------------------------------
def _as_list(value) -> list[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


def source_filter(spec):
    """None = whole source, False = no source, (includes, excludes) otherwise."""
    if spec is None or spec is True:
        return None
    if spec is False:
        return False
    if isinstance(spec, str | list):
        return (_as_list(spec), [])
    if isinstance(spec, dict):
        return (_as_list(spec.get("includes", spec.get("include"))),
                _as_list(spec.get("excludes", spec.get("exclude"))))
    raise parsing_error("[_source] must be a boolean, string, array or object")


def source_filter_from_query(query: dict, default=True):
    spec = query.get("_source")
    inc, exc = query.get("_source_includes"), query.get("_source_excludes")
    if spec in ("false", "true"):
        base = spec == "true"
    elif spec:
        base = spec.split(",")
    else:
        base = default
    flt = source_filter(base)
    if inc or exc:
        includes = inc.split(",") if inc else (flt[0] if flt else [])
        return (includes, exc.split(",") if exc else [])
    return flt


def _matches(path: str, patterns: list[str]) -> bool:
    return any(fnmatch.fnmatchcase(path, p) or path.startswith(p + ".") for p in patterns)


def _may_contain(path: str, patterns: list[str]) -> bool:
    return any(p.startswith(path + ".") or "*" in p for p in patterns)


def filter_source(source: dict, flt, prefix: str = "") -> dict:
    if flt is None:
        return source
    includes, excludes = flt
    out = {}
    for key, value in source.items():
        path = f"{prefix}{key}"
        if excludes and _matches(path, excludes):
            continue
        if not includes or _matches(path, includes):
            out[key] = filter_source(value, ([], excludes), path + ".") if isinstance(value, dict) and excludes else value
        elif isinstance(value, dict) and _may_contain(path, includes):
            child = filter_source(value, flt, path + ".")
            if child:
                out[key] = child
    return out


def _wants(path: str, flt) -> bool:
    if flt is None:
        return True
    includes, excludes = flt
    if excludes and _matches(path, excludes):
        return False
    return not includes or _matches(path, includes)


def fetch_sources(store, state, sources: dict, flt) -> dict:
    """Filtered _source per id, knn vectors put back (as float32, printed like OpenSearch's
    derived source) when the filter keeps them."""
    fields = [f for f in mapping.knn_fields(state.mappings) if _wants(f, flt)]
    vectors = store.vectors_for(state.name, list(sources)) if fields and sources else {}
    out = {}
    for doc_id, source in sources.items():
        for field, vec in vectors.get(doc_id, {}).items():
            if field in fields:
                mapping.set_path(source, field, vec)
        out[doc_id] = filter_source(source, flt)
    return out


# --- the searcher ----------------------------------------------------------------------------
class Searcher:
    def __init__(self, indices, store, embed=None):
        self.indices = indices
        self.store = store
        self.embed = embed  # (model_id, text) -> list[float], for `neural`

    def _body(self, req) -> dict:
        body = parse_body(req) or {}
        if not isinstance(body, dict):
            raise parsing_error("request body must be an object")
        return body

    def handle_search(self, req):
        start = time.perf_counter()
        body = self._body(req)
        states = self.indices.resolve(req.params.get("index", "_all"))
        size = int(req.query.get("size", body.get("size", 10)))
        offset = int(req.query.get("from", body.get("from", 0)))
        if size < 0 or offset < 0:
            raise illegal("[from] parameter cannot be negative" if offset < 0 else "[size] parameter cannot be negative")
        if size + offset > MAX_WINDOW:
            raise illegal(f"Result window is too large, from + size must be less than or equal to: "
                          f"[{MAX_WINDOW}] but was [{size + offset}]. See the scroll api for a more "
                          "efficient way to request large data sets. This limit can be set by "
                          "changing the [index.max_result_window] index level setting.")
        flt = source_filter(body["_source"]) if "_source" in body else source_filter_from_query(req.query)
        query = body.get("query") or {"match_all": {}}
        sort = body.get("sort") or req.query.get("sort")
        total, hits = self.run(states, query, offset, size, flt, sort, body.get("min_score"))
        return respond(self.response(start, len(states), total, hits, body.get("track_total_hits")))

    def handle_count(self, req):
        body = self._body(req)
        states = self.indices.resolve(req.params.get("index", "_all"))
        query = body.get("query") or {"match_all": {}}
        total, _ = self.run(states, query, 0, 0, False, None, None)
        shards = dict(SEARCH_SHARDS, total=len(states), successful=len(states))
        return respond({"count": total, "_shards": shards})

    @staticmethod
    def response(start: float, shards: int, total: int, hits: list, track=None) -> dict:
        cap = TOTAL_HITS_CAP if track is None else (None if track is True else track)
        if track is False:
            total_obj = None
        elif cap is not None and total > int(cap):
            total_obj = {"value": int(cap), "relation": "gte"}
        else:
            total_obj = {"value": total, "relation": "eq"}
        scores = [h["_score"] for h in hits if h.get("_score") is not None]
        out_hits = {"max_score": max(scores) if scores else None, "hits": hits}
        if total_obj is not None:
            out_hits = {"total": total_obj, **out_hits}
        return {"took": elapsed_ms(start), "timed_out": False,
                "_shards": dict(SEARCH_SHARDS, total=shards, successful=shards), "hits": out_hits}

    def run(self, states, query: dict, offset: int, size: int, flt, sort, min_score):
        """(total, hits) of a query over some indices."""
        if not isinstance(query, dict) or len(query) != 1:
            raise parsing_error("query malformed, must start with start_object and have one key")
        kind = next(iter(query))
        if kind == "match_all" and len(states) == 1 and not sort and min_score is None:
            return self._match_all(states[0], query, offset, size, flt)
        candidates = []  # (score, order, state, id, source or None)
        for n, state in enumerate(states):
            visible = self.indices.visible_seq(state)
            if kind in ("knn", "neural"):
                for rank, (score, doc_id) in enumerate(knn.vector_query(self.store, state, kind, query[kind], visible, self.embed)):
                    candidates.append((score, (n, rank), state, doc_id, None))
            else:
                evaluator = Evaluator(mapping.field_types(state.mappings))
                for row, (doc_id, _v, _s, source) in enumerate(self.store.docs_scan(state.name, visible)):
                    score = evaluator.score(query, doc_id, source)
                    if score is not None:
                        candidates.append((score, (n, row), state, doc_id, source))
        if min_score is not None:
            candidates = [c for c in candidates if c[0] >= float(min_score)]
        total = len(candidates)
        if size == 0:
            return total, []
        ordered = _sorted(candidates, sort)
        page = ordered[offset : offset + size]
        return total, self._hits(page, flt, sort)

    def _match_all(self, state, query, offset, size, flt):
        visible = self.indices.visible_seq(state)
        total = self.store.docs_count(state.name, visible)
        if size == 0:
            return total, []
        boost = float((query["match_all"] or {}).get("boost", 1.0))
        rows = self.store.docs_page(state.name, visible, offset, size)
        page = [(boost, (0, i), state, r[0], r[3]) for i, r in enumerate(rows)]
        return total, self._hits(page, flt, None)

    def _hits(self, page, flt, sort) -> list[dict]:
        by_state: dict = {}
        for _score, _order, state, doc_id, source in page:
            by_state.setdefault(state.name, (state, {}))[1][doc_id] = source
        fetched = {}
        for name, (state, docs) in by_state.items():
            missing = [d for d, s in docs.items() if s is None]
            if missing:
                for doc_id, (_v, _s, source) in self.store.docs_by_ids(name, missing).items():
                    docs[doc_id] = source
            docs = {d: s for d, s in docs.items() if s is not None}
            fetched[name] = fetch_sources(self.store, state, docs, flt) if flt is not False else {}
        hits = []
        for score, _order, state, doc_id, _source in page:
            hit = {"_index": state.name, "_id": doc_id,
                   "_score": None if sort else np.float32(score)}
            if flt is not False and doc_id in fetched[state.name]:
                hit["_source"] = fetched[state.name][doc_id]
            if sort:
                hit["sort"] = _sort_values(_source_of(page, doc_id), sort, score)
            hits.append(hit)
        return hits

def _sort_specs(sort) -> list[tuple[str, str]]:
    out = []
    for item in sort if isinstance(sort, list) else [sort]:
        if isinstance(item, str):
            name, _, order = item.partition(":")
            out.append((name, order or ("desc" if name == "_score" else "asc")))
        elif isinstance(item, dict):
            for name, spec in item.items():
                order = spec.get("order", "asc") if isinstance(spec, dict) else spec
                out.append((name, order))
    return out


def _sorted(candidates: list, sort) -> list:
    if not sort:
        return sorted(candidates, key=lambda c: (-c[0], c[1]))
    result = sorted(candidates, key=lambda c: c[1])
    for name, order in reversed(_sort_specs(sort)):
        if name == "_score":
            result.sort(key=lambda c: c[0], reverse=order == "desc")
        elif name != "_doc":
            present = [c for c in result if values_at(c[4] or {}, name)]
            absent = [c for c in result if not values_at(c[4] or {}, name)]
            present.sort(key=lambda c: _key(values_at(c[4], name)[0]), reverse=order == "desc")
            result = present + absent  # missing values sort last
    return result


def _key(value):
    return (0, value, "") if isinstance(value, int | float) and not isinstance(value, bool) else (1, 0, str(value))


def _source_of(page, doc_id):
    return next((c[4] for c in page if c[3] == doc_id), None) or {}


def _sort_values(source, sort, score):
    out = []
    for name, _order in _sort_specs(sort):
        if name == "_score":
            out.append(score)
        else:
            vals = values_at(source, name)
            out.append(vals[0] if vals else None)
    return out


def search_objects(index_name: str, objects: list[tuple[str, dict]], req, hide: tuple = ()) -> dict:
    """`_search` over an ML Commons system index (connectors, models, tasks): no vectors, no
    refresh delay, the same query DSL, sort and response shape."""
    start = time.perf_counter()
    body = parse_body(req) or {}
    query = body.get("query") or {"match_all": {}}
    size = int(req.query.get("size", body.get("size", 10)))
    offset = int(req.query.get("from", body.get("from", 0)))
    flt = source_filter(body["_source"]) if "_source" in body else source_filter_from_query(req.query)
    evaluator = Evaluator()
    candidates = []
    for row, (obj_id, source) in enumerate(objects):
        score = evaluator.score(query, obj_id, source)
        if score is not None:
            candidates.append((score, (0, row), None, obj_id, source))
    sort = body.get("sort")
    page = _sorted(candidates, sort)[offset : offset + size]
    hits = []
    for score, _order, _state, obj_id, source in page:
        hit = {"_index": index_name, "_id": obj_id, "_version": 1, "_seq_no": 0, "_primary_term": 1,
               "_score": None if sort else np.float32(score)}
        if flt is not False:
            hit["_source"] = filter_source({k: v for k, v in source.items() if k not in hide}, flt)
        if sort:
            hit["sort"] = _sort_values(source, sort, score)
        hits.append(hit)
    return Searcher.response(start, 1, len(candidates), hits, body.get("track_total_hits"))
