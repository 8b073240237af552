"""The physical index a run writes: its body (k-NN mapping), creating or checking it, and its
bulk-load settings in and out (shared with other runs loading it: index/load_settings).

What a retry needs is in S3 under the run prefix, not in XCom: the index's original settings.
"""

from __future__ import annotations

import logging

from batchvec.hooks.opensearch import OpenSearchDomainHook
from batchvec.index import load_settings
from batchvec.ingest import changes
from batchvec.plan.run_plan import Plan

log = logging.getLogger(__name__)


def index_body(dimension: int, vector_field: str, space_type: str, engine: str = "faiss",
               text_field: str = "text") -> dict:
    """A k-NN index for the model's vectors: HNSW on `engine`, text searchable too, and the
    fingerprint block incremental runs compare with (changes.py)."""
    return {
        "settings": {"index": {"knn": True, "number_of_shards": 1}},
        "mappings": {"properties": {
            vector_field: {"type": "knn_vector", "dimension": dimension,
                           "method": {"name": "hnsw", "engine": engine, "space_type": space_type}},
            text_field: {"type": "text"},
            changes.FIELD: changes.MAPPING,
        }},
    }


def existing_dimension(mapping: dict, vector_field: str) -> int | None:
    field = mapping.get("properties", {}).get(vector_field)
    if field is None:
        return None
    if field.get("type") != "knn_vector":
        raise ValueError(f"field {vector_field!r} exists but is {field.get('type')!r}, not knn_vector")
    return int(field["dimension"])


def prepare_index(plan: Plan, hook: OpenSearchDomainHook, dimension: int, target) -> dict:
    """Create the run's physical index if missing (or check its dimension). Only an index no
    alias serves yet (a build) gets bulk-load settings, counted in with load_settings.enter (the
    originals are those from before the first run loading it); one that may be serving
    queries keeps its replicas and refresh interval."""
    index = target.physical
    created = False
    if not hook.index_exists(index):
        try:
            hook.create_index(index, index_body(dimension, plan.vector_field, plan.space_type,
                                                plan.knn_engine))
            created = True
            log.info("created index %s (knn_vector %d-d, %s, %s)", index, dimension,
                     plan.space_type, plan.knn_engine)
        except Exception as exc:
            if "resource_already_exists" not in str(exc):  # a parallel run made it first
                raise
    mapping = hook.get_mapping(index)
    have = existing_dimension(mapping, plan.vector_field)
    if have is not None and have != dimension:
        raise ValueError(f"index {index} has {plan.vector_field} of dimension {have}, "
                         f"but the model produces {dimension}: use another index_name"
                         + (" (or migrate it to an alias: README)" if target.mode == "legacy"
                            else ""))
    if changes.FIELD not in mapping.get("properties", {}):  # an index from before fingerprints
        hook.put_mapping(index, {"properties": {changes.FIELD: changes.MAPPING}})
    original = None if target.serving else load_settings.enter(hook, index, plan.run_key)
    return {"index": index, "alias": plan.index_name, "created": created,
            "dimension": dimension, "original": original, "bulk_load": not target.serving}


def restore_index(manifest: dict, hook: OpenSearchDomainHook, plan: Plan) -> dict | None:
    """This run's part of a build's bulk load is over; the last run loading the index
    restores its settings (see load_settings). Returns them when restored now."""
    from batchvec.index.aliases import Target

    target = Target.from_dict(manifest["target"])
    if not hook.index_exists(target.physical):
        log.info("index %s does not exist: the load never started", target.physical)
        return None
    if target.serving:  # its refresh interval may be long: make this run's writes searchable
        hook.refresh(target.physical)
        log.info("%s may be serving queries: its settings were never changed; refreshed",
                 target.physical)
        return None
    return load_settings.leave(hook, target.physical, plan.run_key)
