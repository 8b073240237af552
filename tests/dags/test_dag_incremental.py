"""Incremental runs through the DAG on the real node: unchanged documents cost no transform
job, a full sync deletes exactly what left its source, versions order backfilled days, and a
model switch builds a new index behind the alias (changes.py, incremental.py, index_alias.py).

Logical dates (each test its own month of 2026, after the DAG's start_date): 09 reruns,
10 full sync, 11 backfill order, 05 model switch.
"""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime

import numpy as np
import pytest

from batchvec.hooks.opensearch import OpenSearchDomainHook
from batchvec.index import aliases
from devstack import faults, seed
from devstack.model import HashEmbedder
from tests.helpers.dag_helpers import docs, os_get, reports, run, transform_jobs, write_jsonl

pytestmark = [pytest.mark.devstack, pytest.mark.airflow,
              pytest.mark.usefixtures("no_faults")]


def day(month: int, d: int) -> datetime:
    return datetime(2026, month, d, tzinfo=UTC)


def served(devstack, alias: str) -> list[str]:
    return sorted(os_get(devstack, f"/_alias/{alias}"))


def staged_lines(devstack, rep: dict) -> int:
    """Records in the run's transform input (kept with keep_staging)."""
    s3 = devstack.s3.client()
    prefix = rep["extra"]["staging"].split("/", 3)[3] + "/input/"
    n = 0
    for obj in s3.list_objects_v2(Bucket=devstack.s3.bucket, Prefix=prefix).get("Contents", []):
        body = s3.get_object(Bucket=devstack.s3.bucket, Key=obj["Key"])["Body"].read()
        n += sum(1 for line in body.splitlines() if line.strip())
    return n


def endpoint_vector(devstack, text: str, endpoint: str = "devstack-minilm") -> np.ndarray:
    runtime = devstack.boto3_client("sagemaker-runtime")
    answer = runtime.invoke_endpoint(EndpointName=endpoint, ContentType="application/json",
                                     Body=json.dumps([text]))
    return np.asarray(json.loads(answer["Body"].read())[0], dtype=np.float64)


def cosine(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_a_rerun_sends_nothing_and_a_one_percent_change_sends_exactly_those(dag, airflow_env,
                                                                           tmp_path):
    devstack = airflow_env
    originals = docs("rr", 1000)
    source = write_jsonl(tmp_path / "in.jsonl", originals)
    conf = {"input_uri": str(source), "index_name": "inc-rerun", "metadata_fields": ["topic"],
            "shards": 2, "keep_staging": True}
    assert run(dag, day(9, 1), conf).state == "success"
    first = reports(devstack, "inc-rerun")[-1]
    assert first["totals"]["created"] == 1000 and first["sagemaker_records"] == 1000
    assert first["alias_moved"] and served(devstack, "inc-rerun") == [first["physical_index"]]

    jobs = len(transform_jobs(devstack))
    assert run(dag, day(9, 2), conf).state == "success"
    second = reports(devstack, "inc-rerun")[-1]
    t = second["totals"]
    assert (t["unchanged"], t["created"], t["updated"], t["failed_total"]) == (1000, 0, 0, 0)
    assert second["sagemaker_records"] == 0 and len(transform_jobs(devstack)) == jobs
    assert "no transform job" in second["extra"]["batch_job"]
    assert second["balanced"] and not second["alias_moved"]

    changed = {f"rr-{i}" for i in range(0, 1000, 100)}
    edited = [{**d, "text": d["text"] + " and then it rained"} if d["id"] in changed else d
              for d in originals]
    write_jsonl(source, edited)
    assert run(dag, day(9, 3), conf).state == "success"
    third = reports(devstack, "inc-rerun")[-1]
    t = third["totals"]
    assert (t["updated"], t["unchanged"], t["created"]) == (10, 990, 0)
    assert third["sagemaker_records"] == 10 == staged_lines(devstack, third)
    assert len(transform_jobs(devstack)) == jobs + 1
    doc = os_get(devstack, "/inc-rerun/_doc/rr-100")["_source"]
    assert doc["text"].endswith("and then it rained")
    assert cosine(doc["embedding"], endpoint_vector(devstack, doc["text"])) >= 0.9999
    assert os_get(devstack, "/inc-rerun/_count")["count"] == 1000
    # The serving index kept its replicas and refresh interval through every run.
    settings = os_get(devstack, f"/{third['physical_index']}/_settings")
    index_settings = next(iter(settings.values()))["settings"]["index"]
    assert index_settings.get("refresh_interval", "1s") != "-1"
    assert index_settings["number_of_replicas"] == "1"


def test_full_sync_deletes_exactly_what_left_its_source_and_refuses_past_the_ratio(
        dag, airflow_env, tmp_path):
    devstack = airflow_env
    catalog = docs("fs", 200)
    source = write_jsonl(tmp_path / "catalog.jsonl", catalog)
    full = {"input_uri": str(source), "index_name": "inc-full", "sync_mode": "full",
            "source_id": "catalog", "max_delete_ratio": 0.2, "shards": 3}
    assert run(dag, day(10, 1), full).state == "success"
    other = write_jsonl(tmp_path / "other.jsonl", docs("other", 5))
    assert run(dag, day(10, 2), {"input_uri": str(other), "index_name": "inc-full",
                                "source_id": "partner", "shards": 3}).state == "success"
    assert os_get(devstack, "/inc-full/_count")["count"] == 205

    removed = {f"fs-{i}" for i in range(30)}
    write_jsonl(source, [d for d in catalog if d["id"] not in removed])
    assert run(dag, day(10, 3), full).state == "success"
    rep = reports(devstack, "inc-full")[-1]
    t = rep["totals"]
    assert t["deleted"] == 30 and t["unchanged"] == 170 and rep["sagemaker_records"] == 0
    assert rep["balanced"]
    listed = set()
    s3 = devstack.s3.client()
    for uri in rep["extra"]["deleted_lists"]:
        key = uri.split("/", 3)[3]
        body = s3.get_object(Bucket=devstack.s3.bucket, Key=key)["Body"].read()
        listed |= {json.loads(line)["_id"] for line in body.splitlines()}
    assert listed == removed
    assert os_get(devstack, "/inc-full/_count")["count"] == 175  # the partner's 5 stay
    assert os_get(devstack, "/inc-full/_doc/other-3")["found"]

    # Removing 70 of the 175 (40%) is refused before anything is deleted.
    write_jsonl(source, [d for d in catalog if d["id"] not in removed][70:])
    dagrun = run(dag, day(10, 4), full)
    assert dagrun.state == "failed"
    stage = next(ti for ti in dagrun.get_task_instances() if ti.task_id == "stage")
    assert stage.state == "failed"
    assert os_get(devstack, "/inc-full/_count")["count"] == 175


def test_a_backfill_in_reverse_order_leaves_each_document_at_its_newest_day(dag, airflow_env,
                                                                          tmp_path):
    devstack = airflow_env

    def day_input(n: int):
        rows = [{"id": f"bf-{i}", "text": f"day {n}: the rover drove across Mars ({i})"}
                for i in range(40)]
        return write_jsonl(tmp_path / f"day{n}.jsonl", rows)

    for n in (3, 2, 1):  # newest first, as `airflow backfill create --run-backwards` does
        conf = {"input_uri": str(day_input(n)), "index_name": "inc-order", "shards": 2}
        assert run(dag, day(11, n), conf).state == "success"
    newest, middle, oldest = reports(devstack, "inc-order")
    assert newest["totals"]["created"] == 40
    for rep in (middle, oldest):
        assert rep["totals"]["superseded"] == 40 and rep["sagemaker_records"] == 0
        assert rep["balanced"] and rep["totals"]["failed_total"] == 0
    hits = os_get(devstack, "/inc-order/_search", {"size": 100, "_source": ["text"]})
    assert len(hits["hits"]["hits"]) == 40
    assert all(h["_source"]["text"].startswith("day 3:") for h in hits["hits"]["hits"])


def test_a_model_switch_builds_a_new_index_and_moves_the_alias_only_after_verification(
        dag, airflow_env, tmp_path):
    devstack = airflow_env
    hook = OpenSearchDomainHook()
    first = write_jsonl(tmp_path / "first.jsonl", docs("ms", 60))
    base = {"index_name": "inc-switch", "shards": 2}
    assert run(dag, day(5, 1), {**base, "input_uri": str(first)}).state == "success"
    (old,) = served(devstack, "inc-switch")

    model, endpoint = seed.ensure_hash_model(devstack.endpoints, "hash-embedder-256")
    second = write_jsonl(tmp_path / "second.jsonl", docs("ms-new", 20))
    samples: list[tuple[str, int]] = []
    stop = threading.Event()

    def sample_the_alias():  # what a query sees all through the build
        while not stop.is_set():
            # One search answers both: which index served it and how many documents it holds.
            found = os_get(devstack, "/inc-switch/_search",
                           {"size": 1, "track_total_hits": True, "_source": False})["hits"]
            now = found["hits"][0]["_index"]
            samples.append((now, found["total"]["value"]))
            if now == old and any(j["TransformJobStatus"] == "InProgress"
                                  for j in transform_jobs(devstack)):
                faults.unset(devstack.state_dir, "hold_job")  # sampled mid-build: go on

    faults.set_faults(devstack.state_dir, hold_job={"count": 1})
    watcher = threading.Thread(target=sample_the_alias, daemon=True)
    watcher.start()
    try:
        dagrun = run(dag, day(5, 2), {**base, "input_uri": str(second), "dimension": 256,
                                      "sagemaker_model_name": model,
                                      "sagemaker_endpoint_name": endpoint})
    finally:
        stop.set()
        watcher.join(timeout=30)
    assert dagrun.state == "success"
    rep = reports(devstack, "inc-switch")[-1]
    (new,) = served(devstack, "inc-switch")
    assert new != old and new == rep["physical_index"] and rep["alias_moved"]
    assert rep["extra"]["carried_over"] == 60 and rep["sagemaker_records"] == 80
    assert os_get(devstack, "/inc-switch/_count")["count"] == 80
    # Every sample saw the old index whole, or the new one whole: never a mix or a part.
    assert set(samples) <= {(old, 60), (new, 80)} and (old, 60) in samples, set(samples)
    doc = os_get(devstack, "/inc-switch/_doc/ms-7")["_source"]
    assert len(doc["embedding"]) == 256
    assert cosine(doc["embedding"], HashEmbedder(256).embed([doc["text"]])[0]) >= 0.9999
    assert [r["index"] for r in aliases.retired(hook, "inc-switch")] == [old]

    # A build that fails (its job does) leaves the alias where it was.
    model384, endpoint384 = seed.ensure_hash_model(devstack.endpoints, "hash-embedder-384")
    faults.set_faults(devstack.state_dir, fail_job={"count": 3, "reason": "ClientError: OOM"})
    # (dimension given again: dag.test() keeps the last run's conf in the DAG's params)
    failed = run(dag, day(5, 3), {**base, "input_uri": str(second), "dimension": 384,
                                  "sagemaker_model_name": model384,
                                  "sagemaker_endpoint_name": endpoint384})
    assert failed.state == "failed"
    assert served(devstack, "inc-switch") == [new]
    assert not reports(devstack, "inc-switch")[-1]["alias_moved"]

    # The same dimension, another model: a build of its own too, live once verified.
    faults.clear(devstack.state_dir)
    assert run(dag, day(5, 4), {**base, "input_uri": str(second), "dimension": 384,
                                "sagemaker_model_name": model384,
                                "sagemaker_endpoint_name": endpoint384}).state == "success"
    rep = reports(devstack, "inc-switch")[-1]
    (third,) = served(devstack, "inc-switch")
    assert third not in (old, new) and rep["alias_moved"] and rep["extra"]["carried_over"] == 80
    doc = os_get(devstack, "/inc-switch/_doc/ms-7")["_source"]
    assert cosine(doc["embedding"], HashEmbedder(384).embed([doc["text"]])[0]) >= 0.9999
    assert os_get(devstack, "/inc-switch/_count")["count"] == 80

    # The rollback is one call: the alias goes back to the index the switch replaced.
    aliases.rollback(hook, "inc-switch")
    assert served(devstack, "inc-switch") == [new]
    assert os_get(devstack, "/inc-switch/_count")["count"] == 80
    assert len(os_get(devstack, "/inc-switch/_doc/ms-7")["_source"]["embedding"]) == 256
