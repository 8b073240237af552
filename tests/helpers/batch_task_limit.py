"""ML Commons' real limit on live batch tasks, for tests: 429 "Exceeded maximum limit for
BATCH_PREDICTION tasks" once `plugins.ml_commons.max_batch_inference_tasks` tasks are live.

What 3.6 does (measured on the devstack node):
- it counts the tasks *stored* as CREATED or RUNNING, cluster-wide; a task's stored state
  changes only when something refreshes it (a GET of the task, or the job-scheduler poller
  once a minute), so a job that ended keeps its slot until then;
- the count is a search of default size 10: with 12 live tasks a limit of 11 still accepted
  a 13th, a limit of 10 refused it. A limit above 10 never refuses (the default is 100);
- the refusal comes when count >= limit (limit 1 and one live task: refused).
So tests refresh every live task first, then set the limit to what is live plus the slots
they want, and free a slot by ending a task *and* refreshing it.
"""

from __future__ import annotations

import time
import uuid
from contextlib import contextmanager

import requests

import batchvec.hooks.mlcommons
from devstack import faults

SETTING = "plugins.ml_commons.max_batch_inference_tasks"
SEARCH_CAP = 10  # the count's search size in 3.6: a limit above it never refuses
LIVE = ("CREATED", "RUNNING")


def _node(devstack, method: str, path: str, body: dict | None = None) -> dict:
    # The node itself (plain http on loopback, no auth): the admin side of the test.
    resp = requests.request(method, devstack.endpoints["opensearch_node"] + path, json=body,
                            timeout=60)
    resp.raise_for_status()
    return resp.json()


def task_state(devstack, task_id: str) -> str | None:
    """The task's state after a refresh (GET); None when ML Commons could not refresh it."""
    resp = requests.get(f"{devstack.endpoints['opensearch_node']}/_plugins/_ml/tasks/{task_id}",
                        timeout=60)
    return resp.json().get("state") if resp.ok else None


def live_tasks(devstack) -> list[str]:
    """Batch tasks still stored live once each has been refreshed."""
    body = {"query": {"bool": {"filter": [{"term": {"task_type": "BATCH_PREDICTION"}},
                                          {"terms": {"state": list(LIVE)}}]}},
            "size": 1000, "_source": False}
    try:
        hits = _node(devstack, "POST", "/_plugins/_ml/tasks/_search", body)["hits"]["hits"]
    except requests.HTTPError:  # no task index yet: nothing live
        return []
    return [h["_id"] for h in hits if task_state(devstack, h["_id"]) in LIVE]


@contextmanager
def limited_to(devstack, free_slots: int):
    """The limit set so that `free_slots` more tasks are accepted; restored after."""
    live = len(live_tasks(devstack))
    limit = live + free_slots
    assert limit <= SEARCH_CAP, f"{live} batch tasks live: a limit of {limit} cannot refuse"
    _node(devstack, "PUT", "/_cluster/settings", {"persistent": {SETTING: limit}})
    try:
        yield limit
    finally:
        _node(devstack, "PUT", "/_cluster/settings", {"persistent": {SETTING: None}})


def hold_a_slot(devstack, model_id: str) -> str:
    """Another run's batch task, its job held InProgress (hold_job) so it keeps its slot;
    `free_slot` lets it finish. Returns its ML Commons task id."""
    from batchvec.batch.operators import BatchPredictOperator
    from batchvec.hooks.opensearch import OpenSearchDomainHook

    key = f"blocker-{uuid.uuid4().hex[:8]}"
    bucket = devstack.s3.bucket
    devstack.s3.client().put_object(Bucket=bucket, Key=f"jobs/{key}/input/part-0.jsonl",
                                    Body=b'{"_id": "1", "text": "hold the slot"}\n')
    faults.set_faults(devstack.state_dir, hold_job={"count": 1})
    op = BatchPredictOperator(task_id="blocker", model_id=model_id, run_key=key,
                              input_s3_uri=f"s3://{bucket}/jobs/{key}/input/",
                              output_s3_uri=f"s3://{bucket}/jobs/{key}/output/")
    _name, task_id = op.submit_or_attach(OpenSearchDomainHook())
    return task_id


def free_slot(devstack, task_id: str, guard_s: float = 120) -> str:
    """Let the held job finish, and refresh its task until it is stored ended (which is what
    frees the slot). The guard only stops a hung test."""
    faults.unset(devstack.state_dir, "hold_job")
    deadline = time.monotonic() + guard_s
    while (state := task_state(devstack, task_id)) in (*LIVE, None):
        assert time.monotonic() < deadline, f"blocker task {task_id} still {state}"
        time.sleep(0.2)
    return state


def free_on_first_refusal(monkeypatch, devstack, task_id: str) -> list[str]:
    """When `_batch_predict` is first refused for the limit, free the blocker's slot before
    the refusal reaches the operator (so its next try finds a slot: no race). Returns the
    refusals seen."""
    from batchvec.hooks import mlcommons

    real, refusals = mlcommons.batch_predict, []

    def batch_predict(hook, model_id, parameters):
        try:
            return real(hook, model_id, parameters)
        except mlcommons.ThrottledError as exc:
            refusals.append(str(exc))
            if len(refusals) == 1 and "Exceeded maximum limit" in str(exc):
                free_slot(devstack, task_id)
            raise

    monkeypatch.setattr(batchvec.hooks.mlcommons, "batch_predict", batch_predict)
    return refusals
