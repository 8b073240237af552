"""``index_shard`` (one per shard), ``restore_index`` (the bulk-load settings back) and
``switch_alias`` (a verified build served)."""

from __future__ import annotations

import logging
from typing import Any

from batchvec.errors import fail_for_good
from batchvec.hooks.aws import s3_client
from batchvec.hooks.opensearch import OpenSearchDomainHook
from batchvec.index import aliases, lifecycle, load
from batchvec.report import assemble
from batchvec.settings import OPENSEARCH_CONN_ID
from batchvec.tasks.context import plan_of

log = logging.getLogger(__name__)


def index_shard(plan_data: dict, shard: dict, index: dict) -> dict:
    plan = plan_of(plan_data)
    hook = OpenSearchDomainHook(OPENSEARCH_CONN_ID, pool_size=plan.bulk_concurrency + 2)
    return load.index_shard(plan, shard, hook, s3_client(), index)


def restore_index(plan_data: dict | None, manifest: dict | None) -> Any:
    if plan_data is None or manifest is None:  # runs after any failure
        log.info("nothing was staged: no index settings to restore")
        return None
    return lifecycle.restore_index(manifest, OpenSearchDomainHook(OPENSEARCH_CONN_ID), plan_of(plan_data))


def switch_alias(plan_data: dict, manifest: dict, index: dict) -> dict:
    """A build is served only once it is complete and checked (report.assemble.check_build)."""

    plan = plan_of(plan_data)
    target = aliases.Target.from_dict(manifest["target"])
    hook = OpenSearchDomainHook(OPENSEARCH_CONN_ID)
    if target.mode != "build":
        return {"moved": False, "alias": plan.index_name, "index": target.physical,
                "why": f"{target.mode}: the alias already serves it" if target.mode ==
                "incremental" else "legacy: index_name is a concrete index (README: migrate)"}
    rows, sample = assemble.shard_reports(plan, s3_client(), manifest, {})
    checked = assemble.check_build(hook, plan, manifest, rows, sample, index["dimension"])
    if not checked["ok"]:
        raise fail_for_good(f"{target.physical} failed verification, the alias stays on "
                            f"{target.previous or 'nothing'}: {checked['problems']}")
    moved = aliases.switch(hook, plan.index_name, target.physical, target.previous)
    dropped = aliases.drop_expired(hook, plan.index_name, plan.keep_previous_index)
    aliases.release_build(hook, target.physical, plan.run_key)
    log.info("alias %s -> %s (was %s); verified: %s; retired indices dropped: %s",
             plan.index_name, target.physical, target.previous, checked, dropped or "none")
    return {**moved, "index": target.physical, "verified": checked, "dropped": dropped}

