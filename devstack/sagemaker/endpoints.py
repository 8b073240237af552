"""Real-time endpoints: Create/Describe/DeleteEndpointConfig, Create/Describe/Update/
DeleteEndpoint, and runtime InvokeEndpoint, each endpoint served by a model container
(its first variant's model) or, for a model without ModelDataUrl, the in-process embedder.

CreateEndpoint returns at once with `Creating`; the container starts in the background and
the endpoint turns `InService` (or `Failed` with the container's log in FailureReason). An
endpoint holds its container for as long as it exists; after a service restart the first
InvokeEndpoint starts it again.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import uuid

import requests

from devstack import model
from devstack.httpbase import Response
from devstack.sagemaker import dataprocessing as dp
from devstack.sagemaker.api import ACCOUNT, MODEL_NAME_RE, ApiError, _Checks, container_of
from devstack.sagemaker.containers import Pool
from devstack.sagemaker.store import Store

log = logging.getLogger("devstack.sagemaker.endpoints")

MAX_INVOKE_BYTES = 6 << 20  # InvokeEndpoint's payload limit: 6 MiB
INVOKE_TIMEOUT_S = 60


def _rid() -> dict:
    return {"x-amzn-RequestId": str(uuid.uuid4())}


def _not_found(message: str) -> ApiError:
    return ApiError("ValidationException", message)


class Endpoints:
    def __init__(self, store: Store, region: str, pool: Pool):
        self.store, self.region, self.pool = store, region, pool
        self._lock = threading.Lock()
        self._held: dict[str, tuple[contextlib.ExitStack, object]] = {}  # name -> (lease, container)
        self.ops = {
            "CreateEndpointConfig": self.create_config, "DescribeEndpointConfig": self.describe_config,
            "DeleteEndpointConfig": self.delete_config, "CreateEndpoint": self.create,
            "DescribeEndpoint": self.describe, "UpdateEndpoint": self.update,
            "DeleteEndpoint": self.delete,
        }

    def arn(self, kind: str, name: str) -> str:
        return f"arn:aws:sagemaker:{self.region}:{ACCOUNT}:{kind}/{name.lower()}"

    @staticmethod
    def _name(body: dict, field: str, path: str) -> str:
        c = _Checks()
        c.field(path, body.get(field), required=True, max_len=63, pattern=MODEL_NAME_RE)
        c.raise_if_any()
        return body[field]

    # endpoint configs -----------------------------------------------------------------------
    def create_config(self, body: dict) -> dict:
        name = self._name(body, "EndpointConfigName", "endpointConfigName")
        variants = body.get("ProductionVariants")
        if not isinstance(variants, list) or not variants:
            raise ApiError("ValidationException", "1 validation error detected: Value null at "
                           "'productionVariants' failed to satisfy constraint: Member must not be null")
        for v in variants:
            model_name = v.get("ModelName") if isinstance(v, dict) else None
            if not model_name or self.store.model(model_name) is None:
                raise ApiError("ValidationException",
                               f'Could not find model "{self.arn("model", str(model_name))}".')
        arn = self.arn("endpoint-config", name)
        if not self.store.add_endpoint_config(name, arn, body):
            raise ApiError("ValidationException", "Cannot create already existing endpoint "
                           f'configuration "{arn}".')
        return {"EndpointConfigArn": arn}

    def _config(self, name: str) -> dict:
        row = self.store.endpoint_config(name)
        if row is None:
            raise _not_found(f'Could not find endpoint configuration "{self.arn("endpoint-config", name)}".')
        return row

    def describe_config(self, body: dict) -> dict:
        row = self._config(self._name(body, "EndpointConfigName", "endpointConfigName"))
        return {**row["request"], "EndpointConfigArn": row["arn"], "CreationTime": row["creation_time"]}

    def delete_config(self, body: dict) -> dict:
        self.store.delete_endpoint_config(self._config(
            self._name(body, "EndpointConfigName", "endpointConfigName"))["name"])
        return {}

    # endpoints --------------------------------------------------------------------------------
    def create(self, body: dict) -> dict:
        name = self._name(body, "EndpointName", "endpointName")
        config = self._config(self._name(body, "EndpointConfigName", "endpointConfigName"))
        arn = self.arn("endpoint", name)
        if not self.store.add_endpoint(name, arn, config["name"]):
            raise ApiError("ValidationException", f'Cannot create already existing endpoint "{arn}".')
        threading.Thread(target=self._activate, args=(name,), daemon=True).start()
        return {"EndpointArn": arn}

    def update(self, body: dict) -> dict:
        name = self._name(body, "EndpointName", "endpointName")
        config = self._config(self._name(body, "EndpointConfigName", "endpointConfigName"))
        if self.store.endpoint(name) is None:
            raise _not_found(f'Could not find endpoint "{self.arn("endpoint", name)}".')
        self.store.set_endpoint(name, "Updating", config=config["name"])
        threading.Thread(target=self._activate, args=(name,), daemon=True).start()
        return {"EndpointArn": self.arn("endpoint", name)}

    def _endpoint(self, body: dict) -> dict:
        name = self._name(body, "EndpointName", "endpointName")
        row = self.store.endpoint(name)
        if row is None:
            raise _not_found(f'Could not find endpoint "{self.arn("endpoint", name)}".')
        return row

    def describe(self, body: dict) -> dict:
        row = self._endpoint(body)
        out = {"EndpointName": row["name"], "EndpointArn": row["arn"],
               "EndpointConfigName": row["config"], "EndpointStatus": row["status"],
               "CreationTime": row["creation_time"], "LastModifiedTime": row["last_modified"]}
        if row["failure_reason"]:
            out["FailureReason"] = row["failure_reason"]
        return out

    def delete(self, body: dict) -> dict:
        row = self._endpoint(body)
        self._release(row["name"])
        self.store.delete_endpoint(row["name"])
        return {}

    def _container_def(self, endpoint: dict) -> dict | None:
        config = self.store.endpoint_config(endpoint["config"])
        variant = ((config or {}).get("request", {}).get("ProductionVariants") or [{}])[0]
        row = self.store.model(variant.get("ModelName", ""))
        if row is None:
            raise ApiError("ValidationError", f"Model {variant.get('ModelName')} of endpoint "
                           f"{endpoint['name']} no longer exists.")
        return container_of(row["request"])

    def _activate(self, name: str):
        """Start (or restart) the endpoint's container; returns it (None: in-process model)."""
        with self._lock:
            self._release(name)
            endpoint = self.store.endpoint(name)
            if endpoint is None:
                return None
            try:
                container_def = self._container_def(endpoint) or {}
                container = None
                if container_def.get("ModelDataUrl"):
                    stack = contextlib.ExitStack()
                    container = stack.enter_context(self.pool.lease(container_def))
                    self._held[name] = (stack, container)
            except Exception as exc:  # noqa: BLE001 (the reason is the endpoint's state)
                log.warning("endpoint %s failed: %s", name, exc)
                self.store.set_endpoint(name, "Failed", failure_reason=str(exc)[:1024])
                return None
            self.store.set_endpoint(name, "InService")
            log.info("endpoint %s InService", name)
            return container

    def _release(self, name: str) -> None:
        held = self._held.pop(name, None)
        if held is not None:
            held[0].close()

    def shutdown(self) -> None:
        for name in list(self._held):
            self._release(name)

    # runtime ------------------------------------------------------------------------------
    def invoke(self, name: str, body: bytes, content_type: str, accept: str) -> Response:
        endpoint = self.store.endpoint(name)
        if endpoint is None or endpoint["status"] not in ("InService", "Updating"):
            raise ApiError("ValidationError", f"Endpoint {name} of account {ACCOUNT} not found.")
        if len(body) > MAX_INVOKE_BYTES:
            raise ApiError("ValidationError", f"Request payload of {len(body)} bytes exceeds the "
                           f"{MAX_INVOKE_BYTES} bytes limit.")
        container_def = self._container_def(endpoint) or {}
        if not container_def.get("ModelDataUrl"):
            return _in_process(name, container_def, body, content_type)
        held = self._held.get(name)
        container = held[1] if held and held[1].alive() else self._activate(name)
        if container is None:
            raise ApiError("ValidationError", f"Endpoint {name} failed: "
                           f"{(self.store.endpoint(name) or {}).get('failure_reason')}")
        try:
            status, data, ctype = container.invoke(body, content_type, accept, INVOKE_TIMEOUT_S)
        except requests.Timeout:
            raise ApiError("ModelError", "Model server did not respond within "
                           f"{INVOKE_TIMEOUT_S} seconds", 424) from None
        except requests.ConnectionError as exc:
            raise ApiError("ModelError", f"Unable to get response from the model: {exc}", 424) from None
        if status != 200:
            return model_error(name, status, data.decode("utf-8", "replace"))
        return Response(200, data, ctype or "application/json",
                        {"x-Amzn-Invoked-Production-Variant": "AllTraffic", **_rid()})


def _in_process(name: str, container_def: dict, body: bytes, content_type: str) -> Response:
    try:
        if content_type.startswith("text/plain"):
            texts = [body.decode("utf-8", "replace")]
        else:
            texts = dp.texts_of(dp.loads(body))
    except dp.FilterError as exc:
        original = json.dumps({"code": 400, "type": "InternalServerException", "message": str(exc)})
        return model_error(name, 400, original)
    vectors = model.get_embedder(container_def).embed(texts)
    return Response(200, dp.dumps(vectors), "application/json",
                    {"x-Amzn-Invoked-Production-Variant": "AllTraffic", **_rid()})


def model_error(endpoint: str, status: int, original: str) -> Response:
    """What InvokeEndpoint answers when the container refuses or fails (HTTP 424)."""
    kind = "client" if status < 500 else "server"
    body = {
        "ErrorCode": f"{kind.upper()}_ERROR_FROM_MODEL", "OriginalStatusCode": status,
        "OriginalMessage": original,
        "message": f"Received {kind} error ({status}) from primary with message \"{original}\". "
                   f"See the logs of /aws/sagemaker/Endpoints/{endpoint} in account {ACCOUNT} "
                   "for more information.",
    }
    return Response(424, json.dumps(body).encode(), "application/json",
                    {"x-amzn-ErrorType": "ModelError", **_rid()})
