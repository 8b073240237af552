"""The batch_embeddings DAG end to end on the devstack, through Airflow's dag.test().

Real Airflow (SQLite), real S3 (SeaweedFS), the real model behind the SageMaker stand-in,
ML Commons and OpenSearch stand-ins over HTTP. Each test reads the run's report from S3 and
checks the index itself.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

import numpy as np
import pytest

from tests.dag_helpers import docs, load_dag, os_get, reports, run, transform_jobs, write_jsonl

pytestmark = [pytest.mark.devstack, pytest.mark.airflow]


@pytest.fixture
def dag(airflow_env):
    return load_dag()


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
    settings = os_get(devstack, "/e2e-local/_settings")["e2e-local"]["settings"]["index"]
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
