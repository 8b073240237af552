"""TLS verification against a real HTTPS server, and the legitimate model values through the real
node's ML Commons templating (the hostile values and the scrubber alone are in
tests/unit/test_security_inputs.py)."""

from __future__ import annotations

import datetime as dt
import http.server
import ipaddress
import json
import logging
import ssl
import threading

import pytest

from batchvec.batch.job import transform_parameters
from batchvec.hooks.opensearch import OpenSearchDomainHook, OpenSearchError
from batchvec.model import connectors
from batchvec.model.connectors import ModelSpec
from tests.helpers.security_inputs_helpers import FIELDS, SPEC, https_conn


@pytest.fixture(scope="module")
def https_server(tmp_path_factory):
    """An HTTPS server with a self-signed certificate for 127.0.0.1; records what reaches it."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "batchvec-test")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    folder = tmp_path_factory.mktemp("tls")
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    seen: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            seen.append(self.headers.get("Authorization", ""))
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            body = json.dumps({"count": 3}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_path, key_path)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield {"port": server.server_address[1], "ca": str(cert_path), "seen": seen}
    server.shutdown()


def test_tls_is_verified_by_default_and_credentials_never_reach_an_unverified_server(
        https_server, monkeypatch):
    https_conn(monkeypatch, "os_tls_default", https_server["port"])
    hook = OpenSearchDomainHook("os_tls_default", max_retries=0)
    assert hook.session.verify is True
    before = len(https_server["seen"])
    with pytest.raises(OpenSearchError) as err:
        hook.count("anything")
    assert err.value.type == "connection_error" and "CERTIFICATE_VERIFY_FAILED" in str(err.value)
    assert len(https_server["seen"]) == before  # the handshake failed: no request, no password


def test_a_private_ca_is_trusted_when_named(https_server, monkeypatch):
    https_conn(monkeypatch, "os_tls_ca", https_server["port"], ca_certs=https_server["ca"])
    hook = OpenSearchDomainHook("os_tls_ca", max_retries=0)
    assert hook.session.verify == https_server["ca"]
    assert hook.count("anything") == 3


@pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")  # expected
@pytest.mark.parametrize("off", [False, "false", "False", "0", "no"])
def test_only_an_explicit_verify_certs_false_turns_tls_off_and_it_warns(https_server, monkeypatch,
                                                                        caplog, off):
    https_conn(monkeypatch, "os_tls_off", https_server["port"], verify_certs=off)
    with caplog.at_level(logging.WARNING, logger="batchvec.hooks.opensearch"):
        hook = OpenSearchDomainHook("os_tls_off", max_retries=0)
        assert hook.count("anything") == 3
    assert hook.session.verify is False
    assert any("TLS certificate verification is OFF for connection os_tls_off" in r.getMessage()
               and r.levelno == logging.WARNING for r in caplog.records)


@pytest.fixture(scope="module")
def capture_sagemaker(airflow_env):
    """A stand-in SageMaker API on the devstack SageMaker's address (one ML Commons trusts)
    that records each request ML Commons sends and answers as SageMaker would."""
    from urllib.parse import urlsplit

    seen: list[tuple[str, bytes]] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            seen.append((self.path, self.rfile.read(int(self.headers.get("Content-Length") or 0))))
            body = json.dumps({"TransformJobArn": "arn:aws:sagemaker:eu-west-1:123456789012:"
                               "transform-job/run-key-r2"} if self.path == "/CreateTransformJob"
                              else {}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/x-amz-json-1.1")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    host = urlsplit(airflow_env.endpoints["sagemaker"]).hostname
    server = http.server.ThreadingHTTPServer((host, 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://{host}:{server.server_address[1]}", seen
    server.shutdown()


@pytest.mark.devstack
@pytest.mark.parametrize("field", sorted(set(FIELDS) - {"role_arn"}))
def test_legitimate_model_values_fill_the_real_ml_commons_templates_as_valid_json(
        field, capture_sagemaker):
    """Registered on the real node (the connector inside the model) and submitted with
    `_batch_predict`: the body ML Commons fills in and sends (escaping, recursive
    substitution) is valid JSON with exactly the expected keys. `role_arn` reaches no template
    on a self-managed cluster (the node refuses a role-only credential: "Missing credential")."""
    from batchvec.hooks import mlcommons
    from batchvec.hooks.opensearch import OpenSearchDomainHook

    url, seen = capture_sagemaker
    value = url if field == "sagemaker_api_url" else FIELDS[field][1]
    spec = ModelSpec(**{**SPEC.__dict__, "sagemaker_api_url": url, field: value})
    hook = OpenSearchDomainHook("opensearch_default")
    model = connectors.ensure_model(hook, spec, {"access_key": "AKIDTEMPLATETEST",
                                                 "secret_key": "template-test-secret"})
    params = transform_parameters("run-key-r2", "s3://bucket/runs/k/input/", "s3://bucket/runs/k/output/")
    before = len(seen)
    try:
        task_id = mlcommons.batch_predict(hook, model["model_id"], params)["task_id"]
        mlcommons.cancel_task(hook, task_id)  # StopTransformJob, filled in from the task
    finally:  # the models of this test hold no key anyone uses: leave none behind
        hook.request("POST", f"/_plugins/_ml/models/{model['model_id']}/_undeploy")
        hook.request("DELETE", f"/_plugins/_ml/models/{model['model_id']}")
    sent = dict(seen[before:])
    doc = json.loads(sent["/CreateTransformJob"])
    assert set(doc) == {"BatchStrategy", "ModelName", "DataProcessing", "TransformInput",
                        "TransformJobName", "TransformOutput", "TransformResources",
                        "MaxPayloadInMB", "MaxConcurrentTransforms", "ModelClientConfig", "Tags"}
    assert doc["TransformJobName"] == "run-key-r2" and doc["ModelName"] == spec.model_name
    assert doc["TransformResources"] == {"InstanceCount": 1, "InstanceType": spec.instance_type}
    assert (doc["MaxPayloadInMB"], doc["MaxConcurrentTransforms"]) == (1, 2)
    assert doc["ModelClientConfig"] == {"InvocationsTimeoutInSeconds": 600,
                                        "InvocationsMaxRetries": 3}
    assert doc["Tags"] == [] and doc["BatchStrategy"] == "MultiRecord"
    assert doc["TransformInput"]["ContentType"] == "application/jsonlines"
    assert doc["TransformInput"]["DataSource"]["S3DataSource"]["S3Uri"] == "s3://bucket/runs/k/input/"
    assert json.loads(sent["/StopTransformJob"]) == {"TransformJobName": "run-key-r2"}

