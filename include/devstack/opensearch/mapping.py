"""Index mappings: validation of `knn_vector` fields as the k-NN plugin does it, dynamic
mapping of new fields (strings -> text + keyword), dotted-path helpers for sources."""

from __future__ import annotations

import re

from devstack.opensearch.common import fail

SPACE_TYPES = {"l2", "cosinesimil", "innerproduct", "l1", "linf", "hamming"}
ENGINES = {"faiss", "lucene", "nmslib"}
MAX_DIMENSION = 16000
_DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:?\d{2})?)?$")
_TEXT = {"type": "text", "fields": {"keyword": {"type": "keyword", "ignore_above": 256}}}


def _bad_mapping(reason: str):
    return fail(400, "mapper_parsing_exception", f"Failed to parse mapping [_doc]: {reason}")


def validate(mappings: dict) -> None:
    """Refuse what OpenSearch 3.x refuses when an index is created or a mapping is put."""
    if not isinstance(mappings, dict):
        raise _bad_mapping("mapping must be an object")
    for path, spec in iter_fields(mappings):
        if spec.get("type") == "knn_vector":
            _validate_knn(path, spec)


def _validate_knn(path: str, spec: dict) -> None:
    dim = spec.get("dimension")
    if dim is None and "model_id" not in spec:
        raise _bad_mapping(f"Dimension value missing for vector: {path}")
    if dim is not None:
        try:
            dim = int(dim)
        except (TypeError, ValueError):
            raise _bad_mapping(f"Unable to parse [dimension] from provided value [{dim}] for vector [{path}]") from None
        if dim <= 0 or dim > MAX_DIMENSION:
            raise _bad_mapping(f"Dimension value must be greater than 0 and less than or equal to "
                               f"{MAX_DIMENSION} for vector: {path}")
    method = spec.get("method") or {}
    spaces = {s for s in (spec.get("space_type"), method.get("space_type")) if s}
    for space in spaces:
        if space not in SPACE_TYPES:
            raise _bad_mapping(f"Unable to parse mapping into KNNMethodContext. Unsupported space type: {space}")
    if len(spaces) > 1:
        raise _bad_mapping("Space type in \"method\" and top level space type should be same or "
                           "one of them should be defined")
    engine = method.get("engine")
    if engine and engine not in ENGINES:
        raise _bad_mapping(f"Invalid engine: {engine}")
    if engine == "nmslib":  # 3.0 blocks new nmslib indices
        raise _bad_mapping("nmslib engine is deprecated in OpenSearch and cannot be used for new "
                           "index creation in OpenSearch from 3.0.0.")


def iter_fields(mappings: dict, prefix: str = ""):
    """(dotted path, field mapping) for every field, sub-fields (x.keyword) included."""
    for name, spec in (mappings.get("properties") or {}).items():
        if not isinstance(spec, dict):
            continue
        path = f"{prefix}{name}"
        if "properties" in spec and spec.get("type") in (None, "object", "nested"):
            yield from iter_fields(spec, path + ".")
            continue
        yield path, spec
        for sub, sub_spec in (spec.get("fields") or {}).items():
            yield f"{path}.{sub}", sub_spec


def field_types(mappings: dict) -> dict[str, dict]:
    return dict(iter_fields(mappings))


def knn_fields(mappings: dict) -> dict[str, tuple[int, str]]:
    """path -> (dimension, space type) for every knn_vector field (default space l2)."""
    out = {}
    for path, spec in iter_fields(mappings):
        if spec.get("type") == "knn_vector" and spec.get("dimension") is not None:
            space = spec.get("space_type") or (spec.get("method") or {}).get("space_type") or "l2"
            out[path] = (int(spec["dimension"]), space)
    return out


def get_path(source: dict, path: str, default=None):
    node = source
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node


def pop_path(source: dict, path: str):
    """Remove and return the value at a dotted path (None when absent)."""
    parts = path.split(".")
    node = source
    for part in parts[:-1]:
        node = node.get(part) if isinstance(node, dict) else None
        if not isinstance(node, dict):
            return None
    return node.pop(parts[-1], None) if isinstance(node, dict) else None


def set_path(source: dict, path: str, value) -> None:
    parts = path.split(".")
    node = source
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value


def _infer(value):
    if isinstance(value, bool):
        return {"type": "boolean"}
    if isinstance(value, int):
        return {"type": "long"}
    if isinstance(value, float):
        return {"type": "float"}
    if isinstance(value, str):
        return {"type": "date"} if _DATE_RE.match(value) else dict(_TEXT)
    if isinstance(value, dict):
        return {"properties": {}}
    return None


def dynamic_update(mappings: dict, source: dict, doc_id: str) -> bool:
    """Add mappings for fields this source introduces; True when the mapping changed.
    Raises the strict_dynamic_mapping_exception item error under `dynamic: strict`."""
    return _walk(mappings, source, mappings.get("dynamic", True), doc_id, "")


def _walk(node: dict, source: dict, dynamic, doc_id: str, prefix: str) -> bool:
    changed = False
    props = node.setdefault("properties", {}) if str(dynamic) != "false" else node.get("properties", {})
    for key, value in source.items():
        if value is None:
            continue
        spec = props.get(key)
        sample = value[0] if isinstance(value, list) and value else value
        if isinstance(value, list) and not value:
            continue
        if spec is None:
            if str(dynamic) == "strict":
                raise ItemError("strict_dynamic_mapping_exception",
                                f"mapping set to strict, dynamic introduction of [{key}] within "
                                f"[{prefix.rstrip('.') or '_doc'}] is not allowed")
            if str(dynamic) == "false":
                continue
            spec = _infer(sample)
            if spec is None:
                continue
            props[key] = spec
            changed = True
        if isinstance(sample, dict) and "properties" in spec:
            child_dynamic = spec.get("dynamic", dynamic)
            for item in value if isinstance(value, list) else [value]:
                if isinstance(item, dict):
                    changed |= _walk(spec, item, child_dynamic, doc_id, f"{prefix}{key}.")
        elif spec.get("type") in ("long", "integer", "short", "byte", "float", "double", "half_float"):
            for item in value if isinstance(value, list) else [value]:
                if not _numeric(item):
                    raise ItemError("mapper_parsing_exception",
                                    f"failed to parse field [{prefix}{key}] of type [{spec['type']}] "
                                    f"in document with id '{doc_id}'. Preview of field's value: '{item}'",
                                    {"type": "number_format_exception",
                                     "reason": f'For input string: "{item}"'})
    return changed


def _numeric(value) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int | float):
        return True
    try:
        float(value)
        return True
    except (TypeError, ValueError):
        return False


class ItemError(Exception):
    """A per-document failure reported in the bulk item (or single-doc) response."""

    def __init__(self, err_type: str, reason: str, caused_by: dict | None = None, status: int = 400,
                 **extra):
        super().__init__(reason)
        self.status = status
        self.body = {"type": err_type, "reason": reason, **extra}
        if caused_by:
            self.body["caused_by"] = caused_by
