"""Index APIs: create/get/head/delete, `_settings`, `_mapping`, `_refresh`, `_doc` GET, and the
per-index state (settings, mappings, sequence numbers, refresh visibility, vector cache)."""

from __future__ import annotations

import copy
import fnmatch
import re
import threading
import uuid as uuidlib

from devstack.opensearch import mapping
from devstack.opensearch.common import (
    fail,
    illegal,
    now_ms,
    parse_body,
    respond,
    str_value,
)
from devstack.opensearch.search import fetch_sources, source_filter_from_query
from devstack.opensearch.settings import flatten, nest, render

VERSION_CREATED = "137237827"  # 3.3.0's internal version id
_STATIC = {"index.number_of_shards", "index.knn", "index.codec"}
_INVALID_CHARS = set('\\/*?"<>| ,')
_TIME_RE = re.compile(r"^(-?\d+)(nanos|micros|ms|s|m|h|d)?$")
_UNITS_MS = {"nanos": 1e-6, "micros": 1e-3, "ms": 1, "s": 1000, "m": 60000, "h": 3600000, "d": 86400000}


def index_not_found(name: str):
    return fail(404, "index_not_found_exception", f"no such index [{name}]", index=name,
                **{"resource.id": name, "resource.type": "index_or_alias"}, index_uuid="_na_")


def validate_name(name: str) -> None:
    """MetadataCreateIndexService.validateIndexOrAliasName + the lowercase rule."""
    def bad(why):
        return fail(400, "invalid_index_name_exception", f"Invalid index name [{name}], {why}",
                    index=name, index_uuid="_na_")
    if set(name) & _INVALID_CHARS:
        raise bad('must not contain the following characters [ , ", *, \\, <, |, ,, >, /, ?]')
    if "#" in name:
        raise bad("must not contain '#'")
    if ":" in name:
        raise bad("must not contain ':'")
    if name[:1] in ("_", "-", "+"):
        raise bad("must not start with '_', '-', or '+'")
    if len(name.encode()) > 255:
        raise bad(f"index name is too long, ({len(name.encode())} > 255)")
    if name in (".", ".."):
        raise bad("must not be '.' or '..'")
    if name.lower() != name:
        raise bad("must be lowercase")


def parse_interval_ms(value) -> int:
    text = str_value(value).strip()
    match = _TIME_RE.match(text)
    if not match or (match.group(2) is None and text not in ("-1", "0")):
        raise illegal(f"failed to parse setting [index.refresh_interval] with value [{text}] as a "
                      "time value: unit is missing or unrecognized")
    number = int(match.group(1))
    return -1 if number < 0 else int(number * _UNITS_MS[match.group(2) or "ms"])


def normalize_settings(raw: dict | None) -> dict:
    """Flat `index.*` settings with string values, from any of the accepted body forms."""
    raw = raw or {}
    if set(raw) == {"settings"}:
        raw = raw["settings"] or {}
    flat = {}
    for key, value in flatten(raw).items():
        key = key if key.startswith("index.") else f"index.{key}"
        flat[key] = None if value is None else render(value)
    if flat.get("index.refresh_interval") is not None:
        parse_interval_ms(flat["index.refresh_interval"])
    for key in ("index.number_of_shards", "index.number_of_replicas"):
        if flat.get(key) is not None and not str(flat[key]).isdigit():
            raise illegal(f"Failed to parse value [{flat[key]}] for setting [{key}]")
    return flat


class IndexState:
    def __init__(self, name: str, meta: dict):
        self.name = name
        self.meta = meta
        self.lock = threading.RLock()  # serialises writers of this index
        self.generation = 0  # bumped on every write; invalidates the vector cache
        self.vector_cache: dict = {}

    @property
    def uuid(self) -> str:
        return self.meta["uuid"]

    @property
    def settings(self) -> dict:
        return self.meta["settings"]

    @property
    def mappings(self) -> dict:
        return self.meta["mappings"]

    def replicas(self) -> int:
        return int(self.settings.get("index.number_of_replicas", "1"))

    def shards_info(self) -> dict:
        return {"total": 1 + self.replicas(), "successful": 1, "failed": 0}

    def interval_ms(self) -> int:
        return parse_interval_ms(self.settings.get("index.refresh_interval", "1s"))

    def immediate(self) -> bool:
        return 0 <= self.interval_ms() <= 1000  # the default 1s is treated as immediate


class Indices:
    def __init__(self, store):
        self.store = store
        self.lock = threading.RLock()
        self.states = {name: IndexState(name, meta) for name, meta in store.index_all().items()}

    # --- lookup ---------------------------------------------------------------------------
    def get(self, name: str) -> IndexState:
        state = self.states.get(name)
        if state is None:
            raise index_not_found(name)
        return state

    def resolve(self, expression: str) -> list[IndexState]:
        """Comma lists, wildcards and _all, as search and GET accept them."""
        out: dict[str, IndexState] = {}
        for part in expression.split(","):
            if part in ("_all", "*"):
                out.update((n, s) for n, s in self.states.items() if not n.startswith("."))
            elif "*" in part or "?" in part:
                out.update((n, s) for n, s in self.states.items() if fnmatch.fnmatchcase(n, part)
                           and (part.startswith(".") or not n.startswith(".")))
            else:
                out[part] = self.get(part)
        return list(out.values())

    def save(self, state: IndexState) -> None:
        self.store.index_put(state.name, state.meta)

    def create_state(self, name: str, settings: dict | None = None, mappings: dict | None = None) -> IndexState:
        """Create (validated) and persist a new index; raises if it already exists."""
        validate_name(name)
        settings = normalize_settings(settings)
        mappings = copy.deepcopy(mappings or {})
        mapping.validate(mappings)
        with self.lock:
            if name in self.states:
                existing = self.states[name]
                raise fail(400, "resource_already_exists_exception",
                           f"index [{name}/{existing.uuid}] already exists", index=name,
                           index_uuid=existing.uuid)
            uid = uuidlib.uuid4().hex[:22]
            created = now_ms()
            flat = {"index.number_of_shards": "1", "index.number_of_replicas": "1",
                    "index.replication.type": "DOCUMENT"}
            flat.update({k: v for k, v in settings.items() if v is not None})
            flat.update({"index.uuid": uid, "index.creation_date": str(created),
                         "index.provided_name": name, "index.version.created": VERSION_CREATED})
            meta = {"uuid": uid, "settings": flat, "mappings": mappings, "created": created,
                    "seq": -1, "refreshed": -1, "last_refresh": created}
            state = IndexState(name, meta)
            self.states[name] = state
            self.save(state)
            return state

    def get_or_create(self, name: str) -> IndexState:
        """Auto-create on first write, as action.auto_create_index allows by default."""
        with self.lock:
            return self.states.get(name) or self.create_state(name)

    # --- refresh visibility ---------------------------------------------------------------
    def visible_seq(self, state: IndexState) -> int:
        if state.immediate():
            return state.meta["seq"]
        interval = state.interval_ms()
        if interval > 0 and now_ms() - state.meta["last_refresh"] >= interval:
            self.refresh(state)
        return state.meta["refreshed"]

    def refresh(self, state: IndexState) -> None:
        with state.lock:
            if state.meta["refreshed"] != state.meta["seq"] or not state.immediate():
                state.meta["refreshed"] = state.meta["seq"]
                state.meta["last_refresh"] = now_ms()
                self.save(state)

    # --- handlers -------------------------------------------------------------------------
    def handle_create(self, req):
        name = req.params["index"]
        body = parse_body(req) or {}
        if not isinstance(body, dict):
            raise fail(400, "parse_exception", "request body must be an object")
        unknown = set(body) - {"settings", "mappings", "aliases"}
        if unknown:
            raise fail(400, "parse_exception", f"unknown key [{sorted(unknown)[0]}] for create index")
        self.create_state(name, body.get("settings"), body.get("mappings"))
        return respond({"acknowledged": True, "shards_acknowledged": True, "index": name})

    def _settings_view(self, state: IndexState, flat_form: bool) -> dict:
        return dict(state.settings) if flat_form else nest(dict(state.settings))

    def handle_get(self, req):
        flat_form = req.query.get("flat_settings") == "true"
        out = {}
        for state in self.resolve(req.params["index"]):
            out[state.name] = {"aliases": {}, "mappings": state.mappings,
                               "settings": self._settings_view(state, flat_form)}
        return respond(out)

    def handle_delete(self, req):
        targets = self.resolve(req.params["index"])
        with self.lock:
            for state in targets:
                self.states.pop(state.name, None)
                self.store.index_drop(state.name)
        return respond({"acknowledged": True})

    def handle_get_settings(self, req):
        flat_form = req.query.get("flat_settings") == "true"
        return respond({s.name: {"settings": self._settings_view(s, flat_form)}
                        for s in self.resolve(req.params.get("index", "_all"))})

    def handle_put_settings(self, req):
        body = parse_body(req, required=True)
        updates = normalize_settings(body if isinstance(body, dict) else {})
        if not updates:
            raise fail(400, "action_request_validation_exception",
                       "Validation Failed: 1: no settings to update;")
        targets = self.resolve(req.params.get("index", "_all"))
        static = sorted(set(updates) & _STATIC)
        if static:
            names = ", ".join(f"{s.name}/{s.uuid}" for s in targets)
            raise illegal(f"Can't update non dynamic settings [[{', '.join(static)}]] for open "
                          f"indices [[{names}]]")
        for state in targets:
            with state.lock:
                was_hidden = not state.immediate()
                for key, value in updates.items():
                    if value is None:
                        state.settings.pop(key, None)
                    else:
                        state.settings[key] = value
                if was_hidden and state.interval_ms() >= 0:
                    state.meta["refreshed"] = state.meta["seq"]  # re-enabling refresh refreshes
                    state.meta["last_refresh"] = now_ms()
                self.save(state)
        return respond({"acknowledged": True})

    def handle_get_mapping(self, req):
        return respond({s.name: {"mappings": s.mappings}
                        for s in self.resolve(req.params.get("index", "_all"))})

    def handle_put_mapping(self, req):
        body = parse_body(req, required=True) or {}
        mapping.validate(body)
        for state in self.resolve(req.params["index"]):
            with state.lock:
                merged = copy.deepcopy(state.mappings)
                _merge_mapping(merged, body)
                state.meta["mappings"] = merged
                state.generation += 1
                self.save(state)
        return respond({"acknowledged": True})

    def handle_refresh(self, req):
        targets = self.resolve(req.params.get("index", "_all"))
        for state in targets:
            self.refresh(state)
        total = sum(1 + s.replicas() for s in targets)
        return respond({"_shards": {"total": total, "successful": len(targets), "failed": 0}})

    def handle_get_doc(self, req):
        state = self.get(req.params["index"])
        doc_id = req.params["id"]
        found = self.store.doc_get(state.name, doc_id)
        if found is None:
            return respond({"_index": state.name, "_id": doc_id, "found": False}, 404)
        version, seq, source = found
        out = {"_index": state.name, "_id": doc_id, "_version": version, "_seq_no": seq,
               "_primary_term": 1, "found": True}
        wanted = source_filter_from_query(req.query, True)
        if wanted is not False:
            out["_source"] = fetch_sources(self.store, state, {doc_id: source}, wanted)[doc_id]
        return respond(out)


def _merge_mapping(target: dict, update: dict) -> None:
    for key, value in update.items():
        if key != "properties":
            target[key] = value
            continue
        props = target.setdefault("properties", {})
        for field, spec in value.items():
            old = props.get(field)
            if old is None:
                props[field] = spec
            elif "properties" in spec and "properties" in old:
                _merge_mapping(old, spec)
            elif old.get("type") != spec.get("type", "object"):
                raise illegal(f"mapper [{field}] cannot be changed from type [{old.get('type')}] "
                              f"to [{spec.get('type')}]")
