"""Shared by the contract tests of our client against the devstack's real OpenSearch node
(through its HTTPS front): Airflow connections to it, unique names, the node read directly,
and tiny inputs for transform jobs."""

from __future__ import annotations

import json
import time
import uuid

import requests

from tests.helpers.dag_helpers import os_session


def unique(prefix: str) -> str:
    """A fresh index / job name: one node serves the whole test session."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def set_conn(monkeypatch, conn_id: str, conn: dict) -> None:
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(conn))


def opensearch_conn(ep: dict, *, ca: bool = True, **extra) -> dict:
    """A connection to the front; its CA unless `ca` is False (or extra names another)."""
    host, port = ep["opensearch"].rsplit(":", 1)
    if ca:
        extra.setdefault("ca_certs", ep["opensearch_ca"])
    return {"conn_type": "generic", "host": host.split("://")[1], "port": int(port),
            "schema": "https", "extra": extra}


def devstack_spec(ep: dict, **overrides):
    """The ModelSpec a devstack run of the DAG uses (seeded model and endpoint), changed by
    `overrides`; a `contract` tag makes its model this session's own."""
    from batchvec.model.connectors import ModelSpec
    from devstack import seed

    fields = dict(role_arn=seed.CONNECTOR_ROLE_ARN, region=ep["region"],
                  model_name=seed.DEFAULT_MODEL, endpoint_name=seed.DEFAULT_ENDPOINT,
                  sagemaker_api_url=ep["sagemaker"], sagemaker_runtime_url=ep["sagemaker_runtime"])
    return ModelSpec(**{**fields, **overrides})


def node_get(ep: dict, path: str) -> dict:
    """GET on the node itself (plain HTTP, no auth): what it really stores."""
    return requests.get(ep["opensearch_node"] + path, timeout=30).json()


def ml_search(devstack, kind: str, query: dict) -> list[dict]:
    resp = os_session(devstack).post(f"{devstack.endpoints['opensearch']}/_plugins/_ml/{kind}/_search",
                                     json={"query": query, "size": 100}, timeout=30)
    resp.raise_for_status()
    return resp.json()["hits"]["hits"]


def stage_input(devstack, prefix: str, texts: list[str]) -> tuple[str, str]:
    """(input prefix URI, output prefix URI) with one JSON-lines file of `texts`."""
    s3, bucket = devstack.s3.client(), devstack.s3.bucket
    body = "".join(json.dumps({"_id": f"d{i}", "text": t}) + "\n" for i, t in enumerate(texts))
    s3.put_object(Bucket=bucket, Key=f"{prefix}/input/part-0.jsonl", Body=body.encode())
    return f"s3://{bucket}/{prefix}/input/", f"s3://{bucket}/{prefix}/output/"


def wait_task(hook, task_id: str, until, timeout: float = 120.0) -> tuple[dict, list[str]]:
    """Poll mlcommons.get_task until `until(task)`; (last task, states seen in order)."""
    from batchvec.hooks import mlcommons

    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while True:
        task = mlcommons.get_task(hook, task_id)
        if not seen or seen[-1] != task["state"]:
            seen.append(task["state"])
        if until(task):
            return task, seen
        assert time.monotonic() < deadline, f"task {task_id} still {seen} after {timeout:.0f}s"
        time.sleep(0.5)
