"""ML Commons REST calls (models with their connectors, batch predict, tasks) over an OpenSearchDomainHook.

Thin functions so operators and triggers read as what they do; the response shapes are those
of ../shared/reference/ml-commons-batch.md (2.17+; 2.18 and 2.19 differences handled where
the client must read them).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

from batchvec.hooks.opensearch import OpenSearchDomainHook, OpenSearchError
from batchvec.util.redact import scrub

ML = "/_plugins/_ml"

# Task states (2.19+ mapping of the remote job status).
DONE_STATES = frozenset({"COMPLETED"})
FAILED_STATES = frozenset({"FAILED", "CANCELLED", "EXPIRED", "UNREACHABLE", "COMPLETED_WITH_ERROR"})
# SageMaker's own statuses, read directly because 2.18 never maps Failed and 2.17 maps little.
SAGEMAKER_TERMINAL = {"Completed": "COMPLETED", "Failed": "FAILED", "Stopped": "CANCELLED"}


_ID = re.compile(r"[A-Za-z0-9_-]{1,128}", re.ASCII)


def _id(value: str) -> str:
    """A server-assigned id about to go into a URL path (it arrives through XCom and a
    templated operator field): refuse anything that could change the path."""
    if not isinstance(value, str) or not _ID.fullmatch(value):
        raise ValueError(f"not an ML Commons id: {value!r} (pattern {_ID.pattern})")
    return value


class ThrottledError(Exception):
    """ML Commons or the remote service asked us to slow down (429 / remote throttling)."""


class JobNameTaken(Exception):
    """The remote refused the job name because a job of that name exists already: SageMaker's
    `ValidationException: Job name must be unique ... a job with this name already exists`."""


_NAME_TAKEN = re.compile(r"name already exists|must be unique|ResourceInUse", re.IGNORECASE)


def _search_by_name(hook: OpenSearchDomainHook, kind: str, name: str) -> list[dict]:
    body = {"query": {"term": {"name.keyword": name}}, "size": 100,
            "sort": [{"created_time": {"order": "asc", "unmapped_type": "long"}}]}
    try:
        resp = hook.request("POST", f"{ML}/{kind}/_search", body)[1]
    except OpenSearchError as err:
        if err.status == 404 or err.type == "index_not_found_exception":
            return []  # nothing was ever created: the system index does not exist yet
        raise
    return [dict(h["_source"], _id=h["_id"]) for h in resp["hits"]["hits"]
            if h["_source"].get("name") == name]


def find_model(hook: OpenSearchDomainHook, name: str) -> str | None:
    hits = [h for h in _search_by_name(hook, "models", name) if "chunk_number" not in h]
    return hits[0]["_id"] if hits else None


def find_or_create_model_group(hook: OpenSearchDomainHook, name: str, description: str) -> str:
    existing = _search_by_name(hook, "model_groups", name)
    if existing:
        return existing[0]["_id"]
    try:
        return hook.request("POST", f"{ML}/model_groups/_register",
                            {"name": name, "description": description})[1]["model_group_id"]
    except OpenSearchError as err:  # another run created it between our search and register
        if "already" in err.reason.lower():
            found = _search_by_name(hook, "model_groups", name)
            if found:
                return found[0]["_id"]
        raise


def register_model(hook: OpenSearchDomainHook, *, name: str, connector: dict, model_group_id: str,
                   description: str) -> str:
    """A remote model with its own (internal) connector: see batchvec.model.connectors for why."""
    body = {"name": name, "function_name": "remote", "model_group_id": model_group_id,
            "connector": connector, "description": description}
    return hook.request("POST", f"{ML}/models/_register", body)[1]["model_id"]


# ML Commons answers the update once each node has *received* the cache update, and then
# rebuilds the deployed model's connector in the background (UpdateModelCacheTransportAction
# starts an in-place update and returns): a request right after the PUT may still be signed
# with the old keys (measured on 3.6: up to ~0.2 s idle). Wait that out, with margin for load.
CREDENTIAL_SETTLE_S = 1.0
# 3.6 answers a deploy at once ("status": "COMPLETED") while the model is still DEPLOYING,
# and refuses a model update meanwhile (409 "Model is deploying. Please wait for the model to
# complete deployment."): a redeploy of a deployed model goes through DEPLOYING too.
DEPLOY_WAIT_S = 60.0


def _deploying(err: OpenSearchError) -> bool:
    return err.status == 409 and "is deploying" in err.reason


def update_model_credential(hook: OpenSearchDomainHook, model_id: str, credential: dict) -> None:
    """New keys on a model's internal connector; a deployed model signs with them once this
    returns (see CREDENTIAL_SETTLE_S). Waits out a deployment under way (ours, another
    run's, or the node's redeploy after a restart)."""
    deadline = time.monotonic() + DEPLOY_WAIT_S
    while True:
        try:
            hook.request("PUT", f"{ML}/models/{_id(model_id)}", {"connector": {"credential": credential}})
            break
        except OpenSearchError as err:
            if not _deploying(err) or time.monotonic() > deadline:
                raise
        time.sleep(0.2)
    time.sleep(CREDENTIAL_SETTLE_S)


def model_state(hook: OpenSearchDomainHook, model_id: str) -> str | None:
    return hook.request("GET", f"{ML}/models/{_id(model_id)}")[1].get("model_state")


def deploy_model(hook: OpenSearchDomainHook, model_id: str) -> None:
    """Deploy unless deployed, and wait until it is (see DEPLOY_WAIT_S)."""
    if model_state(hook, model_id) == "DEPLOYED":
        return
    hook.request("POST", f"{ML}/models/{_id(model_id)}/_deploy")
    deadline = time.monotonic() + DEPLOY_WAIT_S
    while (state := model_state(hook, model_id)) != "DEPLOYED":
        if state == "DEPLOY_FAILED" or time.monotonic() > deadline:
            raise OpenSearchError(409, "model_not_deployed", f"model {model_id} is {state} after "
                                  "_deploy", "POST", f"{ML}/models/{model_id}/_deploy")
        time.sleep(0.2)


def predict_embeddings(hook: OpenSearchDomainHook, model_id: str, texts: list[str]) -> list[list[float]]:
    """One vector per text, in order. ML Commons' default embedding post-processing puts
    all N tensors of one remote answer into one inference result, so every output counts."""
    resp = hook.request("POST", f"{ML}/models/{_id(model_id)}/_predict",
                        {"parameters": {"input": texts}})[1]
    return vectors_of_prediction(resp, len(texts))


def vectors_of_prediction(resp: dict, expected: int) -> list[list[float]]:
    vectors = [out["data"] for result in resp.get("inference_results", [])
               for out in result.get("output", [])]
    if len(vectors) != expected:
        raise ValueError(f"_predict answered {len(vectors)} vectors for {expected} texts")
    return vectors


def batch_predict(hook: OpenSearchDomainHook, model_id: str, parameters: dict) -> dict:
    """Start a batch job; returns the response (task_id, status, remote_job on 2.18+).

    Throttling (429, or the remote's throttling passed through) raises ThrottledError so the
    caller can back off within its retry window; nothing is retried here because a retried
    POST could start a second job. A job name already in use raises JobNameTaken.
    """
    try:
        return hook.request("POST", f"{ML}/models/{_id(model_id)}/_batch_predict",
                            {"parameters": parameters}, retries=0)[1]
    except OpenSearchError as err:
        if err.status == 429 or "throttl" in err.reason.lower():
            raise ThrottledError(err.reason) from None
        if _NAME_TAKEN.search(err.reason):
            raise JobNameTaken(err.reason) from None
        raise


def get_task(hook: OpenSearchDomainHook, task_id: str) -> dict:
    """GET refreshes the remote job status on the server (2.17+)."""
    return hook.request("GET", f"{ML}/tasks/{_id(task_id)}")[1]


def find_batch_task(hook: OpenSearchDomainHook, model_id: str, job_name: str) -> tuple[str, dict] | None:
    """The ML Commons task already tracking `job_name`, if an earlier try submitted it."""
    body = {"query": {"bool": {"filter": [{"term": {"task_type": "BATCH_PREDICTION"}},
                                          {"term": {"model_id": model_id}}]}},
            "size": 1000, "sort": [{"create_time": {"order": "desc"}}]}
    try:
        hits = hook.request("POST", f"{ML}/tasks/_search", body)[1]["hits"]["hits"]
    except OpenSearchError as err:
        if err.status == 404 or err.type == "index_not_found_exception":
            return None
        raise
    for hit in hits:
        remote = hit["_source"].get("remote_job") or {}
        arn = remote.get("TransformJobArn", "")
        if remote.get("TransformJobName") == job_name or arn.rsplit("/", 1)[-1] == job_name.lower():
            return hit["_id"], hit["_source"]
    return None


def cancel_task(hook: OpenSearchDomainHook, task_id: str) -> None:
    hook.request("POST", f"{ML}/tasks/{_id(task_id)}/_cancel")


@dataclass(frozen=True)
class JobStatus:
    """One observation of a batch job: ML Commons' task state and SageMaker's own status."""

    state: str  # ML Commons task state, or derived from SageMaker when no task exists
    remote_status: str | None
    failure_reason: str | None

    @property
    def done(self) -> bool:
        return self.state in DONE_STATES

    @property
    def failed(self) -> bool:
        return self.state in FAILED_STATES

    @property
    def terminal(self) -> bool:
        return self.done or self.failed


def status_from_task(task: dict) -> JobStatus:
    """Read a task, trusting SageMaker's status where the server's mapping lags (2.17/2.18)."""
    remote = task.get("remote_job") or {}
    remote_status = remote.get("TransformJobStatus") or remote.get("Status") or remote.get("status")
    state = task.get("state", "RUNNING")
    # The task's error can be a remote answer passed on (AWS echoes a refused signature's
    # canonical request, session token included); the reason ends up in trigger events,
    # stored unmasked in the metadata DB, and in messages.
    reason = remote.get("FailureReason") or task.get("error")
    reason = scrub(reason) if reason else reason
    mapped = SAGEMAKER_TERMINAL.get(remote_status or "")
    if mapped and state not in DONE_STATES | FAILED_STATES:
        state = mapped
    return JobStatus(state, remote_status, reason)


def status_from_sagemaker(describe: dict) -> JobStatus:
    remote_status = describe["TransformJobStatus"]
    state = SAGEMAKER_TERMINAL.get(remote_status) or (
        "CANCELLING" if remote_status == "Stopping" else "RUNNING")
    reason = describe.get("FailureReason")
    return JobStatus(state, remote_status, scrub(reason) if reason else reason)
