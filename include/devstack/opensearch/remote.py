"""Executes a connector action over real HTTP, as ML Commons' remote connector executors do:
fill the action from call parameters, check the trusted-endpoint regex and private IPs, sign
with SigV4 (aws_sigv4), send, and turn remote failures into ML Commons' errors."""

from __future__ import annotations

import ipaddress
import logging
import os
import re
from urllib.parse import urlsplit

import requests

from devstack import sigv4
from devstack.opensearch import settings as cs
from devstack.opensearch.common import fail, illegal, status_error
from devstack.opensearch.templating import PREFIX, TemplateError, fill_payload, fill_url, substitute

log = logging.getLogger("devstack.opensearch.remote")

ACTION_TYPES = ("predict", "execute", "batch_predict", "batch_predict_status", "cancel_batch_predict")
REMOTE_ERROR = "Error from remote service: "
THROTTLED = (REMOTE_ERROR + "The request was denied due to remote server throttling. "
             "To change the retry policy and behavior, please update the connector client_config.")
UNTRUSTED = "Connector URL is not matching the trusted connector endpoint regex"


def find_action(connector: dict, action_type: str) -> dict | None:
    for action in connector.get("actions") or []:
        if str(action.get("action_type", "")).lower() == action_type:
            return action
    return None


def build_batch_action(connector: dict, action_type: str) -> dict:
    """ConnectorUtils.createConnectorAction (2.18+): status/cancel actions from batch_predict.
    SageMaker is recognised by its host or, for local stand-ins, the CreateTransformJob path."""
    batch = find_action(connector, "batch_predict")
    if batch is None:
        raise illegal(f"no {action_type} action found")
    url = fill_url(batch["url"], connector.get("parameters") or {})
    cancel = action_type == "cancel_batch_predict"
    method, body = "POST", None
    if "sagemaker" in url or url.rstrip("/").endswith("CreateTransformJob"):
        base = url.rstrip("/").rsplit("/", 1)[0]
        url = f"{base}/{'StopTransformJob' if cancel else 'DescribeTransformJob'}"
        body = '{ "TransformJobName" : "${parameters.TransformJobName}"}'
    elif "openai" in url or "cohere" in url:
        url = url + ("/${parameters.id}/cancel" if cancel else "/${parameters.id}")
        method = "POST" if cancel else "GET"
    elif "bedrock" in url:
        url = url + ("/${parameters.processedJobArn}/stop" if cancel else "/${parameters.processedJobArn}")
        method = "POST" if cancel else "GET"
    else:
        raise illegal("Please configure the action type to cancel the batch job in the connector"
                      if cancel else
                      "Please configure the action type to get the batch job details in the connector")
    return {"action_type": action_type.upper(), "method": method, "url": url,
            "headers": batch.get("headers"), "request_body": body}


def resolve_action(connector: dict, action_type: str) -> dict:
    action = find_action(connector, action_type)
    if action_type in ("batch_predict_status", "cancel_batch_predict") and (
            action is None or (action_type == "batch_predict_status" and not action.get("request_body"))):
        return build_batch_action(connector, action_type)
    if action is None:
        raise illegal(f"no {action_type} action found")
    return action


def is_trusted(url: str, patterns) -> bool:
    for pattern in patterns or []:
        try:
            if re.fullmatch(pattern, url):
                return True
        except re.error:
            continue
    return False


def is_private_host(host: str) -> bool:
    """Literal private/loopback addresses and localhost (no DNS lookups from the stand-in)."""
    host = (host or "").strip("[]").lower()
    if host in ("localhost", "localhost.localdomain"):
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    return ip.is_private or ip.is_loopback or ip.is_link_local or ip.is_unspecified


def _signing_keys(connector: dict, aws_keys: tuple[str, str]) -> tuple[str, str, str | None]:
    cred = connector.get("credential") or {}
    if cred.get("access_key") and cred.get("secret_key"):
        return cred["access_key"], cred["secret_key"], cred.get("session_token")
    # roleArn: the managed service assumes the role; the devstack signs with its own key.
    return aws_keys[0], aws_keys[1], None


def execute(connector: dict, action_type: str, params: dict[str, str], settings, aws_keys,
            action: dict | None = None) -> tuple[int, str]:
    """Run one action; returns (status, body text) on success, raises HttpError otherwise."""
    action = action or resolve_action(connector, action_type)
    try:
        payload = fill_payload(action["request_body"], params) if action.get("request_body") else None
        url = fill_url(action["url"], params)
    except TemplateError as exc:
        raise illegal(str(exc)) from None
    method = str(action.get("method", "POST")).upper()
    if method == "POST" and not payload and action_type != "cancel_batch_predict":
        raise illegal("Content length is 0. Aborting request to remote model")
    if not is_trusted(url, settings.get(cs.TRUSTED)):
        raise illegal(UNTRUSTED)
    host = urlsplit(url).hostname or ""
    if not host:
        raise illegal("Encountered error when trying to create uri from endpoint in ml connector. "
                      "Please update the endpoint in connection configuration: ")
    if is_private_host(host) and not settings.get(cs.PRIVATE_IP):
        raise illegal(f"Remote inference host name has private ip address: {host}")
    headers = _headers(connector, action, params)
    data = (payload or "").encode("utf-8")
    if str(connector.get("protocol", "")).lower() == "aws_sigv4":
        access, secret, token = _signing_keys(connector, aws_keys)
        merged = {**(connector.get("credential") or {}), **(connector.get("parameters") or {})}
        headers = sigv4.sign_headers(method=method, url=url, body=data, headers=headers,
                                     access_key=access, secret_key=secret,
                                     region=merged.get("region") or os.environ.get("DEVSTACK_REGION", "us-east-1"),
                                     service=merged.get("service_name", "sagemaker"),
                                     session_token=token)
    client = connector.get("client_config") or {}
    timeout = (float(client.get("connection_timeout", 30)), float(client.get("read_timeout", 30)))
    try:
        resp = requests.request(method, url, data=data if payload is not None else None,
                                headers=headers, timeout=timeout)
    except requests.RequestException as exc:
        raise status_error(500, f"Error communicating with remote model: {exc}") from None
    body = resp.text
    if resp.status_code < 200 or resp.status_code > 300:
        log.info("remote %s %s -> %s %s", method, url, resp.status_code, body[:500])
        if _throttled(resp):
            raise fail(resp.status_code, "remote_connector_throttling_exception", THROTTLED)
        if not body.strip():
            raise status_error(resp.status_code,
                               f"Remote service returned error status {resp.status_code} with empty body")
        raise status_error(resp.status_code, REMOTE_ERROR + body)
    if not body.strip() and action_type != "cancel_batch_predict":
        raise status_error(502, "Remote service returned empty response body")
    return resp.status_code, body


def _throttled(resp) -> bool:
    # ML Commons reads x-amzn-ErrorType; the JSON `__type` is accepted too for local stand-ins.
    if resp.headers.get("x-amzn-ErrorType", "").startswith("ThrottlingException"):
        return True
    try:
        return "ThrottlingException" in str(resp.json().get("__type", ""))
    except ValueError:
        return False
    except AttributeError:
        return False


def _headers(connector: dict, action: dict, params: dict[str, str]) -> dict[str, str]:
    cred = {k: str(v) for k, v in (connector.get("credential") or {}).items()}
    out = {}
    for key, value in (action.get("headers") or {}).items():
        value = str(value)
        for name, secret in cred.items():
            value = value.replace("${credential." + name + "}", secret)
        out[key] = substitute(value, params) if PREFIX in value else value
    if not any(k.lower() == "content-type" for k in out):
        out["Content-Type"] = "application/json"
    return out
