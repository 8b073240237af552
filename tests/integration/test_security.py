"""No secret leaks from a real run: connections carry known, distinctive secrets, the DAG runs
through dag.test() on the devstack, and every place a secret could surface is grepped: all
logging (DEBUG) and stdout/stderr, task log files, XComs, rendered template fields, trigger
rows and trigger events, every object the run wrote to S3, the OpenSearch node's and its
front's logs, and the ML Commons models as read back (their connectors hold the AWS keys).

The real OpenSearch node does not return a connector's credential: GET
`_plugins/_ml/models/<id>` and `_plugins/_ml/models/_search` leave `credential` out, and the
model's document in `.plugins-ml-model` holds each key encrypted (AWS Encryption SDK
ciphertext, `AgV4...`); `ml_model_places` asserts exactly that.

In a DAG run the AWS session token rides on a connection used only to sign OpenSearch
requests (SigV4): SeaweedFS refuses unknown session tokens (InvalidAccessKeyId), while the
devstack's front checks the signature over the signed `x-amz-security-token` header, as AWS
does. Session tokens in the connector come from assumed-role keys
(`test_the_key_refresh_path_leaks_no_assumed_role_key`).
"""


from __future__ import annotations

import json
import secrets
from datetime import UTC, datetime

import pytest

from tests.helpers.dag_helpers import os_session
from tests.helpers.paths import REPO
from tests.helpers.security_helpers import (
    Capture,
    DevstackLogs,
    db_places,
    leaks,
    log_file_places,
    ml_model_places,
    needles,
    s3_places,
)

pytestmark = [pytest.mark.devstack, pytest.mark.airflow]


SESSION_TOKEN = "IQoJb3JpZ2luX2VjBatchvecToken" + secrets.token_hex(12)


WRONG_PASSWORD = "Wr0ngPassw0rd-" + secrets.token_hex(8)


@pytest.fixture
def capture_logs(monkeypatch):
    return Capture(monkeypatch)


def _conns(ep: dict, *, auth: str, password: str) -> dict[str, dict]:
    sys_path = str(REPO / "scripts")
    import sys

    if sys_path not in sys.path:
        sys.path.insert(0, sys_path)
    from devstack_connections import connections

    conns = connections(ep)
    conns["opensearch_default"]["password"] = password
    if auth == "sigv4":
        conns["aws_opensearch"] = {
            "conn_type": "aws", "login": ep["aws_access_key_id"],
            "password": ep["aws_secret_access_key"],
            "extra": {"region_name": ep["region"], "aws_session_token": SESSION_TOKEN}}
        # A self-managed cluster behind SigV4: ML Commons there needs the connection's keys
        # (the default for SigV4 `es`, a role, is Amazon OpenSearch Service's).
        conns["opensearch_default"]["extra"] = {
            "auth": "sigv4", "aws_conn_id": "aws_opensearch", "region": ep["region"],
            "ca_certs": ep["opensearch_ca"], "connector_credentials": "aws_keys"}
    return conns


@pytest.fixture
def dag_with(airflow_env, monkeypatch):
    def make(*, auth: str = "basic", password: str | None = None, retries: int = 0):
        ep = airflow_env.endpoints
        for conn_id, conn in _conns(ep, auth=auth,
                                    password=password or ep["opensearch_password"]).items():
            monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(conn))
        monkeypatch.setenv("BATCHVEC_RETRIES", str(retries))
        from airflow.dag_processing.dagbag import DagBag

        bag = DagBag(dag_folder=str(REPO / "dags"))
        assert not bag.import_errors, bag.import_errors
        return bag.dags["batch_embeddings"]
    return make


@pytest.mark.parametrize("auth", ["basic", "sigv4"])
def test_a_run_leaks_no_credential_anywhere(dag_with, airflow_env, capture_logs, capfd, auth, tmp_path):
    devstack = airflow_env
    ep = devstack.endpoints
    dag = dag_with(auth=auth)
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps({"id": f"s-{i}", "text": f"secure text {i}"}) + "\n"
                              for i in range(6)) + '{"id": "bad", "text": ""}\n')
    when = datetime(2026, 7, 1 if auth == "basic" else 2, tzinfo=UTC)
    devstack_logs = DevstackLogs(devstack)
    dagrun = dag.test(run_after=when, logical_date=when,
                      run_conf={"input_uri": str(source), "index_name": f"sec-{auth}",
                                "max_reject_ratio": 0.5})
    out, err = capfd.readouterr()
    assert dagrun.state == "success", out[-3000:] + err[-3000:]

    from batchvec.plan import naming

    key = naming.run_key(dag.dag_id, dagrun.run_id)
    places = {**capture_logs.places(), "stdout": out, "stderr": err}
    places |= log_file_places() | db_places(dag.dag_id, dagrun.run_id)
    places |= s3_places(devstack, f"runs/{key}/") | devstack_logs.places()
    assert f"s3 runs/{key}/report.json" in places and f"s3 runs/{key}/manifest.json" in places
    assert any(p.endswith(".out") for p in places), sorted(places)  # the outputs were read too
    model_places, credentials = ml_model_places(devstack, os_session(devstack))
    places |= model_places
    model_id = json.loads(places["xcom ensure_model[-1].model_id"])
    assert set(credentials[model_id]["stored"]) == {"access_key", "secret_key"}  # no token here
    secret_needles = needles({"aws secret key": ep["aws_secret_access_key"],
                              "opensearch password": ep["opensearch_password"],
                              "session token": SESSION_TOKEN}, user=ep["opensearch_user"])
    found = leaks(places, secret_needles)
    assert not found, found
    # The grep looked where it should: the run's own traces are in what was captured, and
    # the trigger put the AWS connection's keys on the model (KeyRefresher) while it waited.
    assert key in capture_logs.ours and key in out
    assert f"put fresh AWS keys on model {model_id}" in capture_logs.ours
    if auth == "sigv4":  # and the token really travelled, signed, on every OpenSearch call
        from batchvec.hooks.opensearch import OpenSearchDomainHook

        sent = []
        hook = OpenSearchDomainHook("opensearch_default")
        hook.session.hooks["response"].append(lambda r, *a, **k: sent.append(r.request.headers))
        assert hook.count(f"sec-{auth}") == 6
        assert sent[0]["x-amz-security-token"] == SESSION_TOKEN
        assert "x-amz-security-token" in sent[0]["Authorization"]  # in SignedHeaders


def test_a_failing_run_leaks_neither_the_wrong_nor_the_right_password(dag_with, airflow_env,
                                                                     capture_logs, capfd, tmp_path):
    ep = airflow_env.endpoints
    dag = dag_with(password=WRONG_PASSWORD)
    source = tmp_path / "in.jsonl"
    source.write_text(json.dumps({"id": "f-1", "text": "never embedded"}) + "\n")
    when = datetime(2026, 7, 3, tzinfo=UTC)
    devstack_logs = DevstackLogs(airflow_env)
    dagrun = dag.test(run_after=when, logical_date=when,
                      run_conf={"input_uri": str(source), "index_name": "sec-fail"})
    out, err = capfd.readouterr()
    assert dagrun.state == "failed"
    assert "401" in out + capture_logs.ours  # it failed where it should: OpenSearch said no
    places = {**capture_logs.places(), "stdout": out, "stderr": err}
    places |= log_file_places() | db_places(dag.dag_id, dagrun.run_id, batch_predict_ran=False)
    places |= devstack_logs.places()
    found = leaks(places, needles({"aws secret key": ep["aws_secret_access_key"],
                                   "opensearch password": ep["opensearch_password"],
                                   "wrong password": WRONG_PASSWORD}, user=ep["opensearch_user"]))
    assert not found, found


def _set_conn(monkeypatch, conn_id: str, conn: dict) -> None:
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(conn))


def _bad_aws(ep: dict) -> dict:
    """The right key id with a wrong secret and a session token: AWS (and the stand-ins) answer
    with the canonical request they expected, which carries the token."""
    return {"conn_type": "aws", "login": ep["aws_access_key_id"], "password": WRONG_PASSWORD,
            "extra": {"region_name": ep["region"], "aws_session_token": SESSION_TOKEN,
                      "service_config": {"sagemaker": {"endpoint_url": ep["sagemaker"]}}}}


def _secret_needles(ep: dict) -> dict[str, str]:
    return needles({"aws secret key": ep["aws_secret_access_key"], "wrong secret": WRONG_PASSWORD,
                    "opensearch password": ep["opensearch_password"],
                    "session token": SESSION_TOKEN}, user=ep["opensearch_user"])


def test_opensearch_signature_errors_do_not_echo_the_session_token(airflow_env, monkeypatch,
                                                                   capture_logs):
    from batchvec.hooks.opensearch import OpenSearchDomainHook, OpenSearchError

    ep = airflow_env.endpoints
    host, port = ep["opensearch"].rsplit(":", 1)
    _set_conn(monkeypatch, "aws_bad", _bad_aws(ep))
    _set_conn(monkeypatch, "os_bad_sig", {
        "conn_type": "generic", "host": host.split("://")[1], "port": int(port), "schema": "https",
        "extra": {"auth": "sigv4", "aws_conn_id": "aws_bad", "region": ep["region"],
                  "ca_certs": ep["opensearch_ca"]}})
    with pytest.raises(OpenSearchError) as err:
        OpenSearchDomainHook("os_bad_sig", max_retries=0).count("anything")
    assert err.value.status == 403 and "signature" in str(err.value)
    assert "Canonical String" in str(err.value)  # the diagnosis stays, only the token goes
    found = leaks({"exception": str(err.value), "reason": err.value.reason,
                   **capture_logs.places()}, _secret_needles(ep))
    assert not found, found


def test_sagemaker_errors_while_polling_or_cancelling_do_not_echo_the_session_token(
        airflow_env, monkeypatch, capture_logs):
    from batchvec.batch.job import cancel_job, poll_job
    from batchvec.batch.operators import BatchPredictOperator
    from batchvec.hooks.opensearch import OpenSearchDomainHook

    ep = airflow_env.endpoints
    _set_conn(monkeypatch, "aws_bad", _bad_aws(ep))
    with pytest.raises(ConnectionError) as err:
        poll_job("opensearch_default", "aws_bad", None, "no-such-job")
    assert "InvalidSignatureException" in str(err.value)
    cancel_job("opensearch_default", "aws_bad", "no-such-job", None)  # logs, never raises
    op = BatchPredictOperator(task_id="bp", model_id="m1", run_key="k", input_s3_uri="s3://b/i/",
                              output_s3_uri="s3://b/o/", aws_conn_id="aws_bad")
    assert op._existing(OpenSearchDomainHook("opensearch_default"), "no-such-job") is None  # logged
    logged = capture_logs.ours
    assert "could not cancel job no-such-job" in logged and "DescribeTransformJob" in logged
    # botocore's own DEBUG record of the signed request was seen, and the masker hid the token
    assert "x-amz-security-token:***" in capture_logs.others_masked
    found = leaks({"exception": str(err.value), **capture_logs.places()}, _secret_needles(ep))
    assert not found, found


def test_unreachable_endpoint_errors_carry_no_password(airflow_env, monkeypatch, capture_logs):
    from batchvec.hooks.opensearch import OpenSearchDomainHook, OpenSearchError
    from devstack.launcher import free_port

    ep = airflow_env.endpoints
    password = ep["opensearch_password"]
    closed = free_port()
    # userinfo in the host as well as in login/password: neither may surface
    _set_conn(monkeypatch, "os_down", {
        "conn_type": "generic", "host": f"http://admin:{password}@127.0.0.1", "port": closed,
        "login": "admin", "password": password, "extra": {"auth": "basic"}})
    with pytest.raises(OpenSearchError) as err:
        OpenSearchDomainHook("os_down", max_retries=1).count("anything")
    assert err.value.type == "connection_error" and str(closed) in str(err.value)
    found = leaks({"exception": str(err.value), **capture_logs.places()},
                  _secret_needles(ep))
    assert not found, found

