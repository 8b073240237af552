"""Helpers for tests that run the batch_embeddings DAG on the devstack through dag.test()."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import requests

from tests.helpers.paths import REPO


def load_dag():
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
    # run_after fixes the run_id, so calling twice is the same run again, not a new one. The
    # run key (staging prefix, job name) follows from it: each test needs its own dates, or it
    # resumes another test's run (months so far: 2, 3, 8 e2e; 4 bad input; 6 faults; 7 security; 5, 9, 10, 11
    # incremental).
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


def os_session(devstack) -> requests.Session:
    """requests to the devstack's OpenSearch as its admin, verifying its TLS with its CA."""
    ep = devstack.endpoints
    session = requests.Session()
    session.auth = (ep["opensearch_user"], ep["opensearch_password"])
    session.verify = ep["opensearch_ca"]
    session.trust_env = False  # else REQUESTS_CA_BUNDLE replaces the CA above
    return session


def os_get(devstack, path: str, body: dict | None = None) -> dict:
    url = devstack.endpoints["opensearch"] + path
    session = os_session(devstack)
    resp = session.post(url, json=body, timeout=30) if body is not None \
        else session.get(url, timeout=30)
    resp.raise_for_status()
    return resp.json()


def transform_jobs(devstack) -> list[dict]:
    return devstack.boto3_client("sagemaker").list_transform_jobs(MaxResults=100)["TransformJobSummaries"]


def asset_events(run_id: str) -> list[dict]:
    """The asset events a run emitted, as Airflow recorded them: asset URI, extra, aliases."""
    from airflow.models.asset import AssetEvent
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        events = session.scalars(select(AssetEvent).where(AssetEvent.source_run_id == run_id)).all()
        return [{"uri": e.asset.uri, "extra": dict(e.extra or {}),
                 "aliases": sorted(a.name for a in e.source_aliases)} for e in events]


def opensearch_host(devstack) -> str:
    return devstack.endpoints["opensearch"].split("://", 1)[1]
