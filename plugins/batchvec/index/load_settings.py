"""Bulk-load settings shared by the runs that load one index at the same time.

A run switches its index to ``refresh_interval: -1`` and ``number_of_replicas: 0`` while it
loads, and back afterwards. Runs overlap on one index (backfills with ``--max-active-runs``,
a scheduled run next to a manual one), so "back" must mean the settings from before the
*first* of them started, restored when the *last* of them ends. Each index has one lease
document in the ``batchvec-bulk-load`` index, changed only by compare-and-set
(``if_seq_no`` / ``if_primary_term``), that holds those original settings and the runs
loading now:

- ``enter``: no lease: read the index's settings (nobody is loading, so they are the real
  ones), create the lease with this run as holder; a lease: add this run (its originals
  stand). Then apply the bulk-load settings.
- ``leave``: drop this run; the last one out restores the lease's originals, then deletes the
  lease. The lease outlives the restore, so a run that enters meanwhile still reads the
  originals from it, never the bulk-load settings from the index.

Both are safe to repeat (task retries). A holder that never left (its DAG run was killed
before ``restore_index``) stops counting after ``BATCHVEC_BULK_LOAD_LEASE_HOURS`` (48).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

from batchvec import settings
from batchvec.hooks.opensearch import OpenSearchDomainHook, OpenSearchError, VersionConflict

log = logging.getLogger(__name__)

LEASE_INDEX = "batchvec-bulk-load"
BULK_LOAD_SETTINGS = {"refresh_interval": "-1", "number_of_replicas": 0}
_ATTEMPTS = 50  # compare-and-set rounds: each lost round means another run just wrote


def _lease_ttl() -> timedelta:
    return settings.bulk_load_lease()


def _now() -> datetime:
    return datetime.now(UTC)


def _live(holders: dict[str, str], now: datetime) -> dict[str, str]:
    """Holders still inside the lease time; stale ones are logged and dropped."""
    live = {}
    for run_key, since in holders.items():
        if now - datetime.fromisoformat(since) <= _lease_ttl():
            live[run_key] = since
        else:
            log.warning("bulk-load lease: run %s entered at %s and never left; no longer "
                        "counted (BATCHVEC_BULK_LOAD_LEASE_HOURS)", run_key, since)
    return live


def current_settings(hook: OpenSearchDomainHook, index: str) -> dict:
    settings = hook.get_settings(index)
    return {"refresh_interval": settings.get("refresh_interval", "1s"),
            "number_of_replicas": int(settings.get("number_of_replicas", 1))}


def _ensure_lease_index(hook: OpenSearchDomainHook) -> None:
    if hook.index_exists(LEASE_INDEX):
        return
    try:
        hook.create_index(LEASE_INDEX, {"settings": {"index": {
            "hidden": True, "number_of_shards": 1, "auto_expand_replicas": "0-1"}}})
    except OpenSearchError as exc:
        if exc.type != "resource_already_exists_exception":  # another run made it first
            raise


def enter(hook: OpenSearchDomainHook, index: str, run_key: str) -> dict:
    """Count this run in and switch the index to bulk-load settings; returns the originals."""
    _ensure_lease_index(hook)
    for _ in range(_ATTEMPTS):
        found = hook.get_versioned(LEASE_INDEX, index)
        now = _now()
        try:
            if found is None:
                lease = {"index": index, "original": current_settings(hook, index),
                         "holders": {run_key: now.isoformat()}}
                hook.put_versioned(LEASE_INDEX, index, lease, create=True)
            else:
                lease, version = found
                holders = _live(lease.get("holders", {}), now)
                if run_key in holders and holders == lease.get("holders"):
                    break  # a retry of this run: already in
                holders.setdefault(run_key, now.isoformat())
                lease = {**lease, "holders": holders}
                hook.put_versioned(LEASE_INDEX, index, lease, version=version)
            break
        except VersionConflict:
            continue
    else:
        raise RuntimeError(f"bulk-load lease on {index}: lost {_ATTEMPTS} rounds in a row")
    hook.put_settings(index, BULK_LOAD_SETTINGS)
    others = sorted(set(lease["holders"]) - {run_key})
    log.info("index %s in bulk-load mode %s; restored to %s when the last loading run ends%s",
             index, BULK_LOAD_SETTINGS, lease["original"],
             f" (also loading: {', '.join(others)})" if others else "")
    return lease["original"]


def leave(hook: OpenSearchDomainHook, index: str, run_key: str) -> dict | None:
    """Count this run out; the last one restores the originals. Returns them if restored."""
    if not hook.index_exists(LEASE_INDEX):
        return None
    restored = False  # by this call, before a newcomer showed up
    for _ in range(_ATTEMPTS):
        found = hook.get_versioned(LEASE_INDEX, index)
        if found is None:
            log.info("no bulk-load lease on %s: nothing to restore", index)
            return None
        lease, version = found
        holders = _live(lease.get("holders", {}), _now())
        holders.pop(run_key, None)
        try:
            if holders:
                if holders != lease.get("holders"):
                    hook.put_versioned(LEASE_INDEX, index, {**lease, "holders": holders},
                                       version=version)
                if restored:  # a run entered while this one restored: load mode again
                    hook.put_settings(index, BULK_LOAD_SETTINGS)
                log.info("index %s stays in bulk-load mode: still loading %s", index,
                         ", ".join(sorted(holders)))
                return None
            if lease.get("holders"):  # mark it empty first: a newcomer keeps its originals
                version = hook.put_versioned(LEASE_INDEX, index, {**lease, "holders": {}},
                                             version=version)
            hook.put_settings(index, lease["original"])
            restored = True
            hook.delete_versioned(LEASE_INDEX, index, version=version)
        except VersionConflict:
            continue  # someone entered (or left) meanwhile: look again
        hook.refresh(index)
        log.info("index %s settings restored to %s and refreshed", index, lease["original"])
        return lease["original"]
    raise RuntimeError(f"bulk-load lease on {index}: lost {_ATTEMPTS} rounds in a row")
