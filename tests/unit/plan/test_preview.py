"""Plan preview: the estimate math (pure), sampling real files, the preview against the
devstack's real S3, and the CLI (python -m batchvec.plan.preview --json)."""


from __future__ import annotations

import gzip

import pytest

from batchvec.ingest.sources import SourceFile
from batchvec.plan import estimates, preview, run_plan
from batchvec.plan.estimates import Sample
from tests.helpers.paths import REPO
from tests.helpers.preview_helpers import TOLERANCE, jsonl, records


def test_vcpus_and_the_embed_rate_follow_the_instance_size():
    assert [estimates.vcpus(t) for t in ("ml.m5.large", "ml.m5.xlarge", "ml.c5.4xlarge",
                                          "ml.t2.medium", "ml.m5.metal")] == [2, 4, 16, 1, None]
    rate, basis = estimates.embed_rate("ml.m5.2xlarge")
    assert rate == pytest.approx(75.6 / 2 * 8) and "P6" in basis
    assert estimates.embed_rate("ml.m5.xlarge", 500.0) == (500.0, "given")
    assert "GPU" in estimates.embed_rate("ml.g5.xlarge")[1]


def test_records_exact_for_whole_files_and_scaled_for_the_rest():
    sizes = [1000, 10_000, 20_000]
    samples = {0: Sample(1000, 1000, 10, True), 1: Sample(10_000, 5000, 50, False)}
    est = estimates.estimate_records(sizes, samples)
    # 10 exact + (10,000 + 20,000) bytes at 6,000 / 60 = 100 bytes a record
    assert est["records"] == 10 + 300 and not est["exact"] and est["bytes_per_record"] == 100
    whole = estimates.estimate_records([1000], {0: Sample(1000, 1000, 10, True)})
    assert whole["exact"] and whole["records"] == 10


def test_a_csv_header_is_not_a_record():
    # header of 8 bytes per file; rows of 10 bytes
    samples = {0: Sample(108, 108, 10, True, overhead=8)}
    assert estimates.estimate_records([108, 1008], samples)["records"] == 10 + 100


def test_transform_hours_follow_shards_per_instance():
    # 4 shards of 2,500 on 2 instances at 100 docs/s: each instance does 2 shards = 50 s
    t = estimates.transform_estimate(10_000, 4, 2, 100.0)
    assert (t["jobs"], t["wall_s"], t["instance_hours"]) == (1, 50.0, round(100 / 3600, 3))
    # more instances than shards: the idle ones are billed for the whole job
    idle = estimates.transform_estimate(10_000, 2, 4, 100.0)
    assert idle["busy_instances"] == 2 and idle["wall_s"] == 50.0
    assert idle["instance_hours"] == round(200 / 3600, 3)
    assert estimates.transform_estimate(0, 2, 1, 100.0)["wall_s"] == 0


def test_jobs_per_shard_group_run_max_parallel_at_once():
    # 4 shards of 2,500, at most 5,000 records a job: 2 jobs of 2 shards, 25 s each on 2
    # instances; one at a time they take 50 s, two at once 25 s; billed alike
    one = estimates.transform_estimate(10_000, 4, 2, 100.0, 5_000, 64, 1)
    two = estimates.transform_estimate(10_000, 4, 2, 100.0, 5_000, 64, 2)
    assert (one["jobs"], one["parallel"], one["wall_s"]) == (2, 1, 50.0)
    assert (two["jobs"], two["parallel"], two["wall_s"]) == (2, 2, 25.0)
    assert one["instance_hours"] == two["instance_hours"] == round(100 / 3600, 3)
    assert estimates.transform_estimate(10_000, 4, 2, 100.0, 1, 3, 8)["jobs"] == 3  # max_jobs
    assert estimates.transform_estimate(0, 4, 2, 100.0, 5_000)["jobs"] == 0  # nothing to embed


def test_staging_and_indexing_time():
    st = estimates.staging_estimate([200e6, 100e6], 50.0)
    assert (st["parallel_s"], st["serial_s"]) == (4.0, 6.0)
    assert estimates.index_estimate(6504, estimates.INDEX_DOCS_PER_S)["wall_s"] == 2.0
    assert (estimates.hms(12.5), estimates.hms(200), estimates.hms(3720)) == ("12.5s", "3m 20s",
                                                                               "1h 02m")


def test_build_groups_files_as_staging_would():
    files = [SourceFile(f"/in/{i}.jsonl", 40 * 10**6, "jsonl", False) for i in range(5)]
    samples = {"jsonl": {"indexes": list(range(5)),
                         "samples": {0: Sample(40 * 10**6, 10**6, 1000, False)}}}
    settings = {"staging_group_mb": 100, "max_staging_tasks": 32, "staging_commit_mb": 50,
                "shards": 4, "instance_type": "ml.m5.xlarge", "instance_count": 2,
                "embed_docs_per_s_per_instance": 100.0, "index_docs_per_s": 1000.0,
                "stage_mb_per_s": 10.0}
    p = preview.build(files, samples, settings)
    assert p["records"]["total"] == 200_000 and p["input"]["bytes"] == 200 * 10**6
    assert [(g["files"], g["segments"]) for g in p["staging"]["rows"]] == [(3, 2), (2, 1)]
    assert (p["staging"]["parallel_s"], p["staging"]["serial_s"]) == (12.0, 20.0)
    assert p["shards"] == {"count": 4, "records_per_shard": 50_000}
    assert p["transform"]["wall_s"] == 1000.0 and p["indexing"]["wall_s"] == 200.0
    text = preview.render(p)
    assert "~200,000 (estimated)" in text and "2 x ml.m5.xlarge" in text
    many = preview.build(files * 4, {"jsonl": {**samples["jsonl"], "indexes": list(range(20))}},
                         {**settings, "staging_group_mb": 40})
    assert many["staging"]["groups"] == 20 and "12 more groups" in preview.render(many)


def test_plan_takes_dry_run_and_the_rates(tmp_path):
    source = tmp_path / "in.jsonl"
    source.write_text('{"id": 1, "text": "x"}\n')
    base = {"input_uri": str(source), "sagemaker_model_name": "m", "sagemaker_endpoint_name": "e"}
    kw = {"dag_id": "d", "run_id": "manual__x", "ds": "2026-04-20", "region": "us-east-1"}
    p = run_plan.resolve_plan(base, **kw)
    assert not p.dry_run and p.index_docs_per_s == estimates.INDEX_DOCS_PER_S
    p = run_plan.resolve_plan({**base, "dry_run": True, "embed_docs_per_s_per_instance": 900}, **kw)
    assert p.dry_run and p.embed_docs_per_s_per_instance == 900.0
    with pytest.raises(ValueError) as err:
        run_plan.resolve_plan({**base, "dry_run": "yes", "index_docs_per_s": 0,
                           "stage_mb_per_s": float("inf")}, **kw)
    text = str(err.value)
    assert "dry_run: must be a boolean" in text and "index_docs_per_s: must be a number > 0" \
        in text and "stage_mb_per_s" in text


def test_readme_lists_the_preview_params_and_sources():
    readme = (REPO / "README.md").read_text()
    for name in ("dry_run", *estimates.RATE_PARAMS):
        assert f"| `{name}`" in readme, name
    assert "## Preview a run" in readme and "P6" in readme and "P3n" in readme


def test_sampling_local_files_jsonl_gzip_csv(tmp_path):
    big = records(1, 12_000)
    (tmp_path / "big.jsonl").write_bytes(jsonl(big))
    (tmp_path / "small.jsonl").write_bytes(jsonl(big[:50], blank_lines=3))
    (tmp_path / "big.jsonl.gz").write_bytes(gzip.compress(jsonl(big)))
    rows = "id,text\n" + "".join(f"{d['id']},{d['text']}\n" for d in big)
    (tmp_path / "rows.csv").write_text(rows)
    got = {}
    for name in ("big.jsonl", "small.jsonl", "big.jsonl.gz", "rows.csv"):
        path = tmp_path / name
        fmt = "csv" if name.endswith(".csv") else "jsonl"
        got[name] = preview.sample_lines(None, SourceFile(str(path), path.stat().st_size, fmt,
                                                          name.endswith(".gz")))
    assert got["small.jsonl"].exact and got["small.jsonl"].records == 50
    for name in ("big.jsonl", "big.jsonl.gz", "rows.csv"):
        s = got[name]
        assert not s.exact and s.stored <= preview.SAMPLE_BYTES
        guess = (s.size - s.overhead) * s.records / (s.stored - s.overhead)
        assert abs(guess - 12_000) <= TOLERANCE * 12_000, (name, guess)
    assert got["big.jsonl.gz"].inflated > got["big.jsonl.gz"].stored


@pytest.mark.parametrize("flags", [["--max-staging-tasks", "0"], ["--staging-group-mb", "0"],
                                   ["--index-docs-per-s", "0"], ["--instance-count", "0"]])
def test_cli_refuses_settings_that_make_no_sense(tmp_path, flags, capsys):
    (tmp_path / "in.jsonl").write_text('{"id": 1, "text": "x"}\n')
    with pytest.raises(SystemExit) as exc:
        preview.main(["--input", str(tmp_path), *flags])
    assert exc.value.code == 2 and "must be" in capsys.readouterr().err

