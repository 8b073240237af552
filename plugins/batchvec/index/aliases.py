"""The index a DAG names is an alias; runs write the physical index of their model.

A physical index is named for the model's identity and dimension (``physical_index_name``).
When the model changes, a run builds the new physical index next to the one being served,
verifies it, and ``switch`` moves the alias in one ``_aliases`` call, so searches see the old
index or the new one, never neither. The old one is marked retired in its mapping ``_meta``
and kept for ``rollback`` until ``drop_expired`` deletes it.

Runs overlap (backfills), and two of them must never build the same new index: the build
lease, one compare-and-set document ``build:<physical>`` in load_settings' lease index, names
the run building it; the others wait (``await_build``) and then write it incrementally once
the alias serves it. A holder older than the bulk-load lease time is taken over.

An index from before aliases (a concrete index named like the alias) is written in place
("legacy") until ``migrate`` turns it into an alias of ``<index>--legacy``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from datetime import datetime, timedelta

from batchvec.hooks.opensearch import OpenSearchDomainHook, OpenSearchError, VersionConflict
from batchvec.index import load_settings
from batchvec.plan.naming import validate_index_name

log = logging.getLogger(__name__)

LEGACY_SUFFIX = "--legacy"
MODES = ("incremental", "build", "legacy")
_IDENTITY_LEN, _MAX_DIM_DIGITS, _MAX_NAME_BYTES = 12, 7, 255
# "--" + identity + "-" + dimension digits + "d": kept free so every physical index of one
# alias has the same (possibly shortened) alias part, and retired() can find them all.
_SUFFIX_ROOM = 2 + _IDENTITY_LEN + 1 + _MAX_DIM_DIGITS + 1
_LEASE_ID = "build:{}"  # ':' is never in an index name: no clash with load_settings' lease ids
# Settings OpenSearch keeps for itself (refused on index creation), and the write block that
# migrate puts on the source.
_UNCOPIED_SETTINGS = ("uuid", "creation_date", "provided_name", "version", "history", "resize",
                      "blocks")


class AliasMoved(RuntimeError):
    """The alias no longer serves what the switch expected: another run moved it."""

    def __init__(self, alias: str, expected: str | None, now: list[str]):
        super().__init__(f"alias {alias} was expected to serve {expected or 'nothing'} but "
                         f"serves {', '.join(now) or 'nothing'} now: another run moved it")
        self.alias, self.expected, self.now = alias, expected, now


@dataclass(frozen=True)
class Target:
    """What a run writes: `physical`, and whether the alias serves it already."""

    alias: str
    physical: str
    mode: str  # incremental | build | legacy (see MODES and resolve)
    previous: str | None  # the index the alias serves now

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Target:
        return cls(**{f.name: d.get(f.name) for f in fields(cls)})

    @property
    def serving(self) -> bool:
        """The index may be answering queries: never put bulk-load settings on it."""
        return self.mode != "build"


# -- names -------------------------------------------------------------------------------------
def _stem(alias: str) -> str:
    """The alias part of its physical names: the alias, or a cut of it + a hash if too long."""
    validate_index_name(alias)
    room = _MAX_NAME_BYTES - _SUFFIX_ROOM
    if len(alias.encode()) <= room:
        return alias
    digest = hashlib.sha1(alias.encode()).hexdigest()[:8]
    cut = alias.encode()[:room - len(digest) - 1].decode(errors="ignore").rstrip("-")
    return f"{cut}-{digest}"


def _own_name(alias: str) -> re.Pattern:
    """Physical names of this alias only: not those of an alias named `<alias>--x`."""
    return re.compile(rf"{re.escape(_stem(alias))}--(?:legacy|[a-z0-9]{{1,12}}-[0-9]+d)")


def physical_index_name(alias: str, model_identity: str, dimension: int) -> str:
    """``<alias>--<identity[:12]>-<dimension>d``; an identity that is not lowercase letters and
    digits is hashed instead (an index name allows neither capitals nor most punctuation).
    Dimension 0: a run that does not fix it (the `dimension` param's "any")."""
    if not isinstance(model_identity, str) or not model_identity:
        raise ValueError(f"model identity must be a non-empty string, got {model_identity!r}")
    if (isinstance(dimension, bool) or not isinstance(dimension, int) or dimension < 0
            or len(str(dimension)) > _MAX_DIM_DIGITS):
        raise ValueError(f"dimension must be an integer >= 0, got {dimension!r}")
    ident = model_identity[:_IDENTITY_LEN]
    if not re.fullmatch(r"[a-z0-9]+", ident):
        ident = hashlib.sha1(model_identity.encode()).hexdigest()[:_IDENTITY_LEN]
    return validate_index_name(f"{_stem(alias)}--{ident}-{dimension}d")


def legacy_index_name(index: str) -> str:
    return validate_index_name(f"{_stem(index)}{LEGACY_SUFFIX}")


# -- what the alias serves ---------------------------------------------------------------------
def _served(hook: OpenSearchDomainHook, alias: str) -> list[str]:
    return sorted(hook.get_alias(alias))


def resolve(hook: OpenSearchDomainHook, alias: str, physical: str) -> Target:
    validate_index_name(alias)
    served = _served(hook, alias)
    if not served:
        if hook.index_exists(alias):  # no alias of that name, so a concrete index
            return Target(alias, alias, "legacy", alias)
        return Target(alias, physical, "build", None)
    if len(served) > 1:
        raise ValueError(f"alias {alias} serves several indices ({', '.join(served)}); a run "
                         "needs it to serve one: fix it with POST /_aliases")
    (now,) = served
    return Target(alias, physical, "incremental" if now == physical else "build", now)


# -- build lease -------------------------------------------------------------------------------
def _stale(lease: dict, now: datetime) -> bool:
    return now - datetime.fromisoformat(lease["since"]) > load_settings._lease_ttl()


def acquire_build(hook: OpenSearchDomainHook, physical: str, run_key: str) -> str | None:
    """None if this run holds the build lease of `physical` now (also on a retry), else the
    run key of the live holder."""
    load_settings._ensure_lease_index(hook)
    doc_id = _LEASE_ID.format(physical)
    for _ in range(load_settings._ATTEMPTS):
        found = hook.get_versioned(load_settings.LEASE_INDEX, doc_id)
        now = load_settings._now()
        mine = {"holder": run_key, "since": now.isoformat()}
        try:
            if found is None:
                hook.put_versioned(load_settings.LEASE_INDEX, doc_id, mine, create=True)
                return None
            lease, version = found
            if lease["holder"] == run_key:
                return None
            if not _stale(lease, now):
                return lease["holder"]
            log.warning("build lease of %s: run %s took it at %s and never released it; run %s "
                        "takes over (BATCHVEC_BULK_LOAD_LEASE_HOURS)", physical,
                        lease["holder"], lease["since"], run_key)
            hook.put_versioned(load_settings.LEASE_INDEX, doc_id, mine, version=version)
            return None
        except VersionConflict:
            continue  # another run wrote it meanwhile: look again
    raise RuntimeError(f"build lease of {physical}: lost {load_settings._ATTEMPTS} rounds in a row")


def release_build(hook: OpenSearchDomainHook, physical: str, run_key: str) -> bool:
    """Drop the build lease if this run holds it; True if it was dropped by this call."""
    if not hook.index_exists(load_settings.LEASE_INDEX):
        return False
    doc_id = _LEASE_ID.format(physical)
    for _ in range(load_settings._ATTEMPTS):
        found = hook.get_versioned(load_settings.LEASE_INDEX, doc_id)
        if found is None or found[0]["holder"] != run_key:
            return False
        try:
            hook.delete_versioned(load_settings.LEASE_INDEX, doc_id, version=found[1])
            return True
        except VersionConflict:
            continue
    raise RuntimeError(f"build lease of {physical}: lost {load_settings._ATTEMPTS} rounds in a row")


def _live_builder(hook: OpenSearchDomainHook, physical: str) -> str | None:
    if not hook.index_exists(load_settings.LEASE_INDEX):
        return None
    found = hook.get_versioned(load_settings.LEASE_INDEX, _LEASE_ID.format(physical))
    return None if found is None or _stale(found[0], load_settings._now()) else found[0]["holder"]


def await_build(hook: OpenSearchDomainHook, alias: str, physical: str, run_key: str, *,
                timeout_s: float, poll_s: float = 10.0,
                say: Callable[[str], object] = log.info) -> Target:
    """The Target of this run, once no other run is building `physical`. In mode "build" this
    run holds the build lease (release it with release_build once switched, or on failure)."""
    deadline = time.monotonic() + timeout_s
    told = None
    while True:
        target = resolve(hook, alias, physical)
        if target.mode != "build":
            return target
        holder = acquire_build(hook, physical, run_key)
        if holder is None:
            # The holder may have switched and released between resolve and acquire.
            target = resolve(hook, alias, physical)
            if target.mode != "build":
                release_build(hook, physical, run_key)
            return target
        if holder != told:
            say(f"index {physical} is being built by run {holder}; waiting until it is done "
                f"(at most {timeout_s:.0f}s), then writing it incrementally")
            told = holder
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"index {physical} still being built by run {holder} after "
                               f"{timeout_s:.0f}s")
        time.sleep(min(poll_s, left))


# -- switching ---------------------------------------------------------------------------------
def _meta(hook: OpenSearchDomainHook, index: str) -> dict:
    return hook.get_mapping_meta(index).get("batchvec", {})


def _mark(hook: OpenSearchDomainHook, index: str, **values) -> None:
    """Set (None: remove) keys of the index's `_meta.batchvec`, keeping the rest of `_meta`."""
    meta = hook.get_mapping_meta(index)
    ours = {k: v for k, v in {**meta.get("batchvec", {}), **values}.items() if v is not None}
    if ours != meta.get("batchvec"):
        hook.put_mapping_meta(index, {**meta, "batchvec": ours})


def _mark_switch(hook: OpenSearchDomainHook, alias: str, physical: str, previous: str | None, *,
                 fresh: bool) -> None:
    """The marks of a switch; a retry (not `fresh`) only adds the missing ones."""
    now = load_settings._now().isoformat()
    new = _meta(hook, physical)
    if fresh or new.get("alias") != alias or "serving_since" not in new or "retired_at" in new:
        _mark(hook, physical, alias=alias, serving_since=now, retired_at=None, successor=None)
    if previous and previous != physical and hook.index_exists(previous):
        if fresh or "retired_at" not in _meta(hook, previous):
            _mark(hook, previous, alias=alias, retired_at=now, successor=physical)


def switch(hook: OpenSearchDomainHook, alias: str, physical: str, previous: str | None) -> dict:
    """Move the alias from `previous` (None: no alias yet) to `physical` in one `_aliases`
    call. AliasMoved if it does not serve `previous` (only) any more."""
    if previous == alias:
        raise ValueError(f"{alias} is a concrete index: migrate it to an alias first")
    result = {"moved": False, "alias": alias, "from": previous, "to": physical}
    served = _served(hook, alias)
    if served == [physical]:  # a retry after the move
        _mark_switch(hook, alias, physical, previous, fresh=False)
        return result
    if served != ([previous] if previous else []):
        raise AliasMoved(alias, previous, served)
    add = {"add": {"index": physical, "alias": alias}}
    # must_exist makes the move conditional, checked inside the same cluster-state update:
    # without it, removing an alias the index no longer has is silently a no-op.
    actions = [{"remove": {"index": previous, "alias": alias, "must_exist": True}}, add] \
        if previous else [add]
    try:
        hook.update_aliases(actions)
    except OpenSearchError as exc:
        if exc.type == "invalid_alias_name_exception":
            raise ValueError(f"{alias} is a concrete index: migrate it to an alias "
                             f"first ({exc.reason})") from None
        if exc.status != 404:
            raise
        if (now := _served(hook, alias)) != [physical]:
            raise AliasMoved(alias, previous, now) from None
        # else the hook retried a call that had moved it and whose answer was lost
    if not previous and (now := _served(hook, alias)) != [physical]:
        # Nothing makes "the alias does not exist yet" a condition of the add: another run
        # created it meanwhile. Take ours back rather than leave it serving two.
        hook.update_aliases([{"remove": {"index": physical, "alias": alias}}])
        raise AliasMoved(alias, previous, [i for i in now if i != physical])
    _mark_switch(hook, alias, physical, previous, fresh=True)
    log.info("alias %s now serves %s (was %s)", alias, physical, previous or "nothing")
    return {**result, "moved": True}


# -- retired indices ---------------------------------------------------------------------------
def retired(hook: OpenSearchDomainHook, alias: str) -> list[dict]:
    """This alias's physical indices it does not serve, most recently retired first; those
    never served (a build in progress, or a failed one) last, with retired_at None."""
    served, own = set(_served(hook, alias)), _own_name(alias)
    found = []
    for index in hook.indices_matching(f"{_stem(alias)}--*"):
        if index in served or not own.fullmatch(index):
            continue
        meta = _meta(hook, index)
        if meta.get("alias", alias) != alias:
            continue
        found.append({"index": index, "retired_at": meta.get("retired_at"),
                      "successor": meta.get("successor")})
    return sorted(found, key=lambda r: (r["retired_at"] is not None, r["retired_at"] or ""),
                  reverse=True)


def drop_expired(hook: OpenSearchDomainHook, alias: str, keep_days: float,
                 now: datetime | None = None) -> list[str]:
    """Delete the indices retired more than `keep_days` ago; returns their names."""
    cutoff = (now or load_settings._now()) - timedelta(days=keep_days)
    dropped = []
    for old in retired(hook, alias):
        index = old["index"]
        if old["retired_at"] is None or datetime.fromisoformat(old["retired_at"]) > cutoff:
            continue
        if holder := _live_builder(hook, index):  # a run is building it again (model reverted)
            log.info("not dropping %s: run %s is building it", index, holder)
            continue
        if index in _served(hook, alias):  # a rollback since retired() looked
            continue
        if hook.delete_index(index):
            log.info("dropped %s (retired from alias %s at %s)", index, alias, old["retired_at"])
            dropped.append(index)
    return dropped


def rollback(hook: OpenSearchDomainHook, alias: str) -> dict:
    """Move the alias back to the most recently retired index; the current one is retired."""
    served = _served(hook, alias)
    if len(served) != 1:
        raise ValueError(f"alias {alias} serves {', '.join(served) or 'nothing'}: no rollback")
    back = next((r["index"] for r in retired(hook, alias) if r["retired_at"]), None)
    if back is None:
        raise ValueError(f"alias {alias}: no retired index to roll back to")
    return switch(hook, alias, back, served[0])


# -- migration ---------------------------------------------------------------------------------
def migrate(hook: OpenSearchDomainHook, index: str) -> dict:
    """Turn the concrete index `index` into an alias of a copy, `<index>--legacy`. Writes to
    `index` are blocked while it is copied, so none can be lost between count and switch."""
    dest = legacy_index_name(index)
    served = _served(hook, index)
    if served == [dest]:  # migrated already; the marks too, unless that run died just before
        if "serving_since" not in _meta(hook, dest):
            _mark(hook, dest, alias=index, serving_since=load_settings._now().isoformat(),
                  migrated_from=index)
        return {"migrated": False, "alias": index, "index": dest, "count": hook.count(index)}
    if served:
        raise ValueError(f"{index} is already an alias, of {', '.join(served)}")
    if not hook.index_exists(index):
        raise ValueError(f"no index {index} to migrate")
    blocked = hook.get_settings(index).get("blocks", {}).get("write")
    hook.put_settings(index, {"blocks.write": True})
    try:
        if not hook.index_exists(dest):  # else a copy an interrupted migrate began: redo it
            settings = {k: v for k, v in hook.get_settings(index).items()
                        if k not in _UNCOPIED_SETTINGS}
            hook.create_index(dest, {"settings": {"index": settings},
                                     "mappings": hook.get_mapping(index)})
        hook.reindex(index, dest)
        hook.refresh(dest)
        have, copied = hook.count(index), hook.count(dest)
        if have != copied:
            raise RuntimeError(f"migrate {index}: {copied} documents in {dest} but {have} in "
                               f"{index}: delete {dest} and run it again")
        hook.update_aliases([{"remove_index": {"index": index}},
                             {"add": {"index": dest, "alias": index}}])
    except BaseException:
        if hook.index_exists(index) and not _served(hook, index):
            hook.put_settings(index, {"blocks.write": blocked})  # None resets it
        raise
    _mark(hook, dest, alias=index, serving_since=load_settings._now().isoformat(),
          migrated_from=index)
    log.info("migrated %s: now an alias of %s (%d documents)", index, dest, copied)
    return {"migrated": True, "alias": index, "index": dest, "count": copied}


# -- command line ------------------------------------------------------------------------------
def status(hook: OpenSearchDomainHook, alias: str) -> dict:
    served = _served(hook, alias)
    if not served and hook.index_exists(alias):
        return {"alias": alias, "concrete_index": True, "serves": [], "retired": []}
    return {"alias": alias, "serves": served, "retired": retired(hook, alias)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m batchvec.index.aliases",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=("status", "rollback", "migrate", "drop-expired"))
    parser.add_argument("--alias", required=True, help="the index name the DAG is given")
    parser.add_argument("--keep-days", type=float, help="drop-expired: days to keep")
    parser.add_argument("--conn-id", default=OpenSearchDomainHook.default_conn_name)
    args = parser.parse_args(argv)
    if args.command == "drop-expired" and args.keep_days is None:
        parser.error("drop-expired needs --keep-days")
    hook, name = OpenSearchDomainHook(args.conn_id), args.alias
    out = {"status": lambda: status(hook, name), "rollback": lambda: rollback(hook, name),
           "migrate": lambda: migrate(hook, name),
           "drop-expired": lambda: {"dropped": drop_expired(hook, name, args.keep_days)},
           }[args.command]()
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
