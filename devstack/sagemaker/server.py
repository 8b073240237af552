"""HTTP surface of the devstack SageMaker: the control plane in both forms clients use (the
boto3 JSON protocol, `POST /` + `X-Amz-Target: SageMaker.<Op>`, and the `POST /<Op>` URL form
ML Commons connectors post), runtime InvokeEndpoint (endpoints.py), SigV4 on everything but
`/ping`."""

from __future__ import annotations

import json
import logging
import uuid

from devstack import faults, model, sigv4
from devstack.httpbase import App, HttpError, Request, Response
from devstack.sagemaker.api import ApiError, ControlPlane
from devstack.sagemaker.endpoints import Endpoints
from devstack.sagemaker.store import Store
from devstack.sts import Sts, StsError, is_sts_request

log = logging.getLogger("devstack.sagemaker")

AMZ_JSON = "application/x-amz-json-1.1"
_OPEN_PATHS = ("/ping", "/_devstack/")  # health and the fault switches, for curl users


def _request_id() -> str:
    return str(uuid.uuid4())


def _aws_response(obj: dict, status: int = 200, content_type: str = AMZ_JSON,
                  headers: dict | None = None) -> Response:
    return Response(status, json.dumps(obj).encode(), content_type,
                    {"x-amzn-RequestId": _request_id(), **(headers or {})})


def error_response(err: ApiError, content_type: str = AMZ_JSON) -> Response:
    return _aws_response(err.body(), err.status, content_type, {"x-amzn-ErrorType": err.code})


def build_app(store: Store, control: ControlPlane, access_key: str, secret_key: str,
              endpoints: Endpoints) -> App:
    app = App("sagemaker")
    sts = Sts()

    def is_sts(req: Request) -> bool:
        return req.path == "/" and is_sts_request(req.headers.get("content-type", ""), req.body)

    def authenticate(req: Request) -> None:
        if req.path.startswith(_OPEN_PATHS):
            return
        try:
            key, secret = access_key, secret_key
            claimed = sigv4.credential_key(req.headers)
            if claimed and claimed != access_key:  # maybe temporary credentials from our STS
                temp = sts.secret_for(claimed, req.headers.get("x-amz-security-token"))
                key, secret = (claimed, temp) if temp is not None else (key, secret)
            sigv4.verify(method=req.method, raw_path=req.raw_path, query=list(req.query.items()),
                         headers=req.headers, body=req.body, access_key=key,
                         secret_key=secret, service="sts" if is_sts(req) else "sagemaker")
        except sigv4.SignatureError as exc:
            if is_sts(req):
                raise HttpError(exc.status, StsError(exc.status, exc.code, exc.message).xml()) from None
            code = {"MissingAuthenticationToken": "MissingAuthenticationTokenException"}.get(
                exc.code, exc.code)
            err = ApiError(code, exc.message, exc.status)
            raise HttpError(err.status, err.body(), {"x-amzn-ErrorType": code,
                                                     "x-amzn-RequestId": _request_id()}) from None

    app.authenticate = authenticate
    app.not_found = lambda req: error_response(
        ApiError("UnknownOperationException", f"No operation at {req.method} {req.path}", 404))

    @app.route("GET", "/ping")
    def ping(req: Request) -> Response:
        # Health for launchers and compose: up as soon as the port is. Models run in
        # containers started per job/endpoint; `?require=model` waits only for an in-process
        # preload (DEVSTACK_PRELOAD_INPROCESS) when one was asked for.
        state = "ready" if not model_preloading() or model.is_loaded(None) else "loading"
        status = 503 if req.query.get("require") == "model" and state != "ready" else 200
        return _aws_response({"status": "ok" if status == 200 else "loading", "model": state},
                             status, content_type="application/json")

    faults.add_admin_routes(app)

    def run_op(op: str, req: Request) -> Response:
        try:
            try:
                body = json.loads(req.body) if req.body.strip() else {}
            except ValueError:
                raise ApiError("SerializationException", "Request body is not valid JSON") from None
            result = control.call(op, body)
        except ApiError as err:
            if err.code not in ("ResourceNotFound",):
                log.info("%s -> %s: %s", op, err.code, err.message)
            return error_response(err)
        return _aws_response(result)

    @app.route("GET", "/_devstack/sts")
    def sts_stats(req: Request) -> Response:
        return _aws_response({"assume_role_calls": sts.assume_role_calls},
                             content_type="application/json")

    @app.route("POST", "/")
    def json_protocol(req: Request) -> Response:
        if is_sts(req):  # STS's Query protocol shares the root path
            try:
                return Response(200, sts.handle(req.body), "text/xml",
                                {"x-amzn-RequestId": _request_id()})
            except StsError as err:
                return Response(err.status, err.xml(), "text/xml", {"x-amzn-RequestId": _request_id()})
        target = req.headers.get("x-amz-target", "")
        prefix, _, op = target.partition(".")
        if prefix != "SageMaker" or not op:
            return error_response(ApiError("UnknownOperationException",
                                           f"Missing or unknown X-Amz-Target: {target!r}"))
        return run_op(op, req)

    @app.route("POST", "/(?P<op>[A-Z][A-Za-z]+)")
    def url_form(req: Request) -> Response:
        return run_op(req.params["op"], req)

    @app.route("POST", "/endpoints/(?P<endpoint>[^/]+)/invocations")
    def invoke_endpoint(req: Request) -> Response:
        try:
            return endpoints.invoke(req.params["endpoint"], req.body,
                                    req.headers.get("content-type", ""),
                                    req.headers.get("accept", ""))
        except ApiError as err:
            return error_response(err, "application/json")

    return app


def model_preloading() -> bool:
    import os

    return os.environ.get("DEVSTACK_PRELOAD_INPROCESS", "") not in ("", "0", "false")
