"""Credentials the SigV4 signer fetches itself are masked, without a node (the leak checks on
real runs are in tests/integration/test_security.py)."""

from __future__ import annotations

import secrets


def test_credentials_the_sigv4_signer_fetches_itself_are_masked_in_task_logs():
    """An assumed role or instance profile hands botocore a secret and token Airflow never
    saw in a connection; the signer registers them with the masker as it picks them up."""
    import threading

    import botocore.session
    import requests
    from airflow.sdk._shared.secrets_masker import redact

    from batchvec.hooks.opensearch_auth import SigV4Auth

    secret, token = "fetched-secret-" + secrets.token_hex(8), "FetchedToken" + secrets.token_hex(8)
    session = botocore.session.Session()
    session.set_credentials("AKIDFETCHED", secret, token)
    auth = SigV4Auth.__new__(SigV4Auth)  # as __init__ leaves it, minus the Airflow connection
    auth._session, auth._region, auth._service = session, "us-east-1", "es"
    auth._lock, auth._auth, auth._frozen = threading.Lock(), None, None
    assert token in redact(f"DEBUG x-amz-security-token:{token}")  # not known yet
    request = auth(requests.Request("GET", "http://127.0.0.1:9/_count").prepare())
    assert request.headers["x-amz-security-token"] == token
    masked = redact(f"DEBUG x-amz-security-token:{token} key {secret}")
    assert token not in masked and secret not in masked

