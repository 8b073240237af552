"""ML Commons: connectors, model groups, remote models (register/deploy/undeploy/get/search/
delete) and `_predict` for text embedding, with ML Commons' validation rules and messages."""

from __future__ import annotations

import json

from devstack.opensearch import remote
from devstack.opensearch import settings as cs
from devstack.opensearch.common import (
    fail,
    illegal,
    new_id,
    now_ms,
    parse_body,
    respond,
    status_error,
)
from devstack.opensearch.search import search_objects
from devstack.opensearch.templating import call_parameters, fill_url, parameter_map

PROTOCOLS = ["aws_sigv4", "http", "mcp_sse", "mcp_streamable_http"]
CONNECTOR_INDEX, MODEL_INDEX = ".plugins-ml-connector", ".plugins-ml-model"
GROUP_INDEX, TASK_INDEX = ".plugins-ml-model-group", ".plugins-ml-task"
_PRE = {  # built-in pre-process functions for text_docs input: docs -> request parameters
    "connector.pre_process.default.embedding": lambda docs: {"input": json.dumps(docs)},
    "connector.pre_process.openai.embedding": lambda docs: {"input": json.dumps(docs)},
    "connector.pre_process.cohere.embedding": lambda docs: {"texts": json.dumps(docs)},
    "connector.pre_process.bedrock.embedding": lambda docs: {"inputText": docs[0]},
}
_POST = {  # built-in post-process functions: response -> list of vectors
    "connector.post_process.default.embedding": lambda r: r,
    "connector.post_process.openai.embedding": lambda r: [d["embedding"] for d in r["data"]],
    "connector.post_process.cohere.embedding": lambda r: r["embeddings"],
    "connector.post_process.bedrock.embedding": lambda r: [r["embedding"]],
}


def delete_response(index: str, doc_id: str) -> dict:
    return {"_index": index, "_id": doc_id, "_version": 2, "result": "deleted", "forced_refresh": True,
            "_shards": {"total": 1, "successful": 1, "failed": 0}, "_seq_no": 1, "_primary_term": 1}


def public_connector(connector: dict) -> dict:
    return {k: v for k, v in connector.items() if k != "credential"}


def embedding_tensors(vectors) -> list[dict]:
    if vectors and all(isinstance(v, int | float) for v in vectors):
        vectors = [vectors]  # a single vector
    if not isinstance(vectors, list) or not all(isinstance(v, list) for v in vectors):
        raise illegal("Post process function input is not a List of List")
    return [{"name": "sentence_embedding", "data_type": "FLOAT32", "shape": [len(v)],
             "data": [float(x) for x in v]} for v in vectors]


def post_process(function: str | None, body: str) -> list[dict]:
    try:
        parsed = json.loads(body)
    except ValueError:
        parsed = None
    if function:
        if function not in _POST:
            raise illegal(f"The devstack runs only built-in post-process functions, not: {function[:80]}")
        try:
            return embedding_tensors(_POST[function](parsed))
        except (KeyError, TypeError, IndexError):
            raise status_error(500, "Fail to execute predict in aws connector") from None
    if isinstance(parsed, dict):
        return [{"name": "response", "dataAsMap": parsed}]
    return [{"name": "response", "dataAsMap": {"response": parsed if parsed is not None else body}}]


class MLCommons:
    def __init__(self, store, settings, aws_keys: tuple[str, str], node_id: str):
        self.store, self.settings, self.aws_keys, self.node_id = store, settings, aws_keys, node_id

    # --- lookups --------------------------------------------------------------------------
    def _get(self, ns: str, obj_id: str, what: str) -> dict:
        obj = self.store.kv_get(ns, obj_id)
        if obj is None:
            raise status_error(404, f"Failed to find {what}")
        return obj

    def model(self, model_id: str) -> dict:
        return self._get("model", model_id, "model")

    def connector_for(self, model: dict) -> dict:
        if model.get("connector"):
            return model["connector"]
        return self._get("connector", model.get("connector_id", ""), "connector")

    def task(self, task_id: str, ns: str = "task") -> dict:
        return self._get(ns, task_id, "task")

    def new_task(self, **fields) -> str:
        now = now_ms()
        task = {"function_name": "REMOTE", "worker_node": [self.node_id], "create_time": now,
                "last_update_time": now, "is_async": False, **fields}
        task_id = new_id()
        self.store.kv_put("task", task_id, task)
        return task_id

    # --- connectors -----------------------------------------------------------------------
    def validate_connector(self, body) -> dict:
        if not isinstance(body, dict):
            raise illegal("wrong connector")
        for field in ("name", "version", "protocol"):
            if body.get(field) is None:
                raise illegal(f"Connector {field} is null")
        protocol = str(body["protocol"])
        if protocol not in PROTOCOLS:
            raise illegal(f"Unsupported connector protocol. Please use one of [{', '.join(PROTOCOLS)}]")
        params = parameter_map(body.get("parameters"))
        cred = {k: str(v) for k, v in (body.get("credential") or {}).items()}
        actions = [self._action(a) for a in body.get("actions") or []]
        if protocol == "aws_sigv4":
            if not cred.get("roleArn") and not (cred.get("access_key") and cred.get("secret_key")):
                raise illegal("Missing credential")
            if "service_name" not in cred and "service_name" not in params:
                raise illegal("Missing service name")
            if "region" not in cred and "region" not in params:
                raise illegal("Missing region")
        if not actions:
            raise illegal("No actions configured for this connector")
        for action in actions:
            if not remote.is_trusted(fill_url(action["url"], params), self.settings.get(cs.TRUSTED)):
                raise illegal(remote.UNTRUSTED)
        now = now_ms()
        connector = {"name": str(body["name"]), "version": str(body["version"]), "protocol": protocol,
                     "parameters": params, "credential": cred, "actions": actions,
                     "created_time": now, "last_updated_time": now}
        if body.get("description") is not None:
            connector["description"] = str(body["description"])
        for key in ("client_config", "backend_roles", "access"):
            if body.get(key) is not None:
                connector[key] = body[key]
        return connector

    @staticmethod
    def _action(raw) -> dict:
        if not isinstance(raw, dict):
            raise illegal("action must be an object")
        kind = raw.get("action_type")
        if kind is None:
            raise illegal("action type can't be null")
        if str(kind).lower() not in remote.ACTION_TYPES:
            raise illegal(f"No enum constant org.opensearch.ml.common.connector.ConnectorAction."
                          f"ActionType.{str(kind).upper()}")
        for field in ("url", "method"):
            if raw.get(field) is None:
                raise illegal(f"{field} can't be null")
        action = {"action_type": str(kind).upper(), "method": str(raw["method"]), "url": str(raw["url"])}
        if raw.get("headers") is not None:
            action["headers"] = {k: str(v) for k, v in raw["headers"].items()}
        for field in ("request_body", "pre_process_function", "post_process_function", "name"):
            if raw.get(field) is not None:
                action[field] = str(raw[field])
        return action

    def handle_connector_create(self, req):
        connector = self.validate_connector(parse_body(req, required=True))
        connector_id = new_id()
        self.store.kv_put("connector", connector_id, connector)
        return respond({"connector_id": connector_id})

    def handle_connector_get(self, req):
        return respond(public_connector(self._get("connector", req.params["id"], "connector")))

    def handle_connector_search(self, req):
        objs = self.store.kv_all("connector")
        return respond(search_objects(CONNECTOR_INDEX, objs, req, hide=("credential",)))

    def handle_connector_delete(self, req):
        connector_id = req.params["id"]
        self._get("connector", connector_id, "connector")
        users = [mid for mid, m in self.store.kv_all("model") if m.get("connector_id") == connector_id]
        if users:
            raise status_error(409, f"{len(users)} models are still using this connector, please "
                                    f"delete or update the models first: [{', '.join(users)}]")
        self.store.kv_delete("connector", connector_id)
        return respond(delete_response(CONNECTOR_INDEX, connector_id))

    # --- model groups ---------------------------------------------------------------------
    def create_group(self, name: str, description: str | None = None) -> str:
        for gid, group in self.store.kv_all("model_group"):
            if group.get("name") == name:
                raise illegal(f"The name you provided is already being used by a model group with ID: {gid}.")
        now = now_ms()
        group_id = new_id()
        group = {"name": name, "latest_version": 0, "access": "public", "created_time": now,
                 "last_updated_time": now}
        if description is not None:
            group["description"] = description
        self.store.kv_put("model_group", group_id, group)
        return group_id

    def handle_group_register(self, req):
        body = parse_body(req, required=True) or {}
        if not body.get("name"):
            raise illegal("model group name is required")
        return respond({"model_group_id": self.create_group(str(body["name"]), body.get("description")),
                        "status": "CREATED"})

    def handle_group_get(self, req):
        return respond(self._get("model_group", req.params["id"], "model group"))

    def handle_group_search(self, req):
        return respond(search_objects(GROUP_INDEX, self.store.kv_all("model_group"), req))

    def handle_group_delete(self, req):
        group_id = req.params["id"]
        self._get("model_group", group_id, "model group")
        if any(m.get("model_group_id") == group_id for _, m in self.store.kv_all("model")):
            raise status_error(409, "Cannot delete the model group when it has associated model versions")
        self.store.kv_delete("model_group", group_id)
        return respond(delete_response(GROUP_INDEX, group_id))

    # --- models ---------------------------------------------------------------------------
    def handle_model_register(self, req):
        body = parse_body(req, required=True) or {}
        if not body.get("name"):
            raise illegal("model name is null")
        if str(body.get("function_name", "")).lower() != "remote":
            raise illegal("The devstack registers remote models only (function_name: remote)")
        connector_id, inline = body.get("connector_id"), body.get("connector")
        if connector_id:
            self._get("connector", connector_id, "connector")
        elif inline:
            inline = self.validate_connector(inline)
        else:
            raise illegal("Remote model must have connector or connector_id")
        group_id = body.get("model_group_id") or self.create_group(str(body["name"]))
        group = self._get("model_group", group_id, "model group")
        group["latest_version"] = int(group.get("latest_version", 0)) + 1
        group["last_updated_time"] = now_ms()
        self.store.kv_put("model_group", group_id, group)
        now = now_ms()
        model = {"name": str(body["name"]), "model_group_id": group_id, "algorithm": "REMOTE",
                 "model_version": str(group["latest_version"]), "model_state": "REGISTERED",
                 "created_time": now, "last_updated_time": now, "last_registered_time": now,
                 "is_hidden": False, "auto_redeploy_retry_times": 0}
        if connector_id:
            model["connector_id"] = connector_id
        else:
            model["connector"] = inline
        for key in ("description", "model_config", "deploy_setting", "interface", "is_enabled"):
            if body.get(key) is not None:
                model[key] = body[key]
        model_id = new_id()
        self.store.kv_put("model", model_id, model)
        task_id = self.new_task(model_id=model_id, task_type="REGISTER_MODEL", state="COMPLETED")
        if req.query.get("deploy") == "true":
            self.deploy(model_id)
        return respond({"task_id": task_id, "status": "CREATED", "model_id": model_id})

    def deploy(self, model_id: str) -> str:
        model = self.model(model_id)
        now = now_ms()
        model.update(model_state="DEPLOYED", last_deployed_time=now, last_updated_time=now,
                     planning_worker_node_count=1, current_worker_node_count=1,
                     planning_worker_nodes=[self.node_id], deploy_to_all_nodes=True)
        self.store.kv_put("model", model_id, model)
        return self.new_task(model_id=model_id, task_type="DEPLOY_MODEL", state="COMPLETED")

    def ensure_deployed(self, model_id: str, model: dict) -> None:
        """Remote models auto-deploy on first use unless the setting or model says otherwise."""
        if model.get("model_state") == "DEPLOYED":
            return
        per_model = (model.get("deploy_setting") or {}).get("is_auto_deploy_enabled", True)
        if self.settings.get(cs.AUTO_DEPLOY) and per_model is not False:
            self.deploy(model_id)
            return
        raise illegal(f"Model not ready yet. Please run this first: POST /_plugins/_ml/models/{model_id}/_deploy")

    def handle_model_deploy(self, req):
        task_id = self.deploy(req.params["id"])
        return respond({"task_id": task_id, "task_type": "DEPLOY_MODEL", "status": "COMPLETED"})

    def handle_model_undeploy(self, req):
        model_id = req.params["id"]
        model = self.model(model_id)
        if model.get("model_state") not in ("DEPLOYED", "PARTIALLY_DEPLOYED", "DEPLOYING"):
            return respond({})
        model.update(model_state="UNDEPLOYED", current_worker_node_count=0,
                     planning_worker_node_count=0, planning_worker_nodes=[], last_updated_time=now_ms())
        self.store.kv_put("model", model_id, model)
        return respond({self.node_id: {"stats": {model_id: "UNDEPLOYED"}}})

    def handle_model_get(self, req):
        model = self.model(req.params["id"])
        if model.get("connector"):
            model["connector"] = public_connector(model["connector"])
        return respond(model)

    def handle_model_search(self, req):
        objs = [(mid, m) for mid, m in self.store.kv_all("model") if not m.get("is_hidden")]
        return respond(search_objects(MODEL_INDEX, objs, req))

    def handle_model_delete(self, req):
        model_id = req.params["id"]
        model = self.model(model_id)
        if model.get("model_state") in ("DEPLOYED", "DEPLOYING", "PARTIALLY_DEPLOYED"):
            raise status_error(400, "Model cannot be deleted in deploying or deployed state. Try undeploy "
                                    "model first then delete")
        self.store.kv_delete("model", model_id)
        return respond(delete_response(MODEL_INDEX, model_id))

    # --- _predict -------------------------------------------------------------------------
    def predict(self, model_id: str, body: dict) -> dict:
        model = self.model(model_id)
        self.ensure_deployed(model_id, model)
        connector = self.connector_for(model)
        action = remote.find_action(connector, "predict")
        if action is None:
            raise illegal("no predict action found")
        pre = action.get("pre_process_function")
        if body.get("text_docs") is not None:
            docs = [str(d) for d in body["text_docs"]]
            function = pre or "connector.pre_process.default.embedding"
            if function not in _PRE:
                raise illegal(f"The devstack runs only built-in pre-process functions, not: {function[:80]}")
            request_params = {**(body.get("parameters") or {}), **_PRE[function](docs)}
        elif isinstance(body.get("parameters"), dict):
            request_params = body["parameters"]
        else:
            raise illegal("Wrong input data: expected parameters or text_docs")
        params = call_parameters(connector.get("parameters"), request_params)
        status, text = remote.execute(connector, "predict", params, self.settings, self.aws_keys, action)
        tensors = post_process(action.get("post_process_function"), text)
        return {"inference_results": [{"output": tensors, "status_code": status}]}

    def handle_predict(self, req):
        body = parse_body(req, required=True)
        if not isinstance(body, dict):
            raise fail(400, "parse_exception", "request body must be an object")
        return respond(self.predict(req.params["id"], body))

    def embed(self, model_id: str, text: str) -> list[float]:
        """For `neural` queries: one text through the model's predict action."""
        result = self.predict(model_id, {"text_docs": [text]})
        output = result["inference_results"][0]["output"]
        if not output or "data" not in output[0]:
            raise illegal(f"model [{model_id}] did not return an embedding")
        return output[0]["data"]
