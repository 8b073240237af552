"""Contract tests for the OpenSearch stand-in's ML Commons APIs (reference:
shared/reference/ml-commons-batch.md): connectors, models, _predict, _batch_predict against a
fake SageMaker-style remote (stdlib HTTP, SigV4 checked), tasks, faults, neural search."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import pytest

from devstack import faults, sigv4
from tests.opensearch_helpers import AK, SK, caller, running_service

REGION = "us-east-1"


class FakeRemote:
    """CreateTransformJob / DescribeTransformJob / StopTransformJob / invocations."""

    def __init__(self):
        self.calls: list[tuple[str, dict]] = []
        self.status: dict[str, dict] = {}  # job name -> DescribeTransformJob extras
        self.bad_signatures = 0
        remote = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                split = urlsplit(self.path)
                try:
                    sigv4.verify(method="POST", raw_path=split.path, query=[],
                                 headers={k.lower(): v for k, v in self.headers.items()}, body=body,
                                 access_key=AK, secret_key=SK, service="sagemaker")
                except sigv4.SignatureError as err:
                    remote.bad_signatures += 1
                    return self._send(403, {"message": err.message})
                data = json.loads(body) if body else {}
                remote.calls.append((split.path, data))
                remote.handle(self, split.path, data)

            def _send(self, status, obj, headers=None):
                raw = b"" if obj is None else json.dumps(obj).encode()
                self.send_response(status)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Type", "application/x-amz-json-1.1")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def handle(self, h, path, data):
        if path.endswith("/invocations"):  # fixed vectors: [len(text), 1, 0, 0]
            return h._send(200, [[float(len(t)), 1.0, 0.0, 0.0] for t in data])
        name = data.get("TransformJobName", "")
        arn = f"arn:aws:sagemaker:{REGION}:123456789012:transform-job/{name}"
        if path.endswith("/CreateTransformJob"):
            if name == "remote-throttled":
                return h._send(400, {"__type": "ThrottlingException", "message": "Rate exceeded"},
                               {"x-amzn-ErrorType": "ThrottlingException:http://internal.amazon.com/"})
            if name == "duplicate":
                return h._send(400, {"__type": "ValidationException",
                                     "message": "Job name must be unique within an AWS account and region"})
            self.status[name] = {"TransformJobStatus": "InProgress"}
            return h._send(200, {"TransformJobArn": arn})
        if path.endswith("/DescribeTransformJob"):
            if name == "job-flaky":
                return h._send(500, {"message": "internal failure"})
            return h._send(200, {"TransformJobName": name, "TransformJobArn": arn, **self.status[name]})
        if path.endswith("/StopTransformJob"):
            self.status[name] = {"TransformJobStatus": "Stopping"}
            return h._send(200, None)
        return h._send(404, {"message": "unknown"})


@pytest.fixture(scope="module")
def remote():
    fake = FakeRemote()
    yield fake
    fake.server.shutdown()


@pytest.fixture(scope="module")
def os_url(tmp_path_factory):
    yield from running_service(tmp_path_factory, "os-ml")


@pytest.fixture(scope="module")
def http(os_url):
    return caller(os_url.url)


def connector_body(remote, **overrides):
    body = {
        "name": "sagemaker-batch", "version": "1", "protocol": "aws_sigv4",
        "credential": {"roleArn": "arn:aws:iam::123456789012:role/ml"},
        "parameters": {"region": REGION, "service_name": "sagemaker", "BatchStrategy": "MultiRecord",
                       "ModelName": "minilm", "DataProcessing": {"InputFilter": "$.text"},
                       "TransformOutput": {"S3OutputPath": "s3://b/default-out"},
                       "TransformResources": {"InstanceCount": 1, "InstanceType": "ml.m5.xlarge"}},
        "actions": [
            {"action_type": "predict", "method": "POST",
             "url": f"{remote.url}/endpoints/embed/invocations", "request_body": "${parameters.input}",
             "pre_process_function": "connector.pre_process.default.embedding",
             "post_process_function": "connector.post_process.default.embedding"},
            {"action_type": "batch_predict", "method": "POST", "url": f"{remote.url}/CreateTransformJob",
             "headers": {"content-type": "application/json"},
             "request_body": '{ "BatchStrategy": "${parameters.BatchStrategy}", "ModelName": '
                             '"${parameters.ModelName}", "DataProcessing" : ${parameters.DataProcessing}, '
                             '"TransformInput": ${parameters.TransformInput}, "TransformJobName" : '
                             '"${parameters.TransformJobName}", "TransformOutput" : '
                             '${parameters.TransformOutput}, "TransformResources" : '
                             '${parameters.TransformResources}}'},
        ],
    }
    body.update(overrides)
    return body


@pytest.fixture(scope="module")
def model_id(http, remote):
    connector_id = http("POST", "/_plugins/_ml/connectors/_create", connector_body(remote)).json()["connector_id"]
    resp = http("POST", "/_plugins/_ml/models/_register",
                {"name": "minilm-batch", "function_name": "remote", "connector_id": connector_id})
    assert resp.status_code == 200 and set(resp.json()) == {"task_id", "status", "model_id"}
    return resp.json()["model_id"]


def reason(resp) -> str:
    return resp.json()["error"]["reason"]


def submit(http, model_id, name, **params):
    body = {"parameters": {"TransformJobName": name,
                           "TransformInput": {"DataSource": {"S3DataSource": {"S3Uri": f"s3://b/{name}/in/"}},
                                              "SplitType": "Line"}, **params}}
    return http("POST", f"/_plugins/_ml/models/{model_id}/_batch_predict", body)


@pytest.mark.parametrize("change,message", [
    ({"name": None}, "Connector name is null"),
    ({"version": None}, "Connector version is null"),
    ({"protocol": None}, "Connector protocol is null"),
    ({"protocol": "grpc"}, "Unsupported connector protocol. Please use one of [aws_sigv4, http, mcp_sse, mcp_streamable_http]"),
    ({"credential": {}}, "Missing credential"),
    ({"parameters": {"region": REGION}}, "Missing service name"),
    ({"parameters": {"service_name": "sagemaker"}}, "Missing region"),
    ({"actions": [{"action_type": "train", "method": "POST", "url": "https://x"}]},
     "No enum constant org.opensearch.ml.common.connector.ConnectorAction.ActionType.TRAIN"),
    ({"actions": [{"action_type": "predict", "method": "POST", "url": "https://example.com/x"}]},
     "Connector URL is not matching the trusted connector endpoint regex"),
])
def test_connector_validation(http, remote, change, message):
    body = {k: v for k, v in {**connector_body(remote), **change}.items() if v is not None}
    resp = http("POST", "/_plugins/_ml/connectors/_create", body)
    assert resp.status_code == 400
    assert resp.json()["error"]["type"] == "illegal_argument_exception"
    assert reason(resp) == message


def test_connector_get_search_delete(http, remote):
    cid = http("POST", "/_plugins/_ml/connectors/_create", connector_body(remote, name="c2")).json()["connector_id"]
    got = http("GET", f"/_plugins/_ml/connectors/{cid}").json()
    assert got["name"] == "c2" and "credential" not in got and got["actions"][1]["action_type"] == "BATCH_PREDICT"
    assert got["parameters"]["DataProcessing"] == '{"InputFilter":"$.text"}'  # stored as compact JSON
    hits = http("POST", "/_plugins/_ml/connectors/_search", {"query": {"term": {"name.keyword": "c2"}}}).json()
    assert [h["_id"] for h in hits["hits"]["hits"]] == [cid]
    assert "credential" not in hits["hits"]["hits"][0]["_source"]
    mid = http("POST", "/_plugins/_ml/models/_register",
               {"name": "m2", "function_name": "remote", "connector_id": cid}).json()["model_id"]
    resp = http("DELETE", f"/_plugins/_ml/connectors/{cid}")
    assert resp.status_code == 409
    assert reason(resp) == f"1 models are still using this connector, please delete or update the models first: [{mid}]"
    assert http("DELETE", f"/_plugins/_ml/models/{mid}").json()["result"] == "deleted"
    assert http("DELETE", f"/_plugins/_ml/connectors/{cid}").status_code == 200
    missing = http("GET", f"/_plugins/_ml/connectors/{cid}")
    assert missing.status_code == 404 and missing.json()["error"]["type"] == "status_exception"


def test_model_lifecycle(http, remote):
    cid = http("POST", "/_plugins/_ml/connectors/_create", connector_body(remote)).json()["connector_id"]
    group = http("POST", "/_plugins/_ml/model_groups/_register", {"name": "grp", "description": "d"}).json()
    assert group["status"] == "CREATED"
    dup = http("POST", "/_plugins/_ml/model_groups/_register", {"name": "grp"})
    assert reason(dup) == f"The name you provided is already being used by a model group with ID: {group['model_group_id']}."
    reg = http("POST", "/_plugins/_ml/models/_register?deploy=true",
               {"name": "m3", "function_name": "remote", "connector_id": cid,
                "model_group_id": group["model_group_id"]}).json()
    model = http("GET", f"/_plugins/_ml/models/{reg['model_id']}").json()
    assert model["model_state"] == "DEPLOYED" and model["algorithm"] == "REMOTE" and model["model_version"] == "1"
    task = http("GET", f"/_plugins/_ml/tasks/{reg['task_id']}").json()
    assert task["task_type"] == "REGISTER_MODEL" and task["state"] == "COMPLETED" and "task_id" not in task
    refused = http("DELETE", f"/_plugins/_ml/models/{reg['model_id']}")
    assert refused.status_code == 400
    assert reason(refused) == "Model cannot be deleted in deploying or deployed state. Try undeploy model first then delete"
    undeployed = http("POST", f"/_plugins/_ml/models/{reg['model_id']}/_undeploy").json()
    assert list(undeployed.values())[0]["stats"] == {reg["model_id"]: "UNDEPLOYED"}
    deployed = http("POST", f"/_plugins/_ml/models/{reg['model_id']}/_deploy").json()
    assert deployed["task_type"] == "DEPLOY_MODEL" and deployed["status"] == "COMPLETED"
    found = http("POST", "/_plugins/_ml/models/_search", {"query": {"term": {"name": "m3"}}}).json()
    assert found["hits"]["total"]["value"] == 1


def test_predict_text_embedding(http, model_id):
    resp = http("POST", f"/_plugins/_ml/models/{model_id}/_predict", {"parameters": {"input": ["a", "bb"]}})
    assert resp.status_code == 200, resp.text
    out = resp.json()["inference_results"][0]
    assert out["status_code"] == 200
    assert out["output"][1] == {"name": "sentence_embedding", "data_type": "FLOAT32", "shape": [4],
                                "data": [2.0, 1.0, 0.0, 0.0]}
    docs = http("POST", f"/_plugins/_ml/models/{model_id}/_predict", {"text_docs": ["abc"]}).json()
    assert docs["inference_results"][0]["output"][0]["data"] == [3.0, 1.0, 0.0, 0.0]
    assert http("GET", f"/_plugins/_ml/models/{model_id}").json()["model_state"] == "DEPLOYED"  # auto-deployed


def test_batch_predict_and_task_refresh(http, remote, model_id):
    resp = submit(http, model_id, "job-1", TransformOutput={"S3OutputPath": "s3://b/job-1/out/"})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    arn = f"arn:aws:sagemaker:{REGION}:123456789012:transform-job/job-1"
    assert body["status"] == "CREATED" and body["remote_job"] == {"TransformJobArn": arn}
    assert set(body) == {"task_id", "status", "remote_job"}
    path, sent = remote.calls[-1]
    assert path == "/CreateTransformJob" and remote.bad_signatures == 0
    assert sent == {"BatchStrategy": "MultiRecord", "ModelName": "minilm",
                    "DataProcessing": {"InputFilter": "$.text"},
                    "TransformInput": {"DataSource": {"S3DataSource": {"S3Uri": "s3://b/job-1/in/"}},
                                       "SplitType": "Line"},
                    "TransformJobName": "job-1", "TransformOutput": {"S3OutputPath": "s3://b/job-1/out/"},
                    "TransformResources": {"InstanceCount": 1, "InstanceType": "ml.m5.xlarge"}}
    task_id = body["task_id"]
    task = http("GET", f"/_plugins/_ml/tasks/{task_id}").json()
    assert remote.calls[-1] == ("/DescribeTransformJob", {"TransformJobName": "job-1"})
    assert task["state"] == "RUNNING" and task["task_type"] == "BATCH_PREDICTION"
    assert task["function_name"] == "REMOTE" and task["remote_job"]["TransformJobStatus"] == "InProgress"
    assert task["remote_job"]["TransformJobArn"] == arn and "task_id" not in task
    refused = http("DELETE", f"/_plugins/_ml/tasks/{task_id}")
    assert refused.status_code == 400 and reason(refused) == "Task cannot be deleted in running state. Try after some time."
    remote.status["job-1"] = {"TransformJobStatus": "Completed"}
    done = http("GET", f"/_plugins/_ml/tasks/{task_id}").json()
    assert done["state"] == "COMPLETED" and done["last_update_time"] >= task["last_update_time"]
    assert http("DELETE", f"/_plugins/_ml/tasks/{task_id}").json()["result"] == "deleted"
    gone = http("GET", f"/_plugins/_ml/tasks/{task_id}")
    assert gone.status_code == 404 and gone.json()["error"]["type"] == "status_exception"
    assert reason(gone) == "Failed to find task"


def test_failed_and_cancelled_jobs(http, remote, model_id):
    failed = submit(http, model_id, "job-fail").json()["task_id"]
    remote.status["job-fail"] = {"TransformJobStatus": "Failed", "FailureReason": "ClientError: bad input"}
    task = http("GET", f"/_plugins/_ml/tasks/{failed}").json()
    assert task["state"] == "FAILED" and task["error"] == "ClientError: bad input"
    stopped = submit(http, model_id, "job-stop").json()["task_id"]
    assert http("POST", f"/_plugins/_ml/tasks/{stopped}/_cancel").json() == {"status": "OK"}
    assert remote.calls[-1] == ("/StopTransformJob", {"TransformJobName": "job-stop"})
    assert http("GET", f"/_plugins/_ml/tasks/{stopped}").json()["state"] == "CANCELLING"
    remote.status["job-stop"] = {"TransformJobStatus": "Stopped"}
    assert http("GET", f"/_plugins/_ml/tasks/{stopped}").json()["state"] == "CANCELLED"
    hits = http("POST", "/_plugins/_ml/tasks/_search",
                {"query": {"bool": {"filter": [{"term": {"task_type": "BATCH_PREDICTION"}},
                                               {"term": {"state": "FAILED"}}]}}}).json()
    assert [h["_id"] for h in hits["hits"]["hits"]] == [failed]
    assert hits["hits"]["hits"][0]["_index"] == ".plugins-ml-task"


def test_remote_errors_and_throttling(http, model_id, os_url):
    dup = submit(http, model_id, "duplicate")
    assert dup.status_code == 400 and reason(dup).startswith("Error from remote service: ")
    assert "must be unique" in reason(dup)
    throttled = submit(http, model_id, "remote-throttled")
    assert throttled.status_code == 400
    assert "The request was denied due to remote server throttling" in reason(throttled)
    faults.init(os_url.state_dir)  # faults' file path is process-global; point it at this service
    faults.set_faults(os_url.state_dir, batch_predict_throttle={"count": 1})
    fault = submit(http, model_id, "job-after-fault")
    assert fault.status_code == 429 and "denied due to remote server throttling" in reason(fault)
    assert submit(http, model_id, "job-after-fault").status_code == 200


def test_batch_task_limit(http, model_id):
    live = sum(1 for h in http("POST", "/_plugins/_ml/tasks/_search", {"size": 1000}).json()["hits"]["hits"]
               if h["_source"]["task_type"] == "BATCH_PREDICTION" and h["_source"]["state"] in ("CREATED", "RUNNING"))
    key = "plugins.ml_commons.max_batch_inference_tasks"
    http("PUT", "/_cluster/settings", {"persistent": {key: live}})
    try:
        resp = submit(http, model_id, "job-over-limit")
        assert resp.status_code == 429 and resp.json()["error"]["type"] == "status_exception"
        assert reason(resp) == ("Exceeded maximum limit for BATCH_PREDICTION tasks. To increase the limit, "
                                "update the plugins.ml_commons.max_batch_inference_tasks setting.")
    finally:
        http("PUT", "/_cluster/settings", {"persistent": {key: None}})


def test_status_actions_built_from_batch_url(http, remote):
    """A connector without batch_predict_status/cancel gets them built (2.18+)."""
    cid = http("POST", "/_plugins/_ml/connectors/_create", connector_body(remote)).json()["connector_id"]
    mid = http("POST", "/_plugins/_ml/models/_register",
               {"name": "built", "function_name": "remote", "connector_id": cid}).json()["model_id"]
    task_id = submit(http, mid, "job-built").json()["task_id"]
    remote.status["job-built"] = {"TransformJobStatus": "Completed"}
    assert http("GET", f"/_plugins/_ml/tasks/{task_id}").json()["state"] == "COMPLETED"


def test_private_ip_refused_when_disabled(http, model_id):
    key = "plugins.ml_commons.connector.private_ip_enabled"
    http("PUT", "/_cluster/settings", {"transient": {key: False}})
    try:
        resp = http("POST", f"/_plugins/_ml/models/{model_id}/_predict", {"parameters": {"input": ["a"]}})
        assert resp.status_code == 400
        assert reason(resp) == "Remote inference host name has private ip address: 127.0.0.1"
    finally:
        http("PUT", "/_cluster/settings", {"transient": {key: None}})


def test_neural_search(http, model_id):
    http("PUT", "/neural-idx", {"settings": {"index": {"knn": True}}, "mappings": {"properties": {
        "emb": {"type": "knn_vector", "dimension": 4, "method": {"name": "hnsw", "space_type": "l2", "engine": "faiss"}}}}})
    lines = []
    for doc_id, vec in (("short", [2.0, 1.0, 0.0, 0.0]), ("long", [9.0, 1.0, 0.0, 0.0])):
        lines += [json.dumps({"index": {"_id": doc_id}}), json.dumps({"emb": vec})]
    http("POST", "/neural-idx/_bulk?refresh=true", data=("\n".join(lines) + "\n").encode(),
         headers={"Content-Type": "application/x-ndjson"})
    resp = http("POST", "/neural-idx/_search", {"query": {"neural": {"emb": {
        "query_text": "hi", "model_id": model_id, "k": 2}}}, "_source": False})
    hits = resp.json()["hits"]["hits"]
    assert [h["_id"] for h in hits] == ["short", "long"] and hits[0]["_score"] == 1.0
    assert "_source" not in hits[0]


def test_background_poller(http, remote, model_id, os_url):
    polled = submit(http, model_id, "job-poll").json()["task_id"]
    flaky = submit(http, model_id, "job-flaky").json()["task_id"]
    remote.status["job-poll"] = {"TransformJobStatus": "Completed"}
    os_url.tasks.poll_once()
    states = {h["_id"]: h["_source"] for h in http("POST", "/_plugins/_ml/tasks/_search", {"size": 100}).json()["hits"]["hits"]}
    assert states[polled]["state"] == "COMPLETED"  # updated without a GET
    assert states[flaky]["state"] == "RUNNING" and states[flaky]["remote_job"]["num_of_retries"] == 1
    for _ in range(10):
        os_url.tasks.poll_once()
    task = http("GET", f"/_plugins/_ml/tasks/{flaky}").json()
    assert task["state"] == "UNREACHABLE"
    assert task["error"] == 'Error from remote service: {"message": "internal failure"}'
