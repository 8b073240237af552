"""How OpenSearchDomainHook authenticates and verifies TLS, from the connection's extras:
SigV4 with credentials botocore refreshes, and requests' `verify` parsed strictly."""

from __future__ import annotations

import logging
import threading

from batchvec.util.redact import mask_secrets

log = logging.getLogger(__name__)


class SigV4Auth:
    """requests-aws4auth signing with the connection's credentials (the amazon provider's
    session), re-read on every request so botocore's refreshes reach the signer."""

    def __init__(self, aws_conn_id: str, region: str, service: str):
        from batchvec.hooks import aws

        self._session = aws.session(aws_conn_id, region)
        self._region, self._service = region, service
        self._lock = threading.Lock()
        self._auth = None
        self._frozen = None

    def __call__(self, request):
        from requests_aws4auth import AWS4Auth

        # botocore's credential object refreshes itself (assumed roles, instance profiles);
        # re-read the frozen triple each call and rebuild the signer when it changed.
        frozen = self._session.get_credentials().get_frozen_credentials()
        with self._lock:
            if frozen != self._frozen:
                mask_secrets(frozen.secret_key, frozen.token)
                self._auth = AWS4Auth(frozen.access_key, frozen.secret_key, self._region,
                                      self._service, session_token=frozen.token)
                self._frozen = frozen
            auth = self._auth
        return auth(request)


_FALSE = {"false", "0", "no", "off"}
_TRUE = {"true", "1", "yes", "on"}


def tls_verify(conn_id: str, extra: dict) -> bool | str:
    """requests' `verify` for a connection: True (system CAs), a CA bundle path, or False only
    when the extras say `verify_certs: false` in so many words. Extras typed in the UI or a
    connection URI arrive as strings, and bool("false") is True: parse them, and refuse
    anything that is neither clearly on nor clearly off rather than guess."""
    raw = extra.get("verify_certs", True)
    if isinstance(raw, str) and raw.strip().lower() in _FALSE | _TRUE:
        raw = raw.strip().lower() in _TRUE
    if not isinstance(raw, bool):
        raise ValueError(f"connection {conn_id!r}: extra.verify_certs must be true or false, "
                         f"got {raw!r}")
    ca_certs = extra.get("ca_certs")
    if ca_certs and not isinstance(ca_certs, str):
        raise ValueError(f"connection {conn_id!r}: extra.ca_certs must be a file path")
    if not raw and ca_certs:
        raise ValueError(f"connection {conn_id!r}: extra.ca_certs and verify_certs=false "
                         "contradict each other; drop one")
    if not raw:
        log.warning("TLS certificate verification is OFF for connection %s (extra.verify_certs "
                    "= false): anyone on the path can read its credentials", conn_id)
        return False
    return ca_certs or True
