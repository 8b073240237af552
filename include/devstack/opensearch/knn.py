"""Exact k-NN for `knn` and `neural` queries: every vector of a field lives in a float32 numpy
matrix cached per index generation; candidates are ranked with float32 maths, then the chosen
ones are re-scored in float64 with the k-NN plugin's score translation per space type."""

from __future__ import annotations

import numpy as np

from devstack.opensearch import mapping
from devstack.opensearch.common import illegal
from devstack.opensearch.query import Evaluator, parsing_error


def vector_query(store, state, kind: str, body: dict, visible: int, embed=None):
    """[(score, id)] of a `knn` or `neural` query on one index, best first."""
    field, spec = _one_field(body, kind)
    if kind == "neural":
        text = spec.get("query_text")
        if not text or not spec.get("model_id"):
            raise illegal("[neural] requires query_text and model_id")
        if embed is None:
            raise illegal("neural search needs ML Commons")
        spec = dict(spec, vector=embed(spec["model_id"], text))
    knn = mapping.knn_fields(state.mappings)
    if field not in knn:
        raise illegal(f"Field '{field}' is not knn_vector type.")
    dim, space = knn[field]
    vector = spec.get("vector")
    if not isinstance(vector, list) or len(vector) != dim:
        raise illegal(f"Query vector has invalid dimension: {len(vector) if isinstance(vector, list) else 0}. "
                      f"Dimension should be: {dim}")
    k = spec.get("k")
    radial = spec.get("min_score") is not None or spec.get("max_distance") is not None
    if k is None and not radial:
        raise illegal(f"[{kind}] requires exactly one of k, distance or score to be set")
    if k is not None and not (0 < int(k) <= 10000):
        raise illegal(f"[{kind}] requires k to be in the range (0, 10000]")
    ids, matrix, scores = _score_all(store, state, field, dim, space, np.asarray(vector, dtype=np.float32), visible)
    if spec.get("filter"):
        evaluator = Evaluator(mapping.field_types(state.mappings))
        keep = {d for d, _v, _s, src in store.docs_scan(state.name, visible)
                if evaluator.score(spec["filter"], d, src) is not None}
        scores = np.where(np.fromiter((i in keep for i in ids), bool, len(ids)), scores, -np.inf)
    if spec.get("min_score") is not None:
        scores = np.where(scores >= float(spec["min_score"]), scores, -np.inf)
    if spec.get("max_distance") is not None and space in ("l2", "l1", "linf"):
        scores = np.where(scores >= 1 / (1 + float(spec["max_distance"])), scores, -np.inf)
    valid = np.flatnonzero(np.isfinite(scores))
    limit = len(valid) if k is None else min(int(k), len(valid))
    if limit < len(valid):
        part = valid[np.argpartition(-scores[valid], limit - 1)[:limit]]
    else:
        part = valid
    exact = _exact_scores(matrix[part], np.asarray(vector, dtype=np.float32), space)
    order = np.lexsort((part, -exact))  # score desc, index order on ties
    return [(float(exact[i]), ids[part[i]]) for i in order]



def _score_all(store, state, field, dim, space, q, visible):
    """Approximate scores of every vector (float32 maths, for ranking); -inf if hidden."""
    cache = state.vector_cache.get(field)
    if cache is None or cache[0] != state.generation:
        generation = state.generation
        ids, cseq, matrix = store.vectors_matrix(state.name, field, dim)
        sq = np.einsum("ij,ij->i", matrix, matrix, dtype=np.float64)
        cache = (generation, ids, cseq, matrix, sq, np.sqrt(sq))
        state.vector_cache[field] = cache
    _gen, ids, cseq, matrix, sq, norms = cache
    if space in ("l1", "linf"):
        diff = np.abs(matrix - q)
        dist = diff.sum(axis=1) if space == "l1" else diff.max(axis=1, initial=0.0)
        scores = 1.0 / (1.0 + dist.astype(np.float64))
    elif space in ("l2", "cosinesimil", "innerproduct"):
        dots = (matrix @ q).astype(np.float64) if len(ids) else np.zeros(0)
        q64 = q.astype(np.float64)
        if space == "l2":
            scores = 1.0 / (1.0 + np.maximum(sq - 2 * dots + q64 @ q64, 0.0))
        elif space == "cosinesimil":
            denom = norms * np.linalg.norm(q64)
            cos = np.divide(dots, denom, out=np.zeros_like(dots), where=denom > 0)
            scores = np.maximum((2.0 - (1.0 - cos)) / 2.0, 0.0)
        else:
            scores = _ip_score(dots)
    else:
        raise illegal(f"space type [{space}] is not supported for exact search by the devstack")
    return ids, matrix, np.where(cseq <= visible, scores, -np.inf)




def _ip_score(dots):
    # k-NN: d = -ip; score = 1/(1+d) when d >= 0, else -d + 1
    return np.where(dots > 0, dots + 1.0, 1.0 / (1.0 - np.minimum(dots, 0.0)))


def _exact_scores(rows: np.ndarray, q: np.ndarray, space: str) -> np.ndarray:
    """OpenSearch's score translation per space type, in float64 on the selected vectors."""
    rows, q = rows.astype(np.float64), q.astype(np.float64)
    if space == "l2":
        return 1.0 / (1.0 + ((rows - q) ** 2).sum(axis=1))
    if space == "l1":
        return 1.0 / (1.0 + np.abs(rows - q).sum(axis=1))
    if space == "linf":
        return 1.0 / (1.0 + np.abs(rows - q).max(axis=1, initial=0.0))
    dots = rows @ q
    if space == "innerproduct":
        return _ip_score(dots)
    denom = np.linalg.norm(rows, axis=1) * np.linalg.norm(q)
    cos = np.divide(dots, denom, out=np.zeros_like(dots), where=denom > 0)
    return np.maximum((2.0 - (1.0 - cos)) / 2.0, 0.0)


def _one_field(body, kind):
    if not isinstance(body, dict) or len(body) != 1:
        raise parsing_error(f"[{kind}] query malformed, expects exactly one field")
    field, spec = next(iter(body.items()))
    if not isinstance(spec, dict):
        raise parsing_error(f"[{kind}] query malformed, no start_object after field name")
    return field, spec
