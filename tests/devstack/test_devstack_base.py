"""The devstack's shared parts: SigV4 checking, fault switches, the launcher's lifecycle."""

from __future__ import annotations

import json
import os
import threading
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qsl, urlsplit

import pytest
import requests
from requests_aws4auth import AWS4Auth

from devstack import faults, launcher, sigv4
from devstack.httpbase import App, json_response, serve


def _signed(url: str, key="AKIDEXAMPLE", secret="s3cr3t", service="es", body=b'{"q":1}'):
    prepared = requests.Request(
        "POST", url, data=body, headers={"Content-Type": "application/json"},
        auth=AWS4Auth(key, secret, "us-east-1", service),
    ).prepare()
    split = urlsplit(prepared.url)
    headers = {k.lower(): v for k, v in prepared.headers.items()} | {"host": split.netloc}
    return dict(method="POST", raw_path=split.path, query=parse_qsl(split.query, keep_blank_values=True),
                headers=headers, body=prepared.body)


def test_sigv4_accepts_requests_aws4auth_and_botocore():
    sigv4.verify(**_signed("http://127.0.0.1:9/idx/_search?size=3&q=a b"),
                 access_key="AKIDEXAMPLE", secret_key="s3cr3t", service="es")
    headers = sigv4.sign_headers(method="POST", url="http://127.0.0.1:9/CreateTransformJob",
                                 body=b"{}", headers={"Content-Type": "application/json"},
                                 access_key="AKIDEXAMPLE", secret_key="s3cr3t",
                                 region="us-east-1", service="sagemaker")
    sigv4.verify(method="POST", raw_path="/CreateTransformJob", query=[],
                 headers={k.lower(): v for k, v in headers.items()} | {"host": "127.0.0.1:9"},
                 body=b"{}", access_key="AKIDEXAMPLE", secret_key="s3cr3t", service="sagemaker")


@pytest.mark.parametrize(
    "change, code",
    [
        (dict(secret_key="wrong"), "InvalidSignatureException"),
        (dict(access_key="OTHERKEY"), "UnrecognizedClientException"),
        (dict(service="sagemaker"), "InvalidSignatureException"),
    ],
)
def test_sigv4_refuses_wrong_key_or_service(change, code):
    args = dict(access_key="AKIDEXAMPLE", secret_key="s3cr3t", service="es") | change
    with pytest.raises(sigv4.SignatureError) as err:
        sigv4.verify(**_signed("http://127.0.0.1:9/x"), **args)
    assert err.value.code == code


def test_sigv4_refuses_tampered_body_and_stale_date():
    req = _signed("http://127.0.0.1:9/x")
    with pytest.raises(sigv4.SignatureError):
        sigv4.verify(**(req | {"body": b'{"q":2}'}), access_key="AKIDEXAMPLE",
                     secret_key="s3cr3t", service="es")
    with pytest.raises(sigv4.SignatureError, match="expired"):
        sigv4.verify(**req, access_key="AKIDEXAMPLE", secret_key="s3cr3t", service="es",
                     now=datetime.now(UTC) + timedelta(hours=1))


def test_counted_faults_fire_exactly_n_times_across_threads(tmp_path):
    faults.init(tmp_path)
    faults.set_faults(tmp_path, sagemaker_throttle={"count": 5})
    fired = []
    threads = [threading.Thread(target=lambda: fired.append(faults.take("sagemaker_throttle")))
               for _ in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(1 for f in fired if f) == 5
    assert faults.current(tmp_path)["sagemaker_throttle"]["count"] == 0
    faults.clear(tmp_path)
    assert faults.take("sagemaker_throttle") is None


def test_http_faults_apply_before_routing(tmp_path):
    faults.init(tmp_path)
    app = App("opensearch")

    @app.route("GET", "/hello")
    def hello(req):
        return json_response({"ok": True})

    server = serve(app, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.server_address[1]}/hello"
    try:
        faults.set_faults(tmp_path, http=[
            {"service": "opensearch", "path_regex": "^/hello$", "status": 503, "count": 1},
            {"service": "sagemaker", "path_regex": ".*", "status": 500, "count": -1},
        ])
        first = requests.get(url, timeout=5)
        assert first.status_code == 503 and first.json()["error"]["type"] == "devstack_fault"
        assert requests.get(url, timeout=5).json() == {"ok": True}  # other service's rule ignored
        faults.set_faults(tmp_path, http=[{"path_regex": "/hello", "action": "reset", "count": 1}])
        with pytest.raises(requests.ConnectionError):
            requests.get(url, timeout=5)
        assert requests.get(url, timeout=5).status_code == 200
    finally:
        server.shutdown()
        faults.clear(tmp_path)


def test_launcher_starts_s3_writes_endpoints_and_stops_only_its_pid(tmp_path):
    ports = launcher.random_ports()
    ep = launcher.up(tmp_path, ports=ports, services=("s3",))
    try:
        assert ep["s3"] == f"http://127.0.0.1:{ports['s3']}"
        written = json.loads((tmp_path / "endpoints.json").read_text())
        assert written == ep
        assert oct((tmp_path / "endpoints.json").stat().st_mode & 0o777) == "0o600"
        pid = launcher.status(tmp_path)["s3"]
        assert pid and os.path.exists(f"/proc/{pid}")
        # A second `up` is idempotent: same process, same credentials.
        assert launcher.up(tmp_path, services=("s3",)) == ep
        assert launcher.status(tmp_path)["s3"] == pid
    finally:
        assert launcher.down(tmp_path, services=("s3",)) == ["s3"]
    assert launcher.status(tmp_path)["s3"] is None
    assert not os.path.exists(f"/proc/{pid}") or b"zombie" in open(f"/proc/{pid}/status", "rb").read().lower()
