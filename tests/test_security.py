"""No secret leaks from a real run: connections carry known, distinctive secrets, the DAG runs
through dag.test() on the devstack, and every place a secret could surface is grepped: all
logging (DEBUG) and stdout/stderr, task log files, XComs, rendered template fields, trigger
rows, every JSON object the run wrote to S3, and the ML Commons connector as read back.

The AWS session token rides on a connection used only to sign OpenSearch requests (SigV4):
SeaweedFS refuses unknown session tokens (InvalidAccessKeyId), while the OpenSearch stand-in
checks the signature over the signed `x-amz-security-token` header, as AWS does.
"""

from __future__ import annotations

import base64
import json
import logging
import secrets
from datetime import UTC, datetime
from pathlib import Path

import pytest

pytestmark = [pytest.mark.devstack, pytest.mark.airflow]

REPO = Path(__file__).resolve().parents[1]
SESSION_TOKEN = "IQoJb3JpZ2luX2VjBatchvecToken" + secrets.token_hex(12)
WRONG_PASSWORD = "Wr0ngPassw0rd-" + secrets.token_hex(8)


def needles(named: dict[str, str], user: str = "") -> dict[str, str]:
    """Each secret, a 16-char slice of it (a truncated echo is still a leak), and the base64
    forms it travels in (`Authorization: Basic base64(user:password)`)."""
    out = {}
    for label, value in named.items():
        out[label] = value
        out[f"{label}[4:20]"] = value[4:20]
        out[f"{label} base64"] = base64.b64encode(value.encode()).decode().rstrip("=")
        if user:
            out[f"{label} basic header"] = base64.b64encode(f"{user}:{value}".encode()).decode()
    return out


def leaks(places: dict[str, str], secret_needles: dict[str, str]) -> list[str]:
    return [f"{label} in {place}" for place, text in places.items()
            for label, needle in secret_needles.items() if needle in text]


class Capture:
    """Every log record of the run at DEBUG, from every logger, before any handler or masker.

    Airflow reconfigures logging when a run starts (handlers replaced, levels reset), so a
    root handler would miss the run: records are taken where Logger.handle() receives them,
    and every logger is made DEBUG-enabled (SQLAlchemy's would echo each query: left alone).

    Our own records (any logger named batchvec...) are grepped raw: our code must not log a
    secret at all. Third-party DEBUG records are grepped as the task log would show them,
    through Airflow's secrets masker: botocore at DEBUG prints the signed request, session
    token included, and only the masker (which knows connection secrets) stands in its way.
    """

    def __init__(self, monkeypatch):
        self.records: list[tuple[str, str]] = []
        self.formatter = logging.Formatter("%(name)s %(levelname)s %(message)s")
        handle, enabled = logging.Logger.handle, logging.Logger.isEnabledFor

        def capture(logger, record):
            try:
                self.records.append((record.name, self.formatter.format(record)))
            except Exception as exc:  # a record that cannot format is still evidence
                self.records.append((record.name, f"{record.msg!r} {record.args!r} {exc}"))
            if record.levelno >= logger.getEffectiveLevel():  # what would have been emitted
                handle(logger, record)

        def debug_enabled(logger, level):
            return enabled(logger, level) if logger.name.startswith("sqlalchemy") else True

        monkeypatch.setattr(logging.Logger, "handle", capture)
        monkeypatch.setattr(logging.Logger, "isEnabledFor", debug_enabled)

    @property
    def ours(self) -> str:
        return "\n".join(text for name, text in self.records if "batchvec" in name)

    @property
    def others_masked(self) -> str:
        from airflow.sdk._shared.secrets_masker import redact

        return "\n".join(str(redact(text)) for name, text in self.records if "batchvec" not in name)

    def places(self) -> dict[str, str]:
        return {"our logging (DEBUG, raw)": self.ours,
                "third-party logging (DEBUG, as masked by Airflow)": self.others_masked}


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
        conns["opensearch_default"]["extra"] = {
            "auth": "sigv4", "aws_conn_id": "aws_opensearch", "region": ep["region"]}
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


def db_places(dag_id: str, run_id: str, batch_predict_ran: bool = True) -> dict[str, str]:
    from airflow.models.renderedtifields import RenderedTaskInstanceFields
    from airflow.models.trigger import Trigger
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        xcoms = session.scalars(select(XComModel).where(
            XComModel.dag_id == dag_id, XComModel.run_id == run_id)).all()
        rtif = session.scalars(select(RenderedTaskInstanceFields).where(
            RenderedTaskInstanceFields.dag_id == dag_id,
            RenderedTaskInstanceFields.run_id == run_id)).all()
        triggers = session.scalars(select(Trigger)).all()
        places = {f"xcom {x.task_id}[{x.map_index}].{x.key}": json.dumps(x.value, default=str)
                  for x in xcoms}
        places |= {f"rendered fields {r.task_id}[{r.map_index}]": json.dumps(r.rendered_fields, default=str)
                   for r in rtif}
        places |= {f"trigger {t.id}": json.dumps(t.kwargs, default=str) for t in triggers}
    assert any(p.startswith("xcom plan") for p in places), sorted(places)
    if batch_predict_ran:
        assert any(p.startswith("rendered fields batch_predict") for p in places), sorted(places)
    return places


def s3_places(devstack, prefix: str) -> dict[str, str]:
    s3 = devstack.s3.client()
    places = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=devstack.s3.bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            if obj["Key"].endswith((".json", ".jsonl")):
                body = s3.get_object(Bucket=devstack.s3.bucket, Key=obj["Key"])["Body"].read()
                places[f"s3 {obj['Key']}"] = body.decode(errors="replace")
    return places


def log_file_places() -> dict[str, str]:
    import os

    logs = Path(os.environ["AIRFLOW_HOME"]) / "logs"
    return {f"log file {p}": p.read_text(errors="replace")
            for p in logs.rglob("*") if p.is_file()} if logs.exists() else {}


@pytest.mark.parametrize("auth", ["basic", "sigv4"])
def test_a_run_leaks_no_credential_anywhere(dag_with, airflow_env, capture_logs, capfd, auth, tmp_path):
    devstack = airflow_env
    ep = devstack.endpoints
    dag = dag_with(auth=auth)
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps({"id": f"s-{i}", "text": f"secure text {i}"}) + "\n"
                              for i in range(6)) + '{"id": "bad", "text": ""}\n')
    when = datetime(2026, 7, 1 if auth == "basic" else 2, tzinfo=UTC)
    dagrun = dag.test(run_after=when, logical_date=when,
                      run_conf={"input_uri": str(source), "index_name": f"sec-{auth}",
                                "max_reject_ratio": 0.5})
    out, err = capfd.readouterr()
    assert dagrun.state == "success", out[-3000:] + err[-3000:]

    from batchvec import naming

    key = naming.run_key(dag.dag_id, dagrun.run_id)
    places = {**capture_logs.places(), "stdout": out, "stderr": err}
    places |= log_file_places() | db_places(dag.dag_id, dagrun.run_id)
    places |= s3_places(devstack, f"runs/{key}/")
    assert f"s3 runs/{key}/report.json" in places and f"s3 runs/{key}/manifest.json" in places
    import requests

    connectors = requests.post(ep["opensearch"] + "/_plugins/_ml/connectors/_search",
                               json={"query": {"match_all": {}}, "size": 100}, timeout=30,
                               auth=(ep["opensearch_user"], ep["opensearch_password"])).json()
    for hit in connectors["hits"]["hits"]:
        got = requests.get(ep["opensearch"] + f"/_plugins/_ml/connectors/{hit['_id']}", timeout=30,
                           auth=(ep["opensearch_user"], ep["opensearch_password"])).json()
        places[f"connector {hit['_id']}"] = json.dumps(got)
    secret_needles = needles({"aws secret key": ep["aws_secret_access_key"],
                              "opensearch password": ep["opensearch_password"],
                              "session token": SESSION_TOKEN}, user=ep["opensearch_user"])
    found = leaks(places, secret_needles)
    assert not found, found
    # The grep looked where it should: the run's own traces are in what was captured.
    assert key in capture_logs.ours and key in out
    if auth == "sigv4":  # and the token really travelled, signed, on every OpenSearch call
        from batchvec.opensearch_hook import OpenSearchHook

        sent = []
        hook = OpenSearchHook("opensearch_default")
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
    dagrun = dag.test(run_after=when, logical_date=when,
                      run_conf={"input_uri": str(source), "index_name": "sec-fail"})
    out, err = capfd.readouterr()
    assert dagrun.state == "failed"
    assert "401" in out + capture_logs.ours  # it failed where it should: OpenSearch said no
    places = {**capture_logs.places(), "stdout": out, "stderr": err}
    places |= log_file_places() | db_places(dag.dag_id, dagrun.run_id, batch_predict_ran=False)
    found = leaks(places, needles({"aws secret key": ep["aws_secret_access_key"],
                                   "opensearch password": ep["opensearch_password"],
                                   "wrong password": WRONG_PASSWORD}, user=ep["opensearch_user"]))
    assert not found, found


# -- exception paths, one client at a time --------------------------------------------------

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
    from batchvec.opensearch_hook import OpenSearchError, OpenSearchHook

    ep = airflow_env.endpoints
    host, port = ep["opensearch"].rsplit(":", 1)
    _set_conn(monkeypatch, "aws_bad", _bad_aws(ep))
    _set_conn(monkeypatch, "os_bad_sig", {
        "conn_type": "generic", "host": host.split("://")[1], "port": int(port), "schema": "http",
        "extra": {"auth": "sigv4", "aws_conn_id": "aws_bad", "region": ep["region"]}})
    with pytest.raises(OpenSearchError) as err:
        OpenSearchHook("os_bad_sig", max_retries=0).count("anything")
    assert err.value.status == 403 and "signature" in str(err.value)
    assert "Canonical String" in str(err.value)  # the diagnosis stays, only the token goes
    found = leaks({"exception": str(err.value), "reason": err.value.reason,
                   **capture_logs.places()}, _secret_needles(ep))
    assert not found, found


def test_sagemaker_errors_while_polling_or_cancelling_do_not_echo_the_session_token(
        airflow_env, monkeypatch, capture_logs):
    from batchvec.opensearch_hook import OpenSearchHook
    from batchvec.operators import BatchPredictOperator
    from batchvec.triggers import cancel_job, poll_job

    ep = airflow_env.endpoints
    _set_conn(monkeypatch, "aws_bad", _bad_aws(ep))
    with pytest.raises(ConnectionError) as err:
        poll_job("opensearch_default", "aws_bad", None, "no-such-job")
    assert "InvalidSignatureException" in str(err.value)
    cancel_job("opensearch_default", "aws_bad", "no-such-job", None)  # logs, never raises
    op = BatchPredictOperator(task_id="bp", model_id="m1", run_key="k", input_s3_uri="s3://b/i/",
                              output_s3_uri="s3://b/o/", aws_conn_id="aws_bad")
    assert op._existing(OpenSearchHook("opensearch_default"), "no-such-job") is None  # logged
    logged = capture_logs.ours
    assert "could not cancel job no-such-job" in logged and "DescribeTransformJob" in logged
    # botocore's own DEBUG record of the signed request was seen, and the masker hid the token
    assert "x-amz-security-token:***" in capture_logs.others_masked
    found = leaks({"exception": str(err.value), **capture_logs.places()}, _secret_needles(ep))
    assert not found, found


def test_unreachable_endpoint_errors_carry_no_password(airflow_env, monkeypatch, capture_logs):
    from batchvec.opensearch_hook import OpenSearchError, OpenSearchHook
    from devstack.launcher import free_port

    ep = airflow_env.endpoints
    password = ep["opensearch_password"]
    closed = free_port()
    # userinfo in the host as well as in login/password: neither may surface
    _set_conn(monkeypatch, "os_down", {
        "conn_type": "generic", "host": f"http://admin:{password}@127.0.0.1", "port": closed,
        "login": "admin", "password": password, "extra": {"auth": "basic"}})
    with pytest.raises(OpenSearchError) as err:
        OpenSearchHook("os_down", max_retries=1).count("anything")
    assert err.value.type == "connection_error" and str(closed) in str(err.value)
    found = leaks({"exception": str(err.value), **capture_logs.places()},
                  _secret_needles(ep))
    assert not found, found


def test_credentials_the_sigv4_signer_fetches_itself_are_masked_in_task_logs():
    """An assumed role or instance profile hands botocore a secret and token Airflow never
    saw in a connection; the signer registers them with the masker as it picks them up."""
    import threading

    import botocore.session
    import requests
    from airflow.sdk._shared.secrets_masker import redact

    from batchvec.opensearch_hook import _AwsAuth

    secret, token = "fetched-secret-" + secrets.token_hex(8), "FetchedToken" + secrets.token_hex(8)
    session = botocore.session.Session()
    session.set_credentials("AKIDFETCHED", secret, token)
    auth = _AwsAuth.__new__(_AwsAuth)  # as __init__ leaves it, minus the Airflow connection
    auth._session, auth._region, auth._service = session, "us-east-1", "es"
    auth._lock, auth._auth, auth._frozen = threading.Lock(), None, None
    assert token in redact(f"DEBUG x-amz-security-token:{token}")  # not known yet
    request = auth(requests.Request("GET", "http://127.0.0.1:9/_count").prepare())
    assert request.headers["x-amz-security-token"] == token
    masked = redact(f"DEBUG x-amz-security-token:{token} key {secret}")
    assert token not in masked and secret not in masked
