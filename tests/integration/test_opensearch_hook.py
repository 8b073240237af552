"""The OpenSearch hook against the devstack's real node behind its HTTPS front: TLS with the
connection's CA (verified by default), basic auth and SigV4 (`es`, credentials through the
amazon provider), and refusals that say what to check, without a secret."""


from __future__ import annotations

import pytest

from batchvec.hooks.opensearch import OpenSearchDomainHook, OpenSearchError
from devstack import tls
from tests.helpers.contract_helpers import opensearch_conn, set_conn, unique

pytestmark = [pytest.mark.devstack, pytest.mark.airflow]


def _aws(ep: dict, secret: str | None = None, key: str | None = None) -> dict:
    return {"conn_type": "aws", "login": key or ep["aws_access_key_id"],
            "password": secret or ep["aws_secret_access_key"], "extra": {"region_name": ep["region"]}}


def _basic(ep: dict, password: str | None = None, **extra) -> dict:
    return {**opensearch_conn(ep, auth="basic", **extra), "login": ep["opensearch_user"],
            "password": password or ep["opensearch_password"]}


def _sigv4(ep: dict, aws_conn_id: str, **extra) -> dict:
    return opensearch_conn(ep, auth="sigv4", aws_conn_id=aws_conn_id, region=ep["region"], **extra)


def test_sigv4_with_credentials_from_the_aws_connection(airflow_env, monkeypatch):
    ep = airflow_env.endpoints
    set_conn(monkeypatch, "aws_signer", _aws(ep))
    set_conn(monkeypatch, "os_sigv4", _sigv4(ep, "aws_signer"))
    hook = OpenSearchDomainHook("os_sigv4")
    index = unique("hook-sigv4")
    hook.create_index(index, {"mappings": {"properties": {"n": {"type": "integer"}}}})
    assert hook.index_exists(index) and hook.count(index) == 0
    body = b'{"index":{"_index":"%s","_id":"1"}}\n{"n":1}\n' % index.encode()
    assert hook.bulk(body)["errors"] is False  # the ndjson body is signed too


@pytest.mark.parametrize("case,key,secret,service,expect", [
    ("wrong secret", None, "not-the-secret-at-all", "es", "signature we calculated does not match"),
    ("unknown key", "DEVSTACKUNKNOWNKEY", "not-the-secret-at-all", "es",
     "security token included in the request is invalid"),
    ("other service", None, None, "s3", "Credential should be scoped to correct service: 'es'"),
])
def test_sigv4_refusals_say_what_to_check_and_carry_no_secret(airflow_env, monkeypatch, case, key,
                                                              secret, service, expect):
    ep = airflow_env.endpoints
    set_conn(monkeypatch, "aws_refused", _aws(ep, secret=secret, key=key))
    set_conn(monkeypatch, "os_refused", _sigv4(ep, "aws_refused", service=service))
    hook = OpenSearchDomainHook("os_refused", max_retries=0)
    with pytest.raises(OpenSearchError) as err:
        hook.count("anything")
    assert err.value.status == 403 and expect in err.value.reason, case
    with pytest.raises(OpenSearchError) as head:  # HEAD: no body, the hint must say it all
        hook.index_exists("anything")
    for e in (err.value, head.value):
        assert "AWS connection 'aws_refused'" in str(e) and f"service '{service}'" in str(e)
        assert "not-the-secret-at-all" not in str(e) and ep["aws_secret_access_key"] not in str(e)


def test_basic_auth_errors_carry_opensearch_type_and_reason(airflow_env, monkeypatch):
    ep = airflow_env.endpoints
    set_conn(monkeypatch, "os_basic", _basic(ep))
    with pytest.raises(OpenSearchError) as err:
        OpenSearchDomainHook("os_basic").create_index("Bad_Name", {})
    assert err.value.type == "invalid_index_name_exception" and "Bad_Name" in err.value.reason
    assert ep["opensearch_password"] not in str(err.value)


@pytest.mark.parametrize("method", ["count", "index_exists"])
def test_a_wrong_password_is_refused_with_a_clear_error(airflow_env, monkeypatch, method):
    ep = airflow_env.endpoints
    set_conn(monkeypatch, "os_nopass", _basic(ep, password="nope-wrong-pw"))
    with pytest.raises(OpenSearchError) as err:
        getattr(OpenSearchDomainHook("os_nopass", max_retries=0), method)("x")
    assert err.value.status == 401
    assert (f"connection 'os_nopass': basic auth as '{ep['opensearch_user']}': check the login "
            "and password") in err.value.reason
    assert "nope-wrong-pw" not in str(err.value)
    set_conn(monkeypatch, "os_anon", opensearch_conn(ep, auth="none"))
    with pytest.raises(OpenSearchError) as err:
        getattr(OpenSearchDomainHook("os_anon", max_retries=0), method)("x")
    assert err.value.status == 401 and "no credentials sent (extra.auth none)" in err.value.reason


def test_tls_with_the_connections_ca_and_verified_by_default(airflow_env, monkeypatch, tmp_path):
    ep = airflow_env.endpoints
    set_conn(monkeypatch, "os_ca", _basic(ep))
    hook = OpenSearchDomainHook("os_ca", max_retries=0)
    assert hook.session.verify == ep["opensearch_ca"] and hook.base_url.startswith("https://")
    assert hook.index_exists("x") is False  # an answer: the TLS handshake passed
    other = tls.ensure(tmp_path).ca  # a CA of its own, that did not sign the front's cert
    set_conn(monkeypatch, "os_other_ca", _basic(ep, ca_certs=str(other)))
    # No ca_certs: verified against the system CAs (REQUESTS_CA_BUNDLE, if set), not skipped.
    set_conn(monkeypatch, "os_default_ca", {**_basic(ep), "extra": {"auth": "basic"}})
    assert OpenSearchDomainHook("os_default_ca").session.verify is True
    for conn_id in ("os_other_ca", "os_default_ca"):
        with pytest.raises(OpenSearchError) as err:
            OpenSearchDomainHook(conn_id, max_retries=0).index_exists("x")
        assert err.value.type == "connection_error" and "CERTIFICATE_VERIFY_FAILED" in err.value.reason
        assert ep["opensearch_password"] not in str(err.value)
    set_conn(monkeypatch, "os_plain", {**_basic(ep), "schema": "http"})
    with pytest.raises(OpenSearchError) as err:  # no plain HTTP on the TLS port
        OpenSearchDomainHook("os_plain", max_retries=0).index_exists("x")
    assert err.value.type == "connection_error"


@pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")
def test_verify_off_still_talks_to_the_front(airflow_env, monkeypatch):
    ep = airflow_env.endpoints
    set_conn(monkeypatch, "os_noverify", {**_basic(ep, ca=False, verify_certs=False)})
    assert OpenSearchDomainHook("os_noverify", max_retries=0).index_exists("x") is False

