"""Jobs per group of shards, on the devstack through dag.test: the shards are cut into
transform jobs over ManifestFiles, and a Failed job resubmits only its own group (`-r2`),
counted in the records SageMaker was sent."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from devstack import faults
from tests.helpers.dag_helpers import docs, load_dag, os_get, reports, run, write_jsonl

DOCS = 60
SHARDS = 6
PER_JOB = 20  # 60 records / 20 = 3 groups of 2 shards


def _jobs_of(devstack, key: str) -> dict[str, dict]:
    sm = devstack.boto3_client("sagemaker")
    names = [j["TransformJobName"] for j in sm.list_transform_jobs(MaxResults=100)
             ["TransformJobSummaries"] if j["TransformJobName"].startswith(key)]
    return {n: sm.describe_transform_job(TransformJobName=n) for n in names}


def _records_sent(devstack, desc: dict) -> int:
    """Lines in the input objects a job's ManifestFile lists: what it was sent to embed."""
    s3 = devstack.s3.client()
    source = desc["TransformInput"]["DataSource"]["S3DataSource"]
    assert source["S3DataType"] == "ManifestFile"
    bucket, key = source["S3Uri"][5:].split("/", 1)
    prefix, *names = json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    pbucket, pkey = prefix["prefix"][5:].split("/", 1)
    return sum(s3.get_object(Bucket=pbucket, Key=pkey + n)["Body"].read().count(b"\n")
               for n in names)


def _run_failing_group(devstack, source, group: int, day: int, index: str, **conf):
    """One run of 3 job groups whose group `group` has its first job fail."""
    faults.set_faults(devstack.state_dir, fail_job={
        "count": 1, "name_regex": rf".*-j{group}", "reason": f"AlgorithmError: group {group} (test)"})
    try:
        return run(load_dag(), datetime(2026, 6, day, tzinfo=UTC),
                   {"input_uri": str(source), "index_name": index, "shards": SHARDS,
                    "max_records_per_job": PER_JOB, **conf})
    finally:
        faults.unset(devstack.state_dir, "fail_job")


def test_a_failed_job_in_one_of_three_groups_resubmits_only_that_group(airflow_env, tmp_path,
                                                                        monkeypatch):
    devstack = airflow_env
    monkeypatch.setenv("BATCHVEC_RETRIES", "1")
    source = write_jsonl(tmp_path / "in.jsonl", docs("grp", DOCS))
    dagrun = _run_failing_group(devstack, source, 1, 20, "groups-failed-one",
                                keep_staging=True)  # the jobs' inputs, counted below
    assert dagrun.state == "success"
    (rep,) = reports(devstack, "groups-failed-one")
    key = rep["run_key"]
    jobs = _jobs_of(devstack, key)
    assert sorted(jobs) == sorted([f"{key}-j0", f"{key}-j1", f"{key}-j1-r2", f"{key}-j2"])
    assert jobs[f"{key}-j1"]["TransformJobStatus"] == "Failed"
    assert all(jobs[n]["TransformJobStatus"] == "Completed"
               for n in (f"{key}-j0", f"{key}-j1-r2", f"{key}-j2"))
    sent = {n: _records_sent(devstack, d) for n, d in jobs.items()}
    assert sent[f"{key}-j0"] + sent[f"{key}-j1-r2"] + sent[f"{key}-j2"] == DOCS
    assert sent[f"{key}-j1"] == sent[f"{key}-j1-r2"] > 0
    # Paid again: one group, not the run (the naive retry sends all DOCS a second time).
    assert sum(sent.values()) == DOCS + sent[f"{key}-j1"] < 2 * DOCS
    t = rep["totals"]
    assert (t["created"], t["failed_total"]) == (DOCS, 0) and rep["balanced"]
    assert rep["sagemaker_records"] == DOCS
    rows = rep["extra"]["transform_jobs"]
    assert [(r["group"], r["records"], r["job_name"]) for r in rows] == [
        (0, sent[f"{key}-j0"], f"{key}-j0"), (1, sent[f"{key}-j1"], f"{key}-j1-r2"),
        (2, sent[f"{key}-j2"], f"{key}-j2")]
    assert os_get(devstack, f"/{rep['physical_index']}/_count")["count"] == DOCS


def test_a_group_that_fails_for_good_fails_only_its_shards(airflow_env, tmp_path, monkeypatch):
    """No retries left: the other groups' shards are indexed, the failed group's shards are
    counted failed with the job's FailureReason, and the run fails, balanced."""
    devstack = airflow_env
    monkeypatch.setenv("BATCHVEC_RETRIES", "0")
    source = write_jsonl(tmp_path / "in.jsonl", docs("grf", DOCS))
    dagrun = _run_failing_group(devstack, source, 2, 21, "groups-failed-good")
    assert dagrun.state == "failed"
    (rep,) = reports(devstack, "groups-failed-good")
    assert rep["balanced"]
    failed = {s["shard"]: s["records_in"] for s in rep["shards"] if s["failed"]}
    assert len(failed) == 2  # group 2's two shards
    assert all("group 2 (test)" in rep["extra"]["failed_shards"][name] for name in failed)
    t = rep["totals"]
    assert t["failed_total"] == sum(failed.values()) > 0
    assert t["created"] == DOCS - t["failed_total"]
    assert os_get(devstack, f"/{rep['physical_index']}/_count")["count"] == t["created"]
