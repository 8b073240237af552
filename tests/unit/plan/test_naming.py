from __future__ import annotations

import re

import pytest

from batchvec.plan.naming import (
    join_key,
    join_s3,
    parse_s3_uri,
    run_key,
    transform_job_name,
    validate_index_name,
    validate_job_name,
)

JOB_RE = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$")
RUN_IDS = [
    "scheduled__2024-01-02T00:00:00+00:00",
    "manual__2024-06-01T12:34:56.789012+00:00",
    "backfill__2023-12-31T00:00:00+00:00",
    "asset_triggered__2024-01-01T00:00:00+00:00",
    "my custom run: #1 (über)",
    "::++..__",
    "x" * 300,
]


@pytest.mark.parametrize("run_id", RUN_IDS)
@pytest.mark.parametrize("dag_id", ["embed_daily", "Embed.Docs-V2", "_", "d" * 250])
def test_run_key_shape(dag_id: str, run_id: str) -> None:
    key = run_key(dag_id, run_id)
    assert re.fullmatch(r"[a-z0-9-]+", key), key
    assert len(key) <= 40
    assert JOB_RE.match(key)
    assert key == run_key(dag_id, run_id)  # deterministic


def test_run_key_readable_and_distinct() -> None:
    key = run_key("embed_daily", "scheduled__2024-01-02T00:00:00+00:00")
    assert key.startswith("embed-daily-sch-20240102")
    keys = {run_key("embed_daily", r) for r in RUN_IDS}
    keys |= {run_key("embed_other", r) for r in RUN_IDS}
    assert len(keys) == 2 * len(RUN_IDS)
    # ids that slug the same still differ by their hash
    assert run_key("a_b", "r") != run_key("a-b", "r")
    assert run_key("d", "manual__2024-01-01T00:00:00.000001+00:00") != run_key(
        "d", "manual__2024-01-01T00:00:00.000002+00:00")


def test_transform_job_name_attempts() -> None:
    key = run_key("embed_daily", "manual__2024-06-01T12:34:56.789012+00:00")
    assert transform_job_name(key) == key
    assert transform_job_name(key, 1) == key
    second = transform_job_name(key, 2)
    assert second == f"{key}-r2"
    assert transform_job_name(key, 17).endswith("-r17")
    for attempt in (1, 2, 99, 10_000):
        name = transform_job_name(key, attempt)
        assert JOB_RE.match(name) and len(name) <= 63
    for bad in (0, -1, True, 1.5):
        with pytest.raises(ValueError, match="attempt"):
            transform_job_name(key, bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["", "-a", "a-", "a_b", "a.b", "a" * 64, "é"])
def test_validate_job_name_rejects(name: str) -> None:
    with pytest.raises(ValueError, match="SageMaker job name"):
        validate_job_name(name)


def test_validate_job_name_accepts() -> None:
    assert validate_job_name("a") == "a"
    assert validate_job_name("A--b" + "c" * 59) == "A--b" + "c" * 59


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("", "non-empty"),
        ("Docs", "lowercase"),
        ("_docs", "start"),
        ("-docs", "start"),
        ("+docs", "start"),
        (".", r"'\.'"),
        ("..", r"'\.\.'"),
        ("a b", "contain"),
        ("a,b", "contain"),
        ("a#b", "contain"),
        ("a:b", "contain"),
        ('a"b', "contain"),
        ("a/b", "contain"),
        ("a\\b", "contain"),
        ("a*b", "contain"),
        ("a?b", "contain"),
        ("a<b", "contain"),
        ("a>b", "contain"),
        ("a|b", "contain"),
        ("a" * 256, "255 bytes"),
        ("é" * 128, "255 bytes"),
    ],
)
def test_validate_index_name_rejects(name: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        validate_index_name(name)


def test_validate_index_name_accepts() -> None:
    for name in ("docs", "docs-2024.01.02", "a" * 255, ".hidden", "vectors_v2"):
        assert validate_index_name(name) == name


def test_parse_s3_uri() -> None:
    assert parse_s3_uri("s3://bucket/a/b.jsonl") == ("bucket", "a/b.jsonl")
    assert parse_s3_uri("s3://bucket") == ("bucket", "")
    assert parse_s3_uri("s3://bucket/") == ("bucket", "")
    assert parse_s3_uri("s3://my.bucket-1/p/") == ("my.bucket-1", "p/")


@pytest.mark.parametrize(
    ("uri", "why"),
    [
        ("bucket/key", "not an S3 URI"),
        ("https://bucket/key", "not an S3 URI"),
        ("s3:/bucket/key", "not an S3 URI"),
        ("s3:///key", "no bucket"),
        ("s3://ab/key", "bucket name"),
        ("s3://Bucket/key", "bucket name"),
        ("s3://bucket_x/key", "bucket name"),
        ("s3://-bucket/key", "bucket name"),
        ("s3://a..b/key", "bucket name"),
        ("s3://192.168.1.1/key", "IP address"),
        ("s3://xn--bucket/key", "reserves"),
        ("s3://" + "b" * 64 + "/k", "bucket name"),
        ("s3://bucket/" + "k" * 1025, "1024 bytes"),
        (None, "not an S3 URI"),
    ],
)
def test_parse_s3_uri_errors(uri: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        parse_s3_uri(uri)


def test_join() -> None:
    assert join_s3("bucket", "runs/", "/k1", "input/") == "s3://bucket/runs/k1/input/"
    assert join_s3("bucket", "runs", "k1", "manifest.json") == "s3://bucket/runs/k1/manifest.json"
    assert join_s3("bucket") == "s3://bucket/"
    assert join_key("a", "", "/b/", "c") == "a/b/c"
    assert join_key("", "x/") == "x/"
    with pytest.raises(ValueError):
        join_s3("Bad_Bucket", "k")


# Computed with naming.py as it was before the package moved to plan/ (commit 7134e8b): a
# run key names everything a run made, so a retry after an upgrade must find it again.
@pytest.mark.parametrize(("dag_id", "run_id", "key"), [
    ("batch_embeddings", "scheduled__2026-01-02T00:00:00+00:00",
     "batch-embedd-sch-20260102t000-55a8e3f804"),
    ("batch_embeddings", "manual__2026-06-24T10:11:12.123456+00:00",
     "batch-embedd-man-20260624t101-4ee7ff691d"),
    ("embed_daily", "backfill__2024-01-02T00:00:00+00:00",
     "embed-daily-bf-20240102t00000-55b215053d"),
    ("a_b", "r", "a-b-r-2deaa750eb"),
    ("A-Very_Long.DAG id with spaces" * 3, "groups-2026-06-24",
     "a-very-long-groups-20260624-3cf0eff1e1"),
])
def test_run_keys_are_byte_identical_to_those_before_the_move(dag_id, run_id, key) -> None:
    assert run_key(dag_id, run_id) == key
