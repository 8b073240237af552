"""Temporary AWS credentials that expire during a long wait are refreshed, not fatal.

The AWS connection assumes a role through the devstack's STS, which hands out credentials
lasting two seconds (the `sts_lifetime` fault); the SageMaker stand-in refuses them once expired, as AWS does. A batch
job that outlives many generations of them must still be watched to the end.
"""

from __future__ import annotations

import json
import threading
import time

import boto3
import pytest
import requests
from botocore.exceptions import ClientError

from devstack import faults
from tests.test_batch_job import deferred_event, jobs_named, key, model_id, operator

__all__ = ["model_id"]  # the fixture, imported for pytest
pytestmark = [pytest.mark.devstack, pytest.mark.airflow]

ROLE = "arn:aws:iam::000000000000:role/batchvec-airflow"


def sts_calls(ep: dict) -> int:
    return requests.get(ep["sagemaker"] + "/_devstack/sts", timeout=10).json()["assume_role_calls"]


def test_the_devstack_refuses_expired_temporary_credentials(airflow_env):
    ep = airflow_env.endpoints
    base = {"region_name": ep["region"], "aws_access_key_id": ep["aws_access_key_id"],
            "aws_secret_access_key": ep["aws_secret_access_key"]}
    faults.set_faults(airflow_env.state_dir, sts_lifetime={"count": 1, "seconds": 1})
    creds = boto3.client("sts", endpoint_url=ep["sagemaker"], **base).assume_role(
        RoleArn=ROLE, RoleSessionName="expiry-check", DurationSeconds=900)["Credentials"]
    temp = boto3.client("sagemaker", endpoint_url=ep["sagemaker"], region_name=ep["region"],
                        aws_access_key_id=creds["AccessKeyId"],
                        aws_secret_access_key=creds["SecretAccessKey"],
                        aws_session_token=creds["SessionToken"])
    temp.list_transform_jobs(MaxResults=1)  # good while fresh
    time.sleep(1.5)
    with pytest.raises(ClientError, match="ExpiredTokenException"):
        temp.list_transform_jobs(MaxResults=1)
    wrong_token = boto3.client("sagemaker", endpoint_url=ep["sagemaker"], region_name=ep["region"],
                               aws_access_key_id=creds["AccessKeyId"],
                               aws_secret_access_key=creds["SecretAccessKey"],
                               aws_session_token="not-the-token")
    with pytest.raises(ClientError, match="UnrecognizedClientException"):
        wrong_token.list_transform_jobs(MaxResults=1)


def test_credentials_expiring_during_a_long_wait_are_refreshed(airflow_env, model_id, monkeypatch):
    from devstack_connections import connections  # scripts/ is on sys.path once airflow_env ran

    devstack = airflow_env
    ep = devstack.endpoints
    conn = connections(ep)["aws_default"]
    conn["extra"] = {**conn["extra"], "role_arn": ROLE,
                     "service_config": {**conn["extra"]["service_config"],
                                        "sts": {"endpoint_url": ep["sagemaker"]}}}
    monkeypatch.setenv("AIRFLOW_CONN_AWS_EXPIRING", json.dumps(conn))
    run_key = key()
    op = operator(devstack, run_key, model_id, aws_conn_id="aws_expiring")
    # The job is held InProgress until the connection has assumed the role again at least
    # twice (credentials refreshed twice), then let go: no race against the clock.
    faults.set_faults(devstack.state_dir, sts_lifetime={"count": -1, "seconds": 2},
                      hold_job={"count": 1})
    before = sts_calls(ep)
    refreshed = threading.Event()

    def release_after_two_refreshes():
        deadline = time.monotonic() + 300  # only a guard against a hung test
        while time.monotonic() < deadline:
            if sts_calls(ep) - before >= 3:  # the first credentials, then two refreshes
                refreshed.set()
                break
            time.sleep(0.2)
        faults.unset(devstack.state_dir, "hold_job")

    releaser = threading.Thread(target=release_after_two_refreshes, daemon=True)
    releaser.start()
    try:
        event = deferred_event(op)
    finally:
        releaser.join(timeout=310)
        faults.clear(devstack.state_dir)
    assert refreshed.is_set(), "the wait ended before the credentials were refreshed twice"
    assert event["status"] == "success", event
    assert sts_calls(ep) - before >= 3
    assert op.execute_complete({}, event)["job_name"] == run_key
    assert len(jobs_named(devstack, run_key)) == 1
