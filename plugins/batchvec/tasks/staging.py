"""The staging tasks, in the order they run (README: Staging at scale):

``list_input``    finds the index this run writes (index.aliases), lists the input once and
                  groups its files (``staging_groups``): ``staged/groups.json``
``stage_group``   mapped over the groups: pass one, committed per segment of files
``stage_shard``   mapped over the shards: pass two, the shard's pieces in input order, only
                  what changed (``incremental``), into the model's input
``stage``         the run's manifest from the groups and shards; what later tasks read,
                  with the transform jobs (``job_groups``) and their ManifestFiles

Every task reuses what an earlier try of it left (listing, commits, results) in S3.
"""

from __future__ import annotations

import logging
import time

from batchvec.batch import job_groups
from batchvec.errors import fail_for_good
from batchvec.hooks import s3io
from batchvec.hooks.aws import s3_client
from batchvec.hooks.opensearch import OpenSearchDomainHook
from batchvec.index import aliases
from batchvec.ingest import changes, incremental, sources, staging
from batchvec.ingest import staging_groups as groups
from batchvec.settings import MANIFEST_KEY, OPENSEARCH_CONN_ID
from batchvec.tasks.context import plan_of

log = logging.getLogger(__name__)


def list_input(plan_data: dict) -> dict:
    plan = plan_of(plan_data)
    s3 = s3_client()
    hook = OpenSearchDomainHook(OPENSEARCH_CONN_ID)
    listing = groups.read_listing(s3, plan.bucket, plan.run_prefix)
    if listing is not None:
        target = aliases.Target.from_dict(listing["target"])
        log.info("input listed by an earlier try: %d files in %d groups",
                 len(listing["files"]), len(listing["groups"]))
        if target.mode == "build" and aliases.acquire_build(hook, target.physical,
                                                                plan.run_key):
            log.warning("another run now holds the build of %s", target.physical)
        return _listing_summary(plan, listing)
    physical = aliases.physical_index_name(plan.index_name, plan.model_identity,
                                               plan.dimension)
    target = aliases.await_build(hook, plan.index_name, physical, plan.run_key,
                                     timeout_s=plan.wait_timeout,
                                     say=lambda msg: log.info("%s", msg))
    index_docs = hook.count(target.physical) if hook.index_exists(target.physical) else 0
    diffing = incremental.needs_diff(plan, index_docs)
    log.info("writing %s (%s, %d documents; alias %s serves %s): %s", target.physical,
             target.mode, index_docs, plan.index_name, target.previous or "nothing",
             "sending the model only what changed" if diffing else "every record to the model")
    try:
        source = sources.open_input(plan.input_uri, fmt=plan.input_format, s3_client=s3,
                                    spec=plan.record_spec)
    except sources.InputError as exc:  # nothing there, or a file no format fits
        raise fail_for_good(f"cannot read input_uri: {exc}") from None
    listing = groups.listing_doc(source.files, int(plan.staging_group_mb * groups.MB),
                                 plan.max_staging_tasks, int(plan.staging_commit_mb * groups.MB))
    carry = bool(target.mode == "build" and target.previous and plan.sync_mode == "upsert")
    if carry:
        log.info("model switch: %s's documents are re-embedded into %s with the input",
                 target.previous, target.physical)
    listing.update(target=target.to_dict(), index_docs=index_docs, diffing=diffing,
                   carry=carry, started=time.time())
    s3io.put_json(s3, plan.bucket, groups.listing_key(plan.run_prefix), listing)
    return _listing_summary(plan, listing)


def _listing_summary(plan, listing: dict) -> dict:
    shown = listing["groups"]
    log.info("staging %d input files, %.1f MB, in %d groups (%s) into %d shards",
             len(listing["files"]), listing["bytes"] / 1e6, len(shown),
             ", ".join(f"{g['end'] - g['start']} files/{g['bytes'] / 1e6:.1f} MB"
                       for g in shown[:8]) + (" ..." if len(shown) > 8 else ""), plan.shards)
    return {"groups": [g["group"] for g in shown], "shards": list(range(plan.shards)),
            "files": len(listing["files"]), "bytes": listing["bytes"]}


def stage_group(plan_data: dict, group: int) -> dict:
    """Pass one over one group's files, segment by segment; a committed segment is skipped."""
    plan = plan_of(plan_data)
    s3 = s3_client()
    manifest_key = groups.group_manifest_key(plan.run_prefix, group)
    try:
        return _group_result(s3io.get_json(s3, plan.bucket, manifest_key), "an earlier try")
    except s3.exceptions.NoSuchKey:
        pass
    listing = groups.read_listing(s3, plan.bucket, plan.run_prefix)
    entry = listing["groups"][group]
    files = [sources.SourceFile(**f) for f in listing["files"]]
    target = aliases.Target.from_dict(listing["target"])
    stamp = changes.make_stamper(plan.model_identity, plan.source_id)
    version_of = changes.version_reader(plan.version_field) if plan.version_field else None
    segments = entry["segments"]
    commits = []
    for n, (a, b) in enumerate(segments):
        prefix = groups.segment_prefix(plan.run_prefix, group, n)
        try:
            commits.append(s3io.get_json(s3, plan.bucket, f"{prefix}/{groups.COMMIT}"))
            log.info("group %d segment %d/%d (files %d-%d) committed by an earlier try",
                     group, n + 1, len(segments), a, b - 1)
            continue
        except s3.exceptions.NoSuchKey:
            pass
        carried = ()
        if listing["carry"] and group == 0 and n == 0:  # before any input: the input wins
            carried = incremental.carried_records(plan, OpenSearchDomainHook(OPENSEARCH_CONN_ID),
                                                  target.previous)
        size = sum(f.size for f in files[a:b])
        label = f"group {group} segment {n + 1}/{len(segments)}"
        source = sources.InputSet(plan.input_uri, fmt=plan.input_format, s3_client=s3,
                                  spec=plan.record_spec, files=files[a:b])
        staged = staging.stage(
            source, s3_client=s3, bucket=plan.bucket, prefix=prefix, shards=plan.shards,
            spec=plan.record_spec, stamp=stamp, version=plan.version, version_of=version_of,
            carried=carried, manifest_name=groups.COMMIT,
            rejected_key=groups.rejected_key(plan.run_prefix, group, n),
            # S3's smallest part: each shard holds one filling and one in flight (P7 memory)
            part_size=s3io.MIN_PART_SIZE,
            progress=lambda p, size=size, label=label: log.info(
                "staging %s: %s", label, staging.progress_line(p, size)))
        commits.append(staged.to_dict())
        log.info("%s committed: files %d-%d, %d records", label, a, b - 1, staged.records_in)
    summary = groups.group_summary(group, commits)
    for name, pieces in summary.pop("pieces").items():  # one small object per shard it fed
        s3io.put_json(s3, plan.bucket, groups.pieces_key(plan.run_prefix, group, name), pieces)
    s3io.put_json(s3, plan.bucket, manifest_key, summary)
    return _group_result(summary, "this try")


def _group_result(summary: dict, by: str) -> dict:
    log.info("group %d staged by %s: %d records (%d accepted) in %d segments", summary["group"],
             by, summary["records_in"], summary["accepted"], summary["segments"])
    return {k: summary[k] for k in ("group", "records_in", "accepted", "rejected", "segments")}


def stage_shard(plan_data: dict, shard: int) -> dict:
    """Pass two for one shard: its pieces from every group, in order."""
    plan = plan_of(plan_data)
    s3 = s3_client()
    name = staging.shard_name(shard)
    result_key = groups.shard_result_key(plan.run_prefix, name)
    try:
        row = s3io.get_json(s3, plan.bucket, result_key)
        log.info("shard %s staged by an earlier try", name)
    except s3.exceptions.NoSuchKey:
        listing = groups.read_listing(s3, plan.bucket, plan.run_prefix)
        pieces = []
        for g in listing["groups"]:
            try:
                pieces += s3io.get_json(s3, plan.bucket,
                                        groups.pieces_key(plan.run_prefix, g["group"], name))
            except s3.exceptions.NoSuchKey:  # the group had no record for this shard
                pass
        target = aliases.Target.from_dict(listing["target"])
        row = incremental.stage_shard(plan, OpenSearchDomainHook(OPENSEARCH_CONN_ID), s3,
                                      target.physical, shard, pieces, listing["diffing"])
        s3io.put_json(s3, plan.bucket, result_key, row)
    return {k: row[k] for k in ("name", "records", "embed", "unchanged", "superseded", "deletes")}


def stage(plan_data: dict) -> dict:
    """The run's manifest, from the listing, the groups and the shards; a full sync's delete
    ratio is checked here, before any document is deleted."""
    plan = plan_of(plan_data)
    s3 = s3_client()
    try:
        manifest = s3io.get_json(s3, plan.bucket, plan.key(MANIFEST_KEY))
        log.info("staging already complete for this run (manifest found): %d records in %d shards",
                 manifest["records_in"], len(manifest["shards"]))
        _require_records(plan, manifest)  # an earlier try that found none must not pass now
        if "jobs" not in manifest:  # saved before jobs per group: same cut, files again
            _cut_jobs(plan, s3, manifest)
        return _manifest_summary(manifest)
    except s3.exceptions.NoSuchKey:
        pass
    listing = groups.read_listing(s3, plan.bucket, plan.run_prefix)
    summaries = [s3io.get_json(s3, plan.bucket,
                               groups.group_manifest_key(plan.run_prefix, g["group"]))
                 for g in listing["groups"]]
    rows = [s3io.get_json(s3, plan.bucket, groups.shard_result_key(
        plan.run_prefix, staging.shard_name(n))) for n in range(plan.shards)]
    shards = [r for r in rows if r["records"] or r["deletes"]]
    target = aliases.Target.from_dict(listing["target"])
    try:
        incremental.check_delete_ratio(plan, shards, target.physical, listing["index_docs"])
    except incremental.DeleteRefused as exc:
        raise fail_for_good(str(exc)) from None
    manifest = groups.run_manifest(plan, listing, summaries, shards)
    manifest.update(target=target.to_dict(), index=target.physical, version=plan.version,
                    source_id=plan.source_id, sync_mode=plan.sync_mode,
                    seconds=round(time.time() - listing["started"], 2))
    manifest = incremental.totals(manifest)
    _cut_jobs(plan, s3, manifest)
    s3io.put_json(s3, plan.bucket, plan.key(MANIFEST_KEY), manifest)
    if not manifest["embed_total"] and manifest["accepted"]:
        log.info("nothing new or changed: no transform job will run (%d unchanged, %d "
                 "superseded)", manifest["unchanged_total"], manifest["superseded_total"])
    _require_records(plan, manifest)
    return _manifest_summary(manifest)


def _cut_jobs(plan, s3, manifest: dict) -> None:
    """One transform job per group of shards: each shard gets its `job` (None: nothing to
    embed) and `jobs` the batch_predict kwargs per group, each with its ManifestFile (written
    before the manifest that names it, so a retry never finds one missing)."""
    embed = [(s["name"], s.get("embed", s["records"])) for s in manifest["shards"]]
    cut = job_groups.group_shards(embed, plan.max_records_per_job, plan.max_jobs)
    group_of = {name: g for g, names in enumerate(cut) for name in names}
    counts = dict(embed)
    jobs = []
    for g, names in enumerate(cut):
        key = plan.key("jobs", f"j{g}.manifest")
        s3io.put_json(s3, plan.bucket, key, job_groups.manifest_body(plan.uri("input"), names))
        jobs.append({"job_group": g, "run_key": job_groups.job_base(plan.run_key, g, len(cut)),
                     "input_s3_uri": plan.uri("jobs", f"j{g}.manifest"),
                     "input_data_type": "ManifestFile",
                     "records_to_embed": sum(counts[n] for n in names)})
    for shard in manifest["shards"]:
        g = group_of.get(shard["name"])
        shard["job"] = g
        shard["job_name"] = None if g is None else jobs[g]["run_key"]
    manifest["jobs"] = jobs
    if len(jobs) > 1:
        log.info("%d transform jobs of %s records (max_records_per_job %d, max_jobs %d)",
                 len(jobs), [j["records_to_embed"] for j in jobs], plan.max_records_per_job,
                 plan.max_jobs)


def _require_records(plan, manifest: dict) -> None:
    """No transform job for an input without one valid record (SageMaker refuses an empty
    input prefix anyway); the report task still writes the report from the manifest."""
    if manifest.get("accepted", manifest["records_in"] - sum(manifest["rejected"].values())):
        return
    n = manifest["records_in"]
    if not n:
        raise fail_for_good(f"no records in {plan.input_uri}: its {len(manifest['sources'])} "
                            "file(s) are empty or hold only blank lines")
    reasons = ", ".join(f"{k}={v}" for k, v in sorted(manifest["rejected"].items()))
    examples = manifest.get("rejected_examples") or {}
    hints = "".join(f"; {reason}: {examples[reason]}" for reason in sorted(manifest["rejected"])
                    if reason in examples)
    where = ", ".join(f"s3://{plan.bucket}/{k}" for k in manifest.get("rejected_keys", ())[:3])
    raise fail_for_good(
        f"every record in {plan.input_uri} was rejected ({n} of {n}: {reasons}){hints}; each "
        f"one with its reason in {where}")


def _manifest_summary(manifest: dict) -> dict:
    return {"records_in": manifest["records_in"], "accepted": manifest["accepted"],
            "rejected": manifest["rejected"], "shards": manifest["shards"],
            "seconds": manifest.get("seconds", 0.0), "target": manifest["target"],
            "index": manifest["index"], "embed_total": manifest["embed_total"],
            "unchanged_total": manifest["unchanged_total"],
            "superseded_total": manifest["superseded_total"],
            "deletes_total": manifest["deletes_total"], "jobs": manifest["jobs"]}
