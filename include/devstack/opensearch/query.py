"""The query DSL subset the stand-in evaluates on JSON sources: match_all, match_none, ids, term,
terms, match, match_phrase, exists, range, bool. Scores are simple (term overlap), not BM25."""

from __future__ import annotations

import re

from devstack.opensearch.common import fail, str_value

_TOKEN_RE = re.compile(r"\w+", re.UNICODE)


def tokens(text) -> list[str]:
    return _TOKEN_RE.findall(str(text).lower())


def values_at(source, path: str) -> list:
    """Every value at a dotted path, arrays and objects-in-arrays flattened."""
    nodes = [source]
    for part in path.split("."):
        nxt = []
        for node in nodes:
            for item in node if isinstance(node, list) else [node]:
                if isinstance(item, dict) and part in item:
                    nxt.append(item[part])
        nodes = nxt
    out = []
    for node in nodes:
        out.extend(node if isinstance(node, list) else [node])
    return [v for v in out if v is not None]


def parsing_error(reason: str):
    return fail(400, "parsing_exception", reason)


def _single(query: dict, name: str):
    """The (field, spec) of a one-field query like {"term": {"f": ...}}."""
    if not isinstance(query, dict):
        raise parsing_error(f"[{name}] query malformed, no start_object after query name")
    fields = [(k, v) for k, v in query.items() if k not in ("boost", "_name")]
    if len(fields) != 1:
        raise parsing_error(f"[{name}] query doesn't support multiple fields, found "
                            f"[{', '.join(k for k, _ in fields)}]")
    return fields[0]


class Evaluator:
    """Scores one document (id, source) against a query; None means no match."""

    def __init__(self, types: dict[str, dict] | None = None):
        self.types = types or {}  # dotted path -> field mapping

    def _field(self, path: str) -> tuple[str, str | None]:
        """(source path, mapping type); a sub-field like `x.keyword` reads x exactly."""
        if "." in path:
            parent, sub = path.rsplit(".", 1)
            sub_spec = (self.types.get(parent) or {}).get("fields", {}).get(sub)
            if sub_spec is not None:
                return parent, sub_spec.get("type")
        spec = self.types.get(path)
        if spec is None and path.endswith(".keyword"):
            return path[: -len(".keyword")], "keyword"
        return path, (spec or {}).get("type")

    def score(self, query: dict, doc_id: str, source: dict):
        if not isinstance(query, dict) or len(query) != 1:
            raise parsing_error("query malformed, must start with start_object and have one key")
        name, body = next(iter(query.items()))
        handler = getattr(self, f"_q_{name}", None)
        if handler is None:
            raise parsing_error(f"unknown query [{name}]")
        boost = float(body.get("boost", 1.0)) if isinstance(body, dict) else 1.0
        result = handler(body, doc_id, source)
        return None if result is None else result * boost

    def _q_match_all(self, body, doc_id, source):
        return 1.0

    def _q_match_none(self, body, doc_id, source):
        return None

    def _q_ids(self, body, doc_id, source):
        values = body.get("values") if isinstance(body, dict) else None
        if not isinstance(values, list):
            raise parsing_error("[ids] query requires [values]")
        return 1.0 if doc_id in {str(v) for v in values} else None

    def _term_matches(self, path: str, wanted, doc_id: str, source: dict) -> bool:
        if path == "_id":
            return str(wanted) == doc_id
        real, kind = self._field(path)
        found = values_at(source, real)
        if kind == "text":
            return str(wanted).lower() in {t for v in found for t in tokens(v)}
        if any(v == wanted or str_value(v) == str_value(wanted) for v in found):
            return True
        # unmapped strings (ML Commons system indices): exact or as a lower-cased token
        return kind is None and any(isinstance(v, str) and str(wanted) in tokens(v) for v in found)

    def _q_term(self, body, doc_id, source):
        path, spec = _single(body, "term")
        wanted = spec.get("value") if isinstance(spec, dict) else spec
        return 1.0 if self._term_matches(path, wanted, doc_id, source) else None

    def _q_terms(self, body, doc_id, source):
        path, wanted = _single(body, "terms")
        if not isinstance(wanted, list):
            raise parsing_error("[terms] query requires an array of terms")
        return 1.0 if any(self._term_matches(path, w, doc_id, source) for w in wanted) else None

    def _q_match(self, body, doc_id, source):
        path, spec = _single(body, "match")
        text = spec.get("query") if isinstance(spec, dict) else spec
        operator = (spec.get("operator", "or") if isinstance(spec, dict) else "or").lower()
        real, kind = self._field(path)
        found = values_at(source, real)
        if kind in ("keyword", "long", "integer", "float", "double", "boolean", "date"):
            return 1.0 if any(str(v) == str(text) for v in found) else None
        wanted = tokens(text)
        have = {t for v in found for t in tokens(v)}
        hits = [t for t in wanted if t in have]
        if not hits or (operator == "and" and len(hits) != len(wanted)):
            return None
        return float(len(hits)) / max(len(have), 1) + len(hits)

    def _q_match_phrase(self, body, doc_id, source):
        path, spec = _single(body, "match_phrase")
        text = spec.get("query") if isinstance(spec, dict) else spec
        phrase = " ".join(tokens(text))
        real, _ = self._field(path)
        return 1.0 if any(phrase in " ".join(tokens(v)) for v in values_at(source, real)) else None

    def _q_exists(self, body, doc_id, source):
        real, _ = self._field(body.get("field", ""))
        return 1.0 if values_at(source, real) else None

    def _q_range(self, body, doc_id, source):
        path, spec = _single(body, "range")
        real, _ = self._field(path)
        for value in values_at(source, real):
            if all(_compare(value, op, bound) for op, bound in spec.items()
                   if op in ("gt", "gte", "lt", "lte")):
                return 1.0
        return None

    def _q_bool(self, body, doc_id, source):
        def clauses(key):
            value = body.get(key) or []
            return value if isinstance(value, list) else [value]

        total = 0.0
        for clause in clauses("must"):
            score = self.score(clause, doc_id, source)
            if score is None:
                return None
            total += score
        for clause in clauses("filter"):
            if self.score(clause, doc_id, source) is None:
                return None
        for clause in clauses("must_not"):
            if self.score(clause, doc_id, source) is not None:
                return None
        should = [s for s in (self.score(c, doc_id, source) for c in clauses("should")) if s is not None]
        needed = body.get("minimum_should_match")
        if needed is None:
            needed = 1 if clauses("should") and not clauses("must") and not clauses("filter") else 0
        elif str(needed).endswith("%"):
            needed = int(len(clauses("should")) * float(str(needed)[:-1]) / 100)
        if len(should) < int(needed):
            return None
        return total + sum(should)  # filter-only bools score 0, as in OpenSearch


def _compare(value, op: str, bound) -> bool:
    try:
        a, b = float(value), float(bound)
    except (TypeError, ValueError):
        a, b = str(value), str(bound)
    return {"gt": a > b, "gte": a >= b, "lt": a < b, "lte": a <= b}[op]
