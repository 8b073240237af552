"""TLS verification against a real HTTPS server, hostile values for everything that reaches an
ML Commons request template, and the credential scrubber. One test needs the devstack: the
legitimate values go through the real node's ML Commons templating."""

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
from batchvec.plan import naming, run_plan
from batchvec.util.redact import scrub

# -- TLS ----------------------------------------------------------------------------------------


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


def _https_conn(monkeypatch, conn_id: str, port: int, **extra) -> None:
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps({
        "conn_type": "generic", "host": "127.0.0.1", "port": port, "schema": "https",
        "login": "admin", "password": "tls-test-password", "extra": {"auth": "basic", **extra}}))


def test_tls_is_verified_by_default_and_credentials_never_reach_an_unverified_server(
        https_server, monkeypatch):
    _https_conn(monkeypatch, "os_tls_default", https_server["port"])
    hook = OpenSearchDomainHook("os_tls_default", max_retries=0)
    assert hook.session.verify is True
    before = len(https_server["seen"])
    with pytest.raises(OpenSearchError) as err:
        hook.count("anything")
    assert err.value.type == "connection_error" and "CERTIFICATE_VERIFY_FAILED" in str(err.value)
    assert len(https_server["seen"]) == before  # the handshake failed: no request, no password


def test_a_private_ca_is_trusted_when_named(https_server, monkeypatch):
    _https_conn(monkeypatch, "os_tls_ca", https_server["port"], ca_certs=https_server["ca"])
    hook = OpenSearchDomainHook("os_tls_ca", max_retries=0)
    assert hook.session.verify == https_server["ca"]
    assert hook.count("anything") == 3


@pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")  # expected
@pytest.mark.parametrize("off", [False, "false", "False", "0", "no"])
def test_only_an_explicit_verify_certs_false_turns_tls_off_and_it_warns(https_server, monkeypatch,
                                                                        caplog, off):
    _https_conn(monkeypatch, "os_tls_off", https_server["port"], verify_certs=off)
    with caplog.at_level(logging.WARNING, logger="batchvec.hooks.opensearch"):
        hook = OpenSearchDomainHook("os_tls_off", max_retries=0)
        assert hook.count("anything") == 3
    assert hook.session.verify is False
    assert any("TLS certificate verification is OFF for connection os_tls_off" in r.getMessage()
               and r.levelno == logging.WARNING for r in caplog.records)


@pytest.mark.parametrize("extra, verify", [
    ({}, True), ({"verify_certs": True}, True), ({"verify_certs": "true"}, True),
    ({"verify_certs": "1"}, True), ({"ca_certs": "/etc/ssl/ca.pem"}, "/etc/ssl/ca.pem"),
])
def test_verification_stays_on_for_everything_else(monkeypatch, caplog, extra, verify):
    _https_conn(monkeypatch, "os_tls_on", 443, **extra)
    with caplog.at_level(logging.WARNING, logger="batchvec.hooks.opensearch"):
        assert OpenSearchDomainHook("os_tls_on").session.verify == verify
    assert not [r for r in caplog.records if "TLS" in r.getMessage()]


@pytest.mark.parametrize("extra, fragment", [
    ({"verify_certs": "maybe"}, "verify_certs must be true or false"),
    ({"verify_certs": None}, "verify_certs must be true or false"),
    ({"verify_certs": 0}, "verify_certs must be true or false"),  # ambiguous: say so, not guess
    ({"verify_certs": False, "ca_certs": "/ca.pem"}, "contradict"),
])
def test_ambiguous_tls_settings_are_refused(monkeypatch, extra, fragment):
    _https_conn(monkeypatch, "os_tls_bad", 443, **extra)
    with pytest.raises(ValueError, match=fragment):
        OpenSearchDomainHook("os_tls_bad").session  # noqa: B018


# -- values that reach ML Commons request templates ---------------------------------------------

# Each can close the JSON string it lands in, add a key, end the object, or (ML Commons
# substitutes recursively) pull another parameter in.
HOSTILE = ['x"', 'x", "ExtraKey": "y', "x\\", "x}", "x\n", "x\r\n", "${parameters.ModelName}",
           "$${parameters.x}", "x\u2028", "ü", "x y", "x\t", ""]
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


@pytest.mark.parametrize("field", sorted(FIELDS))
@pytest.mark.parametrize("hostile", HOSTILE)
def test_hostile_model_values_are_refused_naming_the_param_and_pattern(field, hostile):
    param, legit = FIELDS[field]
    for value in (hostile, legit + hostile):  # alone, and riding on a valid prefix
        if value == legit or (value == "" and field.endswith("_url")):
            continue  # an empty URL means the region's AWS endpoint
        # a role reaches the connector only where it is the credential (role_arn mode)
        mode = "role_arn" if field == "role_arn" else SPEC.credentials
        spec = ModelSpec(**{**SPEC.__dict__, field: value, "credentials": mode})
        with pytest.raises(ValueError) as err:
            connectors.connector_definition(spec)
        assert f"{param}" in str(err.value) and "pattern" in str(err.value), str(err.value)


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


def test_a_role_arn_reaches_the_connector_only_as_its_credential():
    spec = ModelSpec(**{**SPEC.__dict__, "credentials": "role_arn"})
    definition = connectors.connector_definition(spec)
    assert definition["credential"] == {"roleArn": SPEC.role_arn}
    assert SPEC.role_arn not in json.dumps({k: v for k, v in definition.items() if k != "credential"})


@pytest.mark.parametrize("count", [True, 0, 101, "2", 1.5])
def test_instance_count_must_be_a_real_integer(count):
    with pytest.raises(ValueError, match="instance_count"):
        connectors.connector_definition(ModelSpec(**{**SPEC.__dict__, "instance_count": count}))


@pytest.mark.parametrize("hostile", HOSTILE[:-1] + ["a//b", "../up", "a/./b", "x" * 201])
def test_hostile_job_names_prefixes_and_uris_never_reach_a_request(hostile):
    with pytest.raises(ValueError, match="job name"):
        naming.validate_job_name("run-key" + hostile)
    with pytest.raises(ValueError, match="key prefix"):
        naming.validate_key_prefix("runs/" + hostile)
    with pytest.raises(ValueError):
        transform_parameters("run-key", f"s3://bucket/runs/{hostile}/input/", "s3://bucket/o/")
    with pytest.raises(ValueError):
        transform_parameters("run-key" + hostile, "s3://bucket/i/", "s3://bucket/o/")


@pytest.mark.parametrize("prefix", ["", "runs", "runs/", "team-a/batch_vec/ds=2026-01-01", "a.b"])
def test_legitimate_prefixes_pass(prefix):
    assert naming.validate_key_prefix(prefix) == prefix


def test_run_keys_always_make_valid_job_names_and_request_uris():
    for run_id in ['manual__2026-01-01T00:00:00+00:00', 'x", "y": "z', "${parameters.ModelName}\n"]:
        key = naming.run_key('dag"}', run_id)
        assert naming.transform_job_name(key, 3) == f"{key}-r3"
        naming.validate_request_s3_uri(naming.join_s3("bucket", "runs", key, "input/"))


def test_resolve_plan_reports_injection_attempts_with_every_other_bad_param():
    params = {"input_uri": "https://me:x-secret-pw@example.com/in.jsonl", "sagemaker_model_name": 'm", "x": "y',
              "sagemaker_endpoint_name": "ep\n", "connector_role_arn": "${parameters.region}",
              "instance_type": "ml.m5.xlarge}", "staging_prefix": 'runs/"}', "shards": -1,
              "index_name": "BAD"}
    with pytest.raises(ValueError) as err:
        run_plan.resolve_plan(params, dag_id="d", run_id="r", ds="2026-01-01", region="us-east-1\n",
                          sagemaker_api_url='http://h", "u": "',
                          connector_credentials="role_arn")  # where the role reaches the connector
    text = str(err.value)
    assert "x-secret-pw" not in text  # the input URL's userinfo is not echoed
    for name in ("input_uri", "sagemaker_model_name", "sagemaker_endpoint_name", "connector_role_arn",
                 "instance_type", "staging_prefix", "shards", "index_name", "region",
                 "sagemaker_api_url"):
        assert f"\n  {name}" in text, (name, text)


# -- the scrubber -------------------------------------------------------------------------------

@pytest.mark.parametrize("text, secret", [
    ("x-amz-security-token:IQoJtoken123/abc+def=\nx-amz-target:Sage", "IQoJtoken123/abc+def="),
    ("X-Amz-Security-Token: IQoJtoken123", "IQoJtoken123"),
    ("GET /b?X-Amz-Security-Token=IQoJ%2Btoken&X-Amz-Date=1", "IQoJ%2Btoken"),
    ("HTTPSConnectionPool: https://admin:hunter2pass@search.example.com:443/x", "hunter2pass"),
    ("{'Authorization': 'Basic YWRtaW46aHVudGVyMnBhc3M='}", "YWRtaW46aHVudGVyMnBhc3M"),
    ("Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.e30.sig", "eyJhbGciOiJIUzI1NiJ9"),
    ('{"password": "hunter2pass", "user": "admin"}', "hunter2pass"),
    ("aws_secret_access_key=wJalrXUtnFEMI/K7MDENG", "wJalrXUtnFEMI"),
    ("Credential=AKID/20260101/us-east-1/es/aws4_request, Signature=" + "ab" * 32, "ab" * 32),
])
def test_scrub_removes_credentials_and_keeps_the_diagnosis(text, secret):
    out = scrub(text)
    assert secret not in out and "***" in out
    assert len(out) > 10  # still says what went wrong


def test_scrub_leaves_ordinary_text_alone():
    text = "POST /_plugins/_ml/models/abc/_batch_predict -> 400 illegal_argument_exception: bad"
    assert scrub(text) == text


def test_job_failure_reasons_are_scrubbed_before_they_reach_events_and_messages():
    from batchvec.hooks import mlcommons

    echo = "InvalidSignatureException ... x-amz-security-token:IQoJsecretToken123\nsigned"
    task = {"state": "FAILED", "error": echo, "remote_job": {}}
    assert "IQoJsecretToken123" not in mlcommons.status_from_task(task).failure_reason
    described = {"TransformJobStatus": "Failed", "FailureReason": echo}
    assert "IQoJsecretToken123" not in mlcommons.status_from_sagemaker(described).failure_reason
    assert mlcommons.status_from_task({"state": "RUNNING"}).failure_reason is None
