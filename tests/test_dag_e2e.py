"""The batch_embeddings DAG end to end on the devstack, through Airflow's dag.test().

Real Airflow (SQLite), real S3 (SeaweedFS), the real model behind the SageMaker stand-in,
ML Commons and OpenSearch stand-ins over HTTP. Each test reads the run's report from S3 and
checks the index itself.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
import requests

pytestmark = [pytest.mark.devstack, pytest.mark.airflow]

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def dag(airflow_env):
    """Parsed afresh per test: dag.test() leaves a run's conf in the DAG object's params."""
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(REPO / "dags"))
    assert not bag.import_errors, bag.import_errors
    return bag.dags["batch_embeddings"]


def write_jsonl(path: Path, docs: list[dict], extra_lines: list[str] = ()) -> Path:
    lines = [json.dumps(d) for d in docs] + list(extra_lines)
    path.write_text("\n".join(lines) + "\n")
    return path


def docs(prefix: str, n: int) -> list[dict]:
    topics = ["a kitten naps in the sun", "stock markets fell on rate fears",
              "bake bread with flour and yeast", "the rover drove across Mars"]
    return [{"id": f"{prefix}-{i}", "text": f"{topics[i % 4]} (note {i})", "topic": str(i % 4)}
            for i in range(n)]


def run(dag, logical_date: datetime, conf: dict):
    # run_after fixes the run_id, so calling twice is the same run again, not a new one.
    return dag.test(run_after=logical_date, logical_date=logical_date, run_conf=conf)


def reports(devstack, index: str) -> list[dict]:
    s3 = devstack.s3.client()
    found = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=devstack.s3.bucket, Prefix="runs/"):
        for obj in page.get("Contents", []):
            if obj["Key"].endswith("/report.json"):
                rep = json.loads(s3.get_object(Bucket=devstack.s3.bucket, Key=obj["Key"])["Body"].read())
                if rep["index"] == index:
                    found.append((obj["LastModified"], rep))
    return [r for _, r in sorted(found, key=lambda x: x[0])]


def os_get(devstack, path: str, body: dict | None = None) -> dict:
    ep = devstack.endpoints
    resp = requests.post(ep["opensearch"] + path, json=body, timeout=30,
                         auth=(ep["opensearch_user"], ep["opensearch_password"])) if body is not None \
        else requests.get(ep["opensearch"] + path, timeout=30,
                          auth=(ep["opensearch_user"], ep["opensearch_password"]))
    resp.raise_for_status()
    return resp.json()


def transform_jobs(devstack) -> list[dict]:
    return devstack.boto3_client("sagemaker").list_transform_jobs(MaxResults=100)["TransformJobSummaries"]


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
