"""Hostile values for everything that reaches an ML Commons request template, the TLS settings a
connection may ask for, and the credential scrubber, without a server (TLS against a real HTTPS
server and the real node's templating are in tests/integration/test_security_inputs.py)."""

from __future__ import annotations

import json
import logging

import pytest

from batchvec.batch.job import transform_parameters
from batchvec.hooks.opensearch import OpenSearchDomainHook
from batchvec.model import connectors
from batchvec.model.connectors import ModelSpec
from batchvec.plan import naming, run_plan
from batchvec.util.redact import scrub
from tests.helpers.security_inputs_helpers import FIELDS, SPEC, https_conn


@pytest.mark.parametrize("extra, verify", [
    ({}, True), ({"verify_certs": True}, True), ({"verify_certs": "true"}, True),
    ({"verify_certs": "1"}, True), ({"ca_certs": "/etc/ssl/ca.pem"}, "/etc/ssl/ca.pem"),
])
def test_verification_stays_on_for_everything_else(monkeypatch, caplog, extra, verify):
    https_conn(monkeypatch, "os_tls_on", 443, **extra)
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
    https_conn(monkeypatch, "os_tls_bad", 443, **extra)
    with pytest.raises(ValueError, match=fragment):
        OpenSearchDomainHook("os_tls_bad").session  # noqa: B018


# Each can close the JSON string it lands in, add a key, end the object, or (ML Commons
# substitutes recursively) pull another parameter in.
HOSTILE = ['x"', 'x", "ExtraKey": "y', "x\\", "x}", "x\n", "x\r\n", "${parameters.ModelName}",
           "$${parameters.x}", "x\u2028", "ü", "x y", "x\t", ""]


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

