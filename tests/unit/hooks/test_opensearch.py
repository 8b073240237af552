"""OpenSearchDomainHook's session settings from the Airflow connection, without a node (the hook
against the devstack's OpenSearch is in tests/integration/test_opensearch_hook.py)."""

from __future__ import annotations

import pytest

from batchvec.hooks.opensearch import OpenSearchDomainHook
from tests.helpers.contract_helpers import set_conn


def test_tls_is_verified_unless_the_connection_turns_it_off(monkeypatch):
    set_conn(monkeypatch, "os_tls", {"conn_type": "generic", "host": "search.example.com",
                                     "schema": "https", "login": "u", "password": "p",
                                     "extra": {"auth": "basic"}})
    assert OpenSearchDomainHook("os_tls").session.verify is True
    set_conn(monkeypatch, "os_tls_off", {"conn_type": "generic", "host": "search.example.com",
                                         "schema": "https", "login": "u", "password": "p",
                                         "extra": {"auth": "basic", "verify_certs": False}})
    assert OpenSearchDomainHook("os_tls_off").session.verify is False
    set_conn(monkeypatch, "os_bad_auth", {"conn_type": "generic", "host": "h",
                                          "extra": {"auth": "kerberos"}})
    with pytest.raises(ValueError, match="sigv4, basic or none"):
        OpenSearchDomainHook("os_bad_auth").session  # noqa: B018

