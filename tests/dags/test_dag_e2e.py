"""The batch_embeddings DAG end to end on the devstack, through Airflow's dag.test().

Real Airflow (SQLite), real S3 (SeaweedFS), the real model behind the SageMaker stand-in,
a real OpenSearch node with ML Commons behind the devstack's HTTPS front. Each test reads the
run's report from S3 and checks the index itself.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

import numpy as np
import pytest

from tests.helpers.dag_helpers import (
    asset_events,
    docs,
    load_dag,
    opensearch_host,
    os_get,
    reports,
    run,
    transform_jobs,
    write_jsonl,
)

pytestmark = [pytest.mark.devstack, pytest.mark.airflow]
TEXTS = ["a kitten naps in the sun", "stock markets fell on rate fears",
         "bake bread with flour and yeast"]


def test_manual_run_on_local_file_balances_and_stores_the_models_vectors(dag, airflow_env, tmp_path):
    devstack = airflow_env
    source = write_jsonl(tmp_path / "in.jsonl", docs("loc", 40),
                         ['{"id": "bad-1", "text": "   "}', "not json", ""])
    dagrun = run(dag, datetime(2026, 2, 1, tzinfo=UTC),
                 {"input_uri": str(source), "index_name": "e2e-local", "metadata_fields": ["topic"],
                  "max_reject_ratio": 0.1})
    assert dagrun.state == "success"
    (rep,) = reports(devstack, "e2e-local")
    t = rep["totals"]
    assert t["records_in"] == 42  # the blank line is not a record
    assert (t["created"], t["updated"], t["rejected_total"], t["failed_total"]) == (40, 0, 2, 0)
    assert rep["balanced"] and rep["extra"]["smoke_query"]["ok"]
    assert set(rep["totals"]["rejected"]) == {"empty_text", "invalid_json"}
    assert os_get(devstack, "/e2e-local/_count")["count"] == 40

    # A stored vector is the model's own embedding of the document's text.
    doc = os_get(devstack, "/e2e-local/_doc/loc-5")["_source"]
    assert doc["topic"] == "1" and "loc-5" not in json.dumps(doc)  # _id not in the source
    runtime = devstack.boto3_client("sagemaker-runtime")
    answer = runtime.invoke_endpoint(EndpointName="devstack-minilm", ContentType="application/json",
                                     Body=json.dumps([doc["text"]]))
    expected = np.asarray(json.loads(answer["Body"].read())[0], dtype=np.float64)
    stored = np.asarray(doc["embedding"], dtype=np.float64)
    assert stored.shape == (384,)
    cosine = stored @ expected / (np.linalg.norm(stored) * np.linalg.norm(expected))
    assert cosine >= 0.9999

    # Index settings are restored after the bulk load.
    # (keyed by the physical index behind the alias)
    settings = next(iter(os_get(devstack, "/e2e-local/_settings").values()))["settings"]["index"]
    assert str(settings.get("refresh_interval", "1s")) != "-1"

    # Running the same run again: no duplicate documents, no second transform job.
    jobs_before = len(transform_jobs(devstack))
    again = run(dag, datetime(2026, 2, 1, tzinfo=UTC),
                {"input_uri": str(source), "index_name": "e2e-local", "metadata_fields": ["topic"],
                 "max_reject_ratio": 0.1})
    assert again.state == "success"
    latest = reports(devstack, "e2e-local")[-1]["totals"]
    assert (latest["created"], latest["updated"]) == (0, 40)
    assert os_get(devstack, "/e2e-local/_count")["count"] == 40
    assert len(transform_jobs(devstack)) == jobs_before


def test_scheduled_runs_read_their_own_day_partition(dag, airflow_env):
    devstack = airflow_env
    s3 = devstack.s3.client()
    days = {"2026-03-01": docs("d1", 12), "2026-03-02": docs("d2", 7)}
    for ds, items in days.items():
        body = "\n".join(json.dumps(d) for d in items).encode()
        s3.put_object(Bucket=devstack.s3.bucket, Key=f"input/ds={ds}/part-0.jsonl", Body=body)
    for ds in days:
        dagrun = run(dag, datetime.fromisoformat(ds).replace(tzinfo=UTC), {"index_name": "e2e-daily"})
        assert dagrun.state == "success", ds
    got = reports(devstack, "e2e-daily")
    assert [r["totals"]["records_in"] for r in got] == [12, 7]
    assert [r["extra"]["input_uri"] for r in got] == [
        f"s3://{devstack.s3.bucket}/input/ds={ds}/" for ds in days]
    assert os_get(devstack, "/e2e-daily/_count")["count"] == 19


# --- defects found trying the pipeline as a new user (issue 10); logical dates: 2026-08 -------

def test_parquet_and_csv_with_their_own_columns_index_with_typed_metadata(dag, airflow_env, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    devstack = airflow_env
    pq.write_table(pa.table({"doc_id": [f"p{i}" for i in range(6)],
                             "body": [f"{t} (parquet {i})" for i, t in enumerate(TEXTS * 2)],
                             "lang": ["en", "de"] * 3, "year": list(range(2020, 2026))}),
                   tmp_path / "a.parquet")
    rows = "".join(f"c{i},{t} (csv {i}),fr,{2000 + i}\n" for i, t in enumerate(TEXTS))
    (tmp_path / "b.csv").write_text("doc_id,body,lang,year\n" + rows)
    dagrun = run(dag, datetime(2026, 8, 1, tzinfo=UTC),
                 {"input_uri": str(tmp_path), "index_name": "e2e-own-columns", "id_field": "doc_id",
                  "text_field": "body", "metadata_fields": ["lang", "year"]})
    assert dagrun.state == "success"
    (rep,) = reports(devstack, "e2e-own-columns")
    assert (rep["totals"]["records_in"], rep["totals"]["created"], rep["totals"]["rejected_total"]) \
        == (9, 9, 0)
    parquet_doc = os_get(devstack, "/e2e-own-columns/_doc/p3")["_source"]
    csv_doc = os_get(devstack, "/e2e-own-columns/_doc/c1")["_source"]
    assert (parquet_doc["lang"], parquet_doc["year"]) == ("de", 2023)
    assert (csv_doc["lang"], csv_doc["year"], csv_doc["text"]) == ("fr", 2001, TEXTS[1] + " (csv 1)")

    # The asset event names the index this run wrote, on its host, through the alias.
    (event,) = asset_events(dagrun.run_id)
    assert event["uri"] == f"opensearch://{opensearch_host(devstack)}/e2e-own-columns"
    assert event["aliases"] == ["batch_embeddings_index"]
    assert event["extra"]["index"] == "e2e-own-columns" and event["extra"]["created"] == 9


def test_predict_through_ml_commons_answers_a_vector_per_text(airflow_env):
    from batchvec.hooks import mlcommons
    from batchvec.hooks.opensearch import OpenSearchDomainHook
    from batchvec.model import connectors
    from devstack import seed
    from tests.helpers.contract_helpers import devstack_spec

    spec = devstack_spec(airflow_env.endpoints)
    model_id = connectors.ensure_model(OpenSearchDomainHook(), spec,
                                       connectors.aws_connection_keys("aws_default"))["model_id"]
    got = np.asarray(mlcommons.predict_embeddings(OpenSearchDomainHook(), model_id, TEXTS))
    runtime = airflow_env.boto3_client("sagemaker-runtime")
    want = np.asarray(json.loads(runtime.invoke_endpoint(
        EndpointName=seed.DEFAULT_ENDPOINT, ContentType="application/json",
        Body=json.dumps(TEXTS))["Body"].read()))
    assert got.shape == (len(TEXTS), 384)
    cosines = (got * want).sum(1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(want, axis=1))
    assert (cosines >= 0.9999).all(), cosines


def test_a_default_run_finds_what_make_airflow_seeds(dag, airflow_env):
    from devstack import seed

    devstack = airflow_env
    day = datetime(2026, 8, 15, tzinfo=UTC)
    written = seed.stage_sample_partitions(devstack.endpoints, seed.default_partition_days(day.date()))
    assert [w.split("/input/")[1] for w in written] == [
        "ds=2026-08-14/documents.jsonl", "ds=2026-08-15/documents.jsonl"]
    assert seed.stage_sample_partitions(devstack.endpoints, ["2026-08-15"]) == []  # left alone
    dagrun = run(dag, day, {})  # the form's defaults, as a scheduled run or manual trigger
    assert dagrun.state == "success"
    (rep,) = reports(devstack, "batch-embeddings")
    assert rep["extra"]["input_uri"] == f"s3://{devstack.s3.bucket}/input/ds=2026-08-15/"
    assert rep["balanced"] and rep["totals"]["created"] + rep["totals"]["updated"] > 250


def test_a_file_the_job_fails_is_named_and_the_others_are_indexed(airflow_env, tmp_path,
                                                                   monkeypatch):
    """A record over MaxPayloadInMB fails its input file in SageMaker (the whole job ends
    Failed): the shards whose files succeeded are still indexed, the failed one is counted
    failed with the job's FailureReason, and the report balances."""
    monkeypatch.setenv("BATCHVEC_RETRIES", "0")  # the same file fails on every attempt
    devstack = airflow_env
    items = docs("pay", 20)
    # 600,000 quotes are 1.2 MB once JSON-escaped: over max_payload_mb=1, under the text limit.
    items.append({"id": "pay-huge", "text": "a quote-heavy record " + '"' * 600_000})
    source = write_jsonl(tmp_path / "in.jsonl", items)
    dagrun = run(load_dag(), datetime(2026, 8, 20, tzinfo=UTC),
                 {"input_uri": str(source), "index_name": "e2e-failed-file", "shards": 2,
                  "max_payload_mb": 1})
    assert dagrun.state == "failed"
    (rep,) = reports(devstack, "e2e-failed-file")
    assert rep["balanced"]
    failed_rows = [s for s in rep["shards"] if s["failed"]]
    (row,) = failed_rows
    assert set(row["failed"]) == {"batch_job_failed"}
    assert row["shard"] in rep["extra"]["failed_shards"]
    assert "max payload" in rep["extra"]["failed_shards"][row["shard"]].lower()
    t = rep["totals"]
    assert t["created"] + t["updated"] == 21 - row["records_in"] > 0  # the other shard indexed
    assert os_get(devstack, f"/{rep['physical_index']}/_count")["count"] == 21 - row["records_in"]
    assert not rep["alias_moved"]  # an incomplete build is not put behind the alias
