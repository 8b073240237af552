"""``ensure_model``: find or create the ML Commons remote model the run's jobs go through."""

from __future__ import annotations

import time

from batchvec.hooks.opensearch import OpenSearchDomainHook
from batchvec.model import connectors
from batchvec.settings import AWS_CONN_ID, OPENSEARCH_CONN_ID
from batchvec.tasks.context import plan_of


def ensure_model(plan_data: dict) -> dict:
    started = time.monotonic()
    spec = plan_of(plan_data).model_spec
    keys = connectors.aws_connection_keys(AWS_CONN_ID) if spec.credentials == "aws_keys" else None
    result = connectors.ensure_model(OpenSearchDomainHook(OPENSEARCH_CONN_ID), spec, keys)
    return {**result, "seconds": round(time.monotonic() - started, 2)}
