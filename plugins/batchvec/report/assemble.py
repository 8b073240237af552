"""The run's last word: accounting from what S3 holds, a smoke k-NN query, the report.

Runs even when upstream tasks failed, so a failed run still leaves a report that says which
records went where. Raises after writing the report when anything is off.
"""

from __future__ import annotations

import logging

from batchvec.hooks import s3io
from batchvec.hooks.opensearch import OpenSearchDomainHook
from batchvec.plan.run_plan import Plan
from batchvec.report.accounting import RunReport, ShardReport, render_table
from batchvec.settings import REPORT_KEY

log = logging.getLogger(__name__)

STAGING_ROW = "(staging)"


class RunFailed(Exception):
    """The run is off. `retryable` only when a retry of the report could change the verdict
    (the smoke query alone failed); accounting, failed records and reject ratio are final."""

    def __init__(self, message: str, retryable: bool = False):
        super().__init__(message)
        self.retryable = retryable


def shard_reports(plan: Plan, s3, manifest: dict, present: dict[str, bool],
                  missing_reason: str = "output_missing",
                  missing_reasons: dict[str, str] | None = None,
                  ) -> tuple[list[ShardReport], str | None]:
    """Staging's rejects as one row, then each shard from its saved result (or failed whole);
    also the first indexed document id found, for the smoke query. One read per shard."""
    rows = [ShardReport(shard=STAGING_ROW, records_in=sum(manifest["rejected"].values()),
                        rejected=dict(manifest["rejected"]))]
    sample = None
    for shard in manifest["shards"]:
        name = shard["name"]
        try:
            saved = s3io.get_json(s3, plan.bucket, plan.key("reports", name + ".json"))
        except s3.exceptions.NoSuchKey:
            reason = ((missing_reasons or {}).get(name, missing_reason)
                      if not present.get(name, True) else "indexing_failed")
            rows.append(ShardReport(shard=name, records_in=shard["records"],
                                    failed={reason: shard["records"]}))
            continue
        rows.append(ShardReport.from_dict(saved))
        sample = sample or saved.get("sample_id")
    return rows, sample


def smoke_query(hook: OpenSearchDomainHook, plan: Plan, doc_id: str, index: str | None = None) -> dict:
    """A stored document's own vector must find that document."""
    index = index or plan.index_name
    hook.refresh(index)
    doc = hook.get_document(index, doc_id)
    if doc is None:
        return {"ok": False, "doc_id": doc_id, "error": "document not found"}
    vector = doc["_source"].get(plan.vector_field)
    resp = hook.search(index, {
        "size": 10, "_source": False,
        "query": {"knn": {plan.vector_field: {"vector": vector, "k": 10}}}})
    ids = [h["_id"] for h in resp["hits"]["hits"]]
    return {"ok": doc_id in ids, "doc_id": doc_id, "top_ids": ids[:3]}


SAMPLE_VECTORS = 20


def check_build(hook: OpenSearchDomainHook, plan: Plan, manifest: dict, rows: list[ShardReport],
                sample: str | None, dimension: int) -> dict:
    """Before an alias may serve a new index: every record accounted for and none failed,
    the index holds at least every distinct id of the run, a stored vector finds its own
    document, and a sample of stored vectors has the dimension, finite and non-zero."""
    import math

    physical = manifest["index"]
    problems = []
    if not all(r.balanced for r in rows):
        problems.append("accounting does not balance")
    failed = sum(r.failed_total for r in rows)
    if failed:
        problems.append(f"{failed} records failed")
    by_name = {s["name"]: s for s in manifest["shards"]}
    expected = 0
    for row in rows:
        staged = by_name.get(row.shard, {})
        expected += staged["distinct"] if "distinct" in staged else \
            row.indexed - row.duplicates + row.unchanged + row.superseded
    hook.refresh(physical)
    count = hook.count(physical)
    if count < expected:
        problems.append(f"{physical} holds {count} documents, the run has {expected} ids")
    smoke = smoke_query(hook, plan, sample, physical) if sample else {"ok": False,
                                                                      "error": "no document"}
    if not smoke.get("ok"):
        problems.append(f"smoke query: {smoke}")
    hits = hook.search(physical, {"size": SAMPLE_VECTORS, "_source": [plan.vector_field],
                                  "query": {"function_score": {"random_score": {}}}})
    bad = []
    for hit in hits["hits"]["hits"]:
        vector = (hit.get("_source") or {}).get(plan.vector_field)
        if (not isinstance(vector, list) or len(vector) != dimension
                or not all(isinstance(v, int | float) and math.isfinite(v) for v in vector)
                or not any(vector)):
            bad.append(hit["_id"])
    if bad:
        problems.append(f"stored vectors not {dimension}-d, finite and non-zero: {bad[:5]}")
    return {"ok": not problems, "problems": problems, "count": count, "expected": expected,
            "sampled": len(hits["hits"]["hits"])}


def build_report(plan: Plan, s3, hook: OpenSearchDomainHook, *, manifest: dict,
                 shards_present: dict[str, bool], model: dict | None, job: dict | None,
                 stage_seconds: dict[str, float],
                 missing_reason: str = "output_missing",
                 missing_reasons: dict[str, str] | None = None) -> RunReport:
    rows, sample = shard_reports(plan, s3, manifest, shards_present, missing_reason,
                                 missing_reasons)
    job_ran = bool((job or {}).get("job_name"))
    report = RunReport(
        run_key=plan.run_key, dag_id=plan.dag_id, run_id=plan.run_id, index=plan.index_name,
        physical_index=manifest.get("index"),
        sagemaker_records=int((job or {}).get("records", manifest.get("embed_total", 0)))
        if job_ran else 0,
        model_name=(model or {}).get("model_name"), model_id=(model or {}).get("model_id"),
        task_id=(job or {}).get("task_id"), transform_job_name=(job or {}).get("job_name"),
        stage_seconds=stage_seconds, shards=rows,
        extra={"input_uri": plan.input_uri, "staging": plan.uri(""),
               "rejected_uri": plan.uri("rejected/"), "dlq_uri": plan.uri("dlq/"),
               "rejected_examples": manifest.get("rejected_examples") or {},
               "target": manifest.get("target"), "sync_mode": manifest.get("sync_mode"),
               "source_id": manifest.get("source_id"), "version": manifest.get("version"),
               "carried_over": manifest.get("carried", 0)},
    )
    deletes = [s["deletes_key"] for s in manifest["shards"] if s.get("deletes_key")]
    if deletes:  # the ids a full sync removed, listed per shard
        report.extra["deleted_lists"] = [f"s3://{plan.bucket}/{k}" for k in deletes]
    if sample and report.totals.indexed:
        try:
            report.extra["smoke_query"] = smoke_query(hook, plan, sample, manifest.get("index"))
        except Exception as exc:
            report.extra["smoke_query"] = {"ok": False, "doc_id": sample, "error": str(exc)}
    return report


def publish(plan: Plan, s3, report: RunReport) -> str:
    """Write the report to S3 and the log; raise when the run must fail."""
    key = plan.key(REPORT_KEY)
    s3io.put_json(s3, plan.bucket, key, report.to_dict())
    log.info("run report (s3://%s/%s):\n%s", plan.bucket, key, render_table(report))
    problems = []
    totals = report.totals
    if not report.balanced:
        problems.append("accounting does not balance: " + ", ".join(
            f"{r.shard} in={r.records_in} accounted={r.accounted}" for r in report.unbalanced))
    if totals.failed_total:
        problems.append(f"{totals.failed_total} records failed: {totals.failed}")
    target = report.extra.get("target") or {}
    if target.get("mode") == "build" and not report.extra.get("alias_serves_it"):
        problems.append(f"{target.get('physical')} was built but not switched live: the alias "
                        f"{report.index} still serves {target.get('previous') or 'nothing'} "
                        "(switch_alias's log says why)")
    if totals.delete_failed:
        problems.append(f"{totals.delete_failed} deletes failed (the DLQ holds each reason)")
    if report.reject_ratio > plan.max_reject_ratio:
        examples = report.extra.get("rejected_examples") or {}
        why = "".join(f"; {reason}: {examples[reason]}" for reason in sorted(totals.rejected)
                      if reason in examples)
        problems.append(f"rejected ratio {report.reject_ratio:.4f} exceeds max_reject_ratio "
                        f"{plan.max_reject_ratio} ({totals.rejected_total} of {totals.records_in})"
                        f"{why}")
    final = bool(problems)
    smoke = report.extra.get("smoke_query")
    if totals.indexed and not (smoke and smoke.get("ok")):
        problems.append(f"smoke k-NN query failed: {smoke}")
    if problems:
        raise RunFailed("; ".join(problems), retryable=not final)
    return f"s3://{plan.bucket}/{key}"
