"""The OpenSearch hook against the devstack: SigV4 through the amazon provider's credentials,
basic auth, TLS defaults, and errors that carry OpenSearch's type and reason (no secrets)."""

from __future__ import annotations

import json

import pytest

from batchvec.opensearch_hook import OpenSearchError, OpenSearchHook

pytestmark = [pytest.mark.devstack, pytest.mark.airflow]


def _conn(monkeypatch, conn_id: str, conn: dict) -> None:
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(conn))


def _opensearch(ep: dict, **extra) -> dict:
    host, port = ep["opensearch"].rsplit(":", 1)
    return {"conn_type": "generic", "host": host.split("://")[1], "port": int(port),
            "schema": "http", "extra": extra}


def test_sigv4_with_credentials_from_the_aws_connection(airflow_env, monkeypatch):
    ep = airflow_env.endpoints
    _conn(monkeypatch, "aws_signer", {"conn_type": "aws", "login": ep["aws_access_key_id"],
                                      "password": ep["aws_secret_access_key"],
                                      "extra": {"region_name": ep["region"]}})
    _conn(monkeypatch, "os_sigv4", _opensearch(ep, auth="sigv4", aws_conn_id="aws_signer",
                                               region=ep["region"]))
    hook = OpenSearchHook("os_sigv4")
    hook.create_index("hook-sigv4", {"mappings": {"properties": {"n": {"type": "integer"}}}})
    assert hook.index_exists("hook-sigv4")
    assert hook.count("hook-sigv4") == 0


def test_wrong_key_is_refused_with_reason_and_no_secret(airflow_env, monkeypatch):
    ep = airflow_env.endpoints
    _conn(monkeypatch, "aws_wrong", {"conn_type": "aws", "login": ep["aws_access_key_id"],
                                     "password": "not-the-secret-at-all",
                                     "extra": {"region_name": ep["region"]}})
    _conn(monkeypatch, "os_wrong", _opensearch(ep, auth="sigv4", aws_conn_id="aws_wrong",
                                               region=ep["region"]))
    with pytest.raises(OpenSearchError) as err:
        OpenSearchHook("os_wrong", max_retries=0).count("anything")
    assert err.value.status == 403
    assert "not-the-secret-at-all" not in str(err.value)


def test_basic_auth_errors_carry_opensearch_type_and_reason(airflow_env, monkeypatch):
    ep = airflow_env.endpoints
    conn = _opensearch(ep, auth="basic")
    _conn(monkeypatch, "os_basic", {**conn, "login": ep["opensearch_user"],
                                    "password": ep["opensearch_password"]})
    hook = OpenSearchHook("os_basic")
    with pytest.raises(OpenSearchError) as err:
        hook.create_index("Bad_Name", {})
    assert err.value.type == "invalid_index_name_exception" and "Bad_Name" in err.value.reason
    assert ep["opensearch_password"] not in str(err.value)
    _conn(monkeypatch, "os_nopass", {**conn, "login": ep["opensearch_user"], "password": "nope"})
    with pytest.raises(OpenSearchError) as err:
        OpenSearchHook("os_nopass", max_retries=0).index_exists("x")
    assert err.value.status == 401


def test_tls_is_verified_unless_the_connection_turns_it_off(monkeypatch):
    _conn(monkeypatch, "os_tls", {"conn_type": "generic", "host": "search.example.com",
                                  "schema": "https", "login": "u", "password": "p",
                                  "extra": {"auth": "basic"}})
    assert OpenSearchHook("os_tls").session.verify is True
    _conn(monkeypatch, "os_tls_off", {"conn_type": "generic", "host": "search.example.com",
                                      "schema": "https", "login": "u", "password": "p",
                                      "extra": {"auth": "basic", "verify_certs": False}})
    assert OpenSearchHook("os_tls_off").session.verify is False
    _conn(monkeypatch, "os_bad_auth", {"conn_type": "generic", "host": "h",
                                       "extra": {"auth": "kerberos"}})
    with pytest.raises(ValueError, match="sigv4, basic or none"):
        OpenSearchHook("os_bad_auth").session  # noqa: B018
