"""Temporary AWS credentials that expire during a long wait are refreshed, not fatal.

The AWS connection assumes a role through the devstack's STS, which hands out credentials
lasting seconds (the `sts_lifetime` fault); the devstack SageMaker refuses them once expired,
as AWS does. A batch job that outlives many generations of them must still be watched to the
end: by the pipeline (SageMaker side), and by ML Commons, which signs its own task refreshes
with the keys on the model's connector and never renews them (the trigger puts fresh ones).
"""

from __future__ import annotations

import json
import threading
import time

import boto3
import pytest
import requests
from botocore.exceptions import ClientError

from batchvec.hooks import mlcommons
from batchvec.hooks.opensearch import OpenSearchDomainHook
from batchvec.model import connectors
from devstack import faults
from tests.helpers.batch_job_helpers import deferred_event, jobs_named, key, operator
from tests.helpers.batch_task_limit import task_state


@pytest.fixture(scope="module")
def model_id(airflow_env):
    """A model of these tests' own (a tag makes its definition differ): they put temporary
    keys on it, and a session token, once stored, stays in a model's credential (a model
    update is a partial document update), so a model other tests share must never get one."""
    from batchvec.hooks.opensearch import OpenSearchDomainHook
    from batchvec.model import connectors
    from tests.helpers.contract_helpers import devstack_spec

    spec = devstack_spec(airflow_env.endpoints,
                         tags=({"Key": "batchvec-test", "Value": "expiring-credentials"},))
    return connectors.ensure_model(OpenSearchDomainHook(), spec,
                                   connectors.aws_connection_keys("aws_default"))["model_id"]
pytestmark = [pytest.mark.devstack, pytest.mark.airflow]

ROLE = "arn:aws:iam::000000000000:role/batchvec-airflow"
# Seconds each assumed-role key lives (sts_lifetime). Below botocore's 15-minute advisory
# window, so the connection assumes the role again on every use and each poll has brand-new
# keys; long enough that keys never expire between being put on the model and ML Commons
# signing with them (under a second, seconds on a loaded machine).
LIFETIME = 8
REFRESH_FAILED = "ML Commons could not refresh task"
EXPIRED = "The security token included in the request is expired"


def sts_calls(ep: dict) -> int:
    return requests.get(ep["sagemaker"] + "/_devstack/sts", timeout=10).json()["assume_role_calls"]


def test_the_devstack_refuses_expired_temporary_credentials(airflow_env):
    ep = airflow_env.endpoints
    sts = boto3.client("sts", endpoint_url=ep["sagemaker"], region_name=ep["region"],
                       aws_access_key_id=ep["aws_access_key_id"],
                       aws_secret_access_key=ep["aws_secret_access_key"])

    def client(creds, token=None):
        return boto3.client("sagemaker", endpoint_url=ep["sagemaker"], region_name=ep["region"],
                            aws_access_key_id=creds["AccessKeyId"],
                            aws_secret_access_key=creds["SecretAccessKey"],
                            aws_session_token=token or creds["SessionToken"])

    def assume():
        return sts.assume_role(RoleArn=ROLE, RoleSessionName="expiry-check",
                               DurationSeconds=900)["Credentials"]

    fresh = assume()  # 900 s: good
    client(fresh).list_transform_jobs(MaxResults=1)
    faults.set_faults(airflow_env.state_dir, sts_lifetime={"count": 1, "seconds": 0})
    expired = assume()  # expired as soon as issued: no waiting for the clock
    with pytest.raises(ClientError, match="ExpiredTokenException"):
        client(expired).list_transform_jobs(MaxResults=1)
    assume()  # newer keys do not make the expired ones unknown: still "expired", as on AWS
    with pytest.raises(ClientError, match="ExpiredTokenException"):
        client(expired).list_transform_jobs(MaxResults=1)
    with pytest.raises(ClientError, match="UnrecognizedClientException"):
        client(fresh, token="not-the-token").list_transform_jobs(MaxResults=1)


def expiring_connection(devstack, monkeypatch) -> str:
    """An AWS connection that assumes ROLE through the devstack's STS."""
    from devstack_connections import connections  # scripts/ is on sys.path once airflow_env ran

    ep = devstack.endpoints
    conn = connections(ep)["aws_default"]
    conn["extra"] = {**conn["extra"], "role_arn": ROLE,
                     "service_config": {**conn["extra"]["service_config"],
                                        "sts": {"endpoint_url": ep["sagemaker"]}}}
    monkeypatch.setenv("AIRFLOW_CONN_AWS_EXPIRING", json.dumps(conn))
    return "aws_expiring"


class Recorder:
    """Records, as they happen and in order, the keys put on the model ("push") and each ML
    Commons task refresh (its state, or "error: ..."): what the holds below wait on."""

    def __init__(self, monkeypatch):
        self.events: list[str] = []
        self.pushed: list[dict] = []
        real_put, real_get = mlcommons.update_model_credential, mlcommons.get_task

        def put(hook, model_id, credential):
            real_put(hook, model_id, credential)
            self.pushed.append(credential)
            self.events.append("push")

        def get(hook, task_id):
            try:
                task = real_get(hook, task_id)
            except Exception as exc:
                self.events.append(f"error: {exc}")
                raise
            self.events.append(task.get("state"))
            return task

        monkeypatch.setattr(mlcommons, "update_model_credential", put)
        monkeypatch.setattr(mlcommons, "get_task", get)

    @property
    def refreshes(self) -> list[str]:
        return [e for e in self.events if e != "push"]

    def errors(self) -> list[str]:
        return [e for e in self.events if e.startswith("error: ")]


def refused(ep: dict, keys: dict) -> bool:
    """Whether the devstack SageMaker refuses these keys now (as expired: nothing else)."""
    sm = boto3.client("sagemaker", endpoint_url=ep["sagemaker"], region_name=ep["region"],
                      aws_access_key_id=keys["access_key"], aws_secret_access_key=keys["secret_key"],
                      aws_session_token=keys["session_token"])
    try:
        sm.list_transform_jobs(MaxResults=1)
        return False
    except ClientError as exc:
        assert exc.response["Error"]["Code"] == "ExpiredTokenException", exc.response["Error"]
        return True


def hold_until(devstack, condition, guard_s: float = 300) -> tuple[threading.Thread, threading.Event]:
    """Let the held job go once `condition()` holds (checked every 0.2 s; the guard only
    stops a hung test, which then fails on the event)."""
    met = threading.Event()

    def watch():
        deadline = time.monotonic() + guard_s
        while time.monotonic() < deadline:
            if condition():
                met.set()
                break
            time.sleep(0.2)
        faults.unset(devstack.state_dir, "hold_job")

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    return watcher, met


def expiring_job(devstack, model_id, monkeypatch):
    """(operator, run key): a job whose AWS connection's keys live LIFETIME seconds, held."""
    run_key = key()
    op = operator(devstack, run_key, model_id, aws_conn_id=expiring_connection(devstack, monkeypatch))
    faults.set_faults(devstack.state_dir, sts_lifetime={"count": -1, "seconds": LIFETIME},
                      hold_job={"count": 1})
    return op, run_key


def test_credentials_expiring_during_a_long_wait_are_refreshed(airflow_env, model_id, monkeypatch):
    """SageMaker's side: the trigger reads the job with the connection's own credentials,
    assumed again as they expire."""
    devstack = airflow_env
    ep = devstack.endpoints
    op, run_key = expiring_job(devstack, model_id, monkeypatch)
    before = sts_calls(ep)
    # Held until the connection has assumed the role again at least twice, then let go.
    watcher, met = hold_until(devstack, lambda: sts_calls(ep) - before >= 3)
    try:
        event = deferred_event(op)
    finally:
        watcher.join(timeout=310)
        faults.clear(devstack.state_dir)
    assert met.is_set(), "the wait ended before the credentials were refreshed twice"
    assert event["status"] == "success", event
    assert sts_calls(ep) - before >= 3
    assert op.execute_complete({}, event)["job_name"] == run_key
    assert len(jobs_named(devstack, run_key)) == 1


def test_ml_commons_refreshes_with_the_fresh_keys_the_trigger_puts_on_the_model(
        airflow_env, model_id, monkeypatch, caplog, capfd):
    """ML Commons' side: held until the keys first put on the model have expired and the
    trigger has put fresh ones twice since; ML Commons' refresh never fails meanwhile."""
    devstack = airflow_env
    ep = devstack.endpoints
    record = Recorder(monkeypatch)
    op, run_key = expiring_job(devstack, model_id, monkeypatch)
    outlived = []  # how many keys had been put when the first ones were refused

    def first_keys_expired_then_two_more_pushes():
        if not outlived and record.pushed and refused(ep, record.pushed[0]):
            outlived.append(len(record.pushed))
        return bool(outlived) and len(record.pushed) >= outlived[0] + 2

    watcher, met = hold_until(devstack, first_keys_expired_then_two_more_pushes)
    try:
        with caplog.at_level("WARNING", logger="batchvec.batch"):
            event = deferred_event(op)
    finally:
        watcher.join(timeout=310)
        faults.clear(devstack.state_dir)
    pushes = len(record.pushed)
    assert met.is_set(), f"let go before two pushes after the first keys expired ({pushes}, {outlived})"
    assert event["status"] == "success", event
    assert not [r for r in caplog.records if REFRESH_FAILED in r.getMessage()]
    assert record.errors() == []  # ML Commons' own refresh never failed during the wait
    assert set(record.refreshes) <= {"RUNNING", "COMPLETED"}, set(record.refreshes)  # no UNREACHABLE
    out = capfd.readouterr().out
    assert out.count(f"job {run_key}: put fresh AWS keys on model") >= 2
    assert "could not put fresh AWS keys" not in out
    # The task ended COMPLETED in ML Commons itself, refreshed with the pipeline's keys.
    connectors.KeyRefresher("aws_expiring", "opensearch_default", model_id).push_if_changed()
    task = mlcommons.get_task(OpenSearchDomainHook(), event["task_id"])
    assert task["state"] == "COMPLETED" and task["remote_job"]["TransformJobStatus"] == "Completed"
    assert len(jobs_named(devstack, run_key)) == 1


def test_without_fresh_keys_ml_commons_refresh_fails_once_they_expire(
        airflow_env, model_id, monkeypatch, caplog, capfd):
    """The negative control: the same wait with the trigger told not to put keys. ML Commons'
    refresh of the task fails with the expired token; the pipeline still sees the job end,
    through SageMaker (read with the connection's own, re-assumed credentials)."""
    devstack = airflow_env
    record = Recorder(monkeypatch)
    op, run_key = expiring_job(devstack, model_id, monkeypatch)
    watcher, met = hold_until(devstack, lambda: any(EXPIRED in e for e in record.errors()))
    try:
        with caplog.at_level("WARNING", logger="batchvec.batch"):
            event = deferred_event(op, refresh_keys=False)
        assert met.is_set(), f"ML Commons never failed to refresh: {record.refreshes[-5:]}"
        assert event["status"] == "success", event  # SageMaker's own status carried the wait
        last_push = max(i for i, e in enumerate(record.events) if e == "push")
        assert last_push < record.events.index(record.refreshes[0])  # none after the submit
        assert "put fresh AWS keys" not in capfd.readouterr().out
        warnings = [r.getMessage() for r in caplog.records if REFRESH_FAILED in r.getMessage()]
        assert warnings and all(EXPIRED in w for w in warnings), warnings
        resp = requests.get(f"{devstack.endpoints['opensearch_node']}/_plugins/_ml/tasks/"
                            f"{event['task_id']}", timeout=30)  # still: the keys are expired
        assert resp.status_code == 400 and "ExpiredTokenException" in resp.text, resp.text
    finally:
        watcher.join(timeout=310)
        faults.clear(devstack.state_dir)
        # Lasting keys back on the shared model: then ML Commons can refresh the task again.
        mlcommons.update_model_credential(OpenSearchDomainHook(), model_id,
                                          connectors.aws_connection_keys("aws_default"))
    assert task_state(devstack, event["task_id"]) == "COMPLETED"
    assert len(jobs_named(devstack, run_key)) == 1
