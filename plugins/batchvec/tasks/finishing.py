"""The run's last tasks: ``report`` (accounting from what S3 holds, published even when
upstream tasks failed) and ``cleanup`` (staged objects deleted)."""

from __future__ import annotations

import logging

from batchvec.errors import fail_for_good
from batchvec.hooks import s3io
from batchvec.hooks.aws import s3_client
from batchvec.hooks.opensearch import OpenSearchDomainHook
from batchvec.index import aliases
from batchvec.plan.run_plan import Plan
from batchvec.report import assemble
from batchvec.settings import MANIFEST_KEY, OPENSEARCH_CONN_ID
from batchvec.tasks.context import plan_of
from batchvec.tasks.planning import index_asset

log = logging.getLogger(__name__)


def cleanup(plan_data: dict) -> int:
    """Delete staged input and the jobs' ManifestFiles (and outputs unless keep_outputs);
    manifest, rejects, DLQ and reports stay. Outputs are kept by default so a rerun re-indexes without a second job."""
    plan = plan_of(plan_data)
    s3 = s3_client()
    keys = [] if plan.keep_staging else [
        k for sub in ("input/", "staged/", "jobs/")
        for k in s3io.list_keys(s3, plan.bucket, plan.key(sub))]
    if not plan.keep_outputs:
        keys += s3io.list_keys(s3, plan.bucket, plan.key("output/"))
    deleted = s3io.delete_keys(s3, plan.bucket, keys) if keys else 0
    log.info("deleted %d staged objects under s3://%s/%s", deleted, plan.bucket, plan.run_prefix)
    return deleted


def report(plan_data: dict, manifest: dict, context: dict, asset) -> dict:
    """Assemble and publish the run report; fails the run (after writing it) when off."""
    if plan_data is None:
        raise fail_for_good("no report: the plan task failed (its log names the bad params)")
    plan = plan_of(plan_data)
    s3 = s3_client()
    hook = OpenSearchDomainHook(OPENSEARCH_CONN_ID)
    try:  # the whole manifest, from S3 (stage may have failed after counting: all rejected)
        manifest = s3io.get_json(s3, plan.bucket, plan.key(MANIFEST_KEY))
    except s3.exceptions.NoSuchKey:
        _release_build(hook, plan)
        raise fail_for_good(f"no report: nothing was staged from {plan.input_uri} "
                            "(the stage task's log says why)") from None
    try:
        return _report(plan, s3, hook, manifest, context, asset)
    finally:  # the run is over: whatever became of its build, another run may take it on
        _release_build(hook, plan, manifest)


def _release_build(hook: OpenSearchDomainHook, plan: Plan, manifest: dict | None = None) -> None:
    physical = (manifest or {}).get("index") or aliases.physical_index_name(
        plan.index_name, plan.model_identity, plan.dimension)
    aliases.release_build(hook, physical, plan.run_key)


def _mapped(ti, task_id: str) -> list[dict]:
    """Every map index's XCom of a mapped task (one value, not a list, when a single map
    index left one: the others failed)."""
    pulled = ti.xcom_pull(task_ids=task_id) or []
    return [r for r in ([pulled] if isinstance(pulled, dict) else pulled) if r]


def _by_group(jobs: list[dict]) -> dict[int, dict]:
    """batch_predict's results by job group (a one-group run's result may not name it)."""
    return {j.get("job_group", 0): j for j in jobs}


def _one_job(jobs: dict[int, dict], manifest: dict) -> dict:
    """The run's job for the report: the one job; with jobs per group, the first completed
    one with `records` summed over the completed groups (each is in `transform_jobs`)."""
    groups = manifest.get("jobs")
    if groups is not None and not groups:  # nothing to embed: no job at all
        return {"skipped": "no transform job: every record is unchanged or superseded in "
                "the index"}
    if len(groups or [None]) == 1:
        return next(iter(jobs.values()), {})
    done = {g: j for g, j in jobs.items() if j.get("job_name")}
    if not done:
        return {}
    return {**done[min(done)], "elapsed": max(j.get("elapsed") or 0.0 for j in done.values()),
            "records": sum(g["records_to_embed"] for g in groups if g["job_group"] in done)}


def _job_rows(manifest: dict, jobs: dict[int, dict]) -> list[dict]:
    return [{"group": g["job_group"], "records": g["records_to_embed"],
             "job_name": jobs.get(g["job_group"], {}).get("job_name"),
             "completed": g["job_group"] in jobs,
             "seconds": jobs.get(g["job_group"], {}).get("elapsed")} for g in manifest["jobs"]]


def _report(plan: Plan, s3, hook: OpenSearchDomainHook, manifest: dict, context: dict, asset) -> dict:
    ti = context["ti"]
    model = ti.xcom_pull(task_ids="ensure_model") or {}
    jobs = _mapped(ti, "batch_predict")
    by_group = _by_group(jobs)
    job = _one_job(by_group, manifest)
    shards = _mapped(ti, "check_outputs") or None
    if shards is None:  # no outputs were checked: every staged record failed
        present = {s["name"]: False for s in manifest["shards"]}
        reasons = {}
    else:
        present = {s["name"]: s["output_present"] for s in shards}
        reasons = {s["name"]: s["missing_reason"] for s in shards if s.get("missing_reason")}
    shard_results = _mapped(ti, "index_shard")
    stage_seconds = {
        "stage": manifest.get("seconds", 0.0),
        "connector_model": model.get("seconds", 0.0),
        "batch_predict": max((j.get("elapsed") or 0.0 for j in jobs), default=0.0),
        "index (slowest shard)": max((r.get("seconds", 0.0) for r in shard_results), default=0.0),
    }
    switched = ti.xcom_pull(task_ids="switch_alias") or {}
    result = assemble.build_report(plan, s3, hook, manifest=manifest, shards_present=present,
                                 model=model, job=job, stage_seconds=stage_seconds,
                                 missing_reason="batch_job_failed" if shards is None
                                 else "output_missing", missing_reasons=reasons)
    result.alias_moved = bool(switched.get("moved"))
    # Whether the alias serves what this run wrote (true after a retried switch as well).
    result.extra["alias_serves_it"] = aliases.resolve(
        hook, plan.index_name, manifest["index"]).mode != "build"
    result.extra["alias"] = switched or {"moved": False,
                                         "why": "switch_alias did not run (a task failed)"}
    if len(manifest.get("jobs") or ()) > 1:  # one row per group's job
        result.extra["transform_jobs"] = _job_rows(manifest, by_group)
    if job.get("skipped"):
        result.extra["batch_job"] = job["skipped"]
    elif shards is None:
        result.extra["batch_job"] = "failed or not run: see the batch_predict task log"
    failed_shards = {s["name"]: s["failure"] for s in shards or [] if s.get("failure")}
    if failed_shards:  # which shards the failed job did not transform, and why
        result.extra["failed_shards"] = failed_shards
    try:
        uri = assemble.publish(plan, s3, result)
    except assemble.RunFailed as exc:
        if exc.retryable:
            raise
        raise fail_for_good(str(exc)) from exc  # a retry would only say it again
    totals = result.totals
    # The event names the index this run wrote, on its host, so a downstream DAG can
    # schedule on one index (its Asset) or on every index (the alias).
    context["outlet_events"][asset].add(
        index_asset(hook.target()["url"], plan.index_name),
        extra={"index": plan.index_name, "physical_index": result.physical_index,
               "alias_moved": result.alias_moved, "run_key": plan.run_key,
               "created": totals.created, "updated": totals.updated,
               "unchanged": totals.unchanged, "deleted": totals.deleted, "report": uri})
    return {"report_uri": uri, **result.to_dict()}
