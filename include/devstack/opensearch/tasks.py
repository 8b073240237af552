"""`_batch_predict` and ML tasks: submit through the connector's batch_predict action, store a
BATCH_PREDICTION task, refresh it from batch_predict_status on GET (2.19+ state mapping),
cancel through cancel_batch_predict, search and delete."""

from __future__ import annotations

import json
import re
import threading

from devstack import faults
from devstack.opensearch import remote
from devstack.opensearch import settings as cs
from devstack.opensearch.common import fail, now_ms, parse_body, respond, status_error
from devstack.opensearch.mlcommons import TASK_INDEX, delete_response
from devstack.opensearch.search import search_objects
from devstack.opensearch.templating import call_parameters

LIVE = ("CREATED", "RUNNING")
REFRESHED = ("CREATED", "RUNNING", "CANCELLING")
STATUS_FIELDS = ("status", "Status", "TransformJobStatus")
# plugins.ml_commons.remote_job.status_*_regex defaults (2.19+), tried in this order.
STATE_RULES = [
    ("CANCELLING", re.compile(r"(stopping|cancelling)", re.I)),
    ("CANCELLED", re.compile(r"(stopped|cancelled)", re.I)),
    ("COMPLETED", re.compile(r"(complete|completed|partiallyCompleted)", re.I)),
    ("EXPIRED", re.compile(r"(expired|timeout)", re.I)),
    ("FAILED", re.compile(r"(failed)", re.I)),
]
MAX_TASKS_MSG = ("Exceeded maximum limit for BATCH_PREDICTION tasks. To increase the limit, update "
                 "the plugins.ml_commons.max_batch_inference_tasks setting.")


def map_state(remote_job: dict, state: str) -> str:
    for field in STATUS_FIELDS:
        if field in remote_job:
            value = str(remote_job[field])
            for new_state, pattern in STATE_RULES:
                if pattern.search(value):
                    state = new_state
                    break
    return state


def job_parameters(remote_job: dict) -> dict[str, str]:
    """The string values of remote_job, plus TransformJobName taken from the ARN."""
    params = {k: v for k, v in remote_job.items() if isinstance(v, str)}
    arn = params.get("TransformJobArn")
    if "TransformJobName" not in params and arn:
        params["TransformJobName"] = arn[arn.rfind("/") + 1 :]
    return params


def _remote_json(text: str):
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


class Tasks:
    def __init__(self, ml):
        self.ml = ml
        self.store = ml.store
        self.submit_lock = threading.Lock()  # limit check + create stay consistent
        self.stopping = threading.Event()

    # --- the 2.19+ background poller ----------------------------------------------------
    def start_poller(self, interval_s: float) -> None:
        """Refresh RUNNING/CANCELLING batch tasks every interval, as ML Commons' job does."""
        def loop():
            while not self.stopping.wait(interval_s):
                self.poll_once()

        if interval_s > 0:
            threading.Thread(target=loop, name="ml-task-poller", daemon=True).start()

    def poll_once(self) -> None:
        for task_id, task in self.store.kv_all("task"):
            if task.get("task_type") != "BATCH_PREDICTION" or task.get("state") not in ("RUNNING", "CANCELLING"):
                continue
            try:
                self.refresh(task_id, task)
            except Exception as exc:  # unreachable remote: give up after more than 10 tries
                job = task.setdefault("remote_job", {})
                job["num_of_retries"] = int(job.get("num_of_retries", 0)) + 1
                if job["num_of_retries"] > 10:
                    task["state"] = "UNREACHABLE"
                    body = getattr(exc, "body", None)
                    task["error"] = body["error"]["reason"] if isinstance(body, dict) else str(exc)
                self.store.kv_put("task", task_id, task)

    def live_batch_tasks(self) -> int:
        return sum(1 for _, t in self.store.kv_all("task")
                   if t.get("task_type") == "BATCH_PREDICTION" and t.get("state") in LIVE)

    def handle_batch_predict(self, req):
        body = parse_body(req, required=True)
        if not isinstance(body, dict):
            raise fail(400, "parse_exception", "request body must be an object")
        model_id = req.params["id"]
        model = self.ml.model(model_id)
        with self.submit_lock:
            if self.live_batch_tasks() >= int(self.ml.settings.get(cs.MAX_BATCH)):
                raise status_error(429, MAX_TASKS_MSG)
            self.ml.ensure_deployed(model_id, model)
            if faults.take("batch_predict_throttle"):
                raise fail(429, "remote_connector_throttling_exception", remote.THROTTLED)
            connector = self.ml.connector_for(model)
            params = call_parameters(connector.get("parameters"), body.get("parameters") or {})
            action = remote.resolve_action(connector, "batch_predict")
            _status, text = remote.execute(connector, "batch_predict", params, self.ml.settings,
                                           self.ml.aws_keys, action)
            remote_job = _remote_json(text)
            if remote_job is None:
                raise fail(404, "resource_not_found_exception", "Unable to create batch transform job")
            if action.get("post_process_function") == "connector.post_process.bedrock.batch_job_arn":
                arn = remote_job.get("jobArn", "")
                remote_job = {"job_arn": arn, "processedJobArn": arn.replace("/", "%2F")}
            if body.get("dlq") is not None:
                remote_job["dlq"] = body["dlq"]
            task_id = self.ml.new_task(model_id=model_id, task_type="BATCH_PREDICTION",
                                       state="RUNNING", input_type="REMOTE", remote_job=remote_job)
        return respond({"task_id": task_id, "status": "CREATED", "remote_job": remote_job})

    def refresh(self, task_id: str, task: dict) -> dict:
        """GET's remote refresh: batch_predict_status, merge, map the state, persist."""
        model = self.ml.model(task["model_id"])
        connector = self.ml.connector_for(model)
        remote_job = dict(task.get("remote_job") or {})
        params = call_parameters(connector.get("parameters"), job_parameters(remote_job))
        _status, text = remote.execute(connector, "batch_predict_status", params, self.ml.settings,
                                       self.ml.aws_keys)
        status = _remote_json(text)
        if status is None:
            raise fail(404, "resource_not_found_exception", "Couldn't fetch status of the transform job")
        remote_job.update(status)
        task["remote_job"] = remote_job
        task["state"] = map_state(remote_job, task["state"])
        if task["state"] == "FAILED":
            reason = (remote_job.get("FailureReason") or remote_job.get("failureReason")
                      or remote_job.get("message"))
            if reason:
                task["error"] = str(reason)
        task["last_update_time"] = now_ms()
        self.store.kv_put("task", task_id, task)
        return task

    def handle_get(self, req):
        task_id = req.params["id"]
        task = self.ml.task(task_id)
        if (task.get("task_type") == "BATCH_PREDICTION" and task.get("function_name") == "REMOTE"
                and task.get("state") in REFRESHED):
            task = self.refresh(task_id, task)
        return respond(task)

    def handle_search(self, req):
        return respond(search_objects(TASK_INDEX, self.store.kv_all("task"), req))

    def handle_cancel(self, req):
        task_id = req.params["id"]
        task = self.ml.task(task_id)
        if task.get("task_type") != "BATCH_PREDICTION" or not task.get("remote_job"):
            raise status_error(400, "The task ID you provided does not have any associated batch job")
        connector = self.ml.connector_for(self.ml.model(task["model_id"]))
        params = call_parameters(connector.get("parameters"), job_parameters(task["remote_job"]))
        status, _text = remote.execute(connector, "cancel_batch_predict", params, self.ml.settings,
                                       self.ml.aws_keys)
        if status != 200:
            raise status_error(status, "Unable to cancel the batch job")
        return respond({"status": "OK"})

    def handle_delete(self, req):
        task_id = req.params["id"]
        task = self.ml.task(task_id)
        if task.get("state") == "RUNNING":
            raise status_error(400, "Task cannot be deleted in running state. Try after some time.")
        self.store.kv_delete("task", task_id)
        return respond(delete_response(TASK_INDEX, task_id))
