"""Shared by tests/unit/test_security_inputs.py and tests/integration/test_security_inputs.py:
a model spec, the fields that reach ML Commons' templates, and an HTTPS connection."""

from __future__ import annotations

import json

from batchvec.model.connectors import ModelSpec

SPEC = ModelSpec(role_arn="arn:aws:iam::123456789012:role/ml-sagemaker", region="eu-west-1",
                 model_name="minilm-embedder", endpoint_name="minilm-rt",
                 sagemaker_api_url="http://127.0.0.1:18090",
                 sagemaker_runtime_url="https://runtime.sagemaker.eu-west-1.amazonaws.com")
FIELDS = {  # ModelSpec field -> the name the error must use, a legitimate value to append to
    "role_arn": ("connector_role_arn", "arn:aws:iam::123456789012:role/a"),
    "region": ("region", "us-east-1"),
    "model_name": ("sagemaker_model_name", "minilm"),
    "endpoint_name": ("sagemaker_endpoint_name", "minilm-rt"),
    "instance_type": ("instance_type", "ml.m5.xlarge"),
    "sagemaker_api_url": ("sagemaker_api_url", "https://api.sagemaker.us-east-1.amazonaws.com"),
    "sagemaker_runtime_url": ("sagemaker_runtime_url", "http://127.0.0.1:18090"),
}


def https_conn(monkeypatch, conn_id: str, port: int, **extra) -> None:
    """An OpenSearch connection to 127.0.0.1:port over HTTPS with basic auth."""
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps({
        "conn_type": "generic", "host": "127.0.0.1", "port": port, "schema": "https",
        "login": "admin", "password": "tls-test-password", "extra": {"auth": "basic", **extra}}))
