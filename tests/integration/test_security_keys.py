"""The key refresh path leaks no AWS key: assumed-role keys (secret key and session token)
sit in an ML Commons model's connector on the real node, put there at registration, before
the submit and again by the trigger ("put fresh AWS keys") whenever botocore refreshes them.

The AWS connection assumes a role through the devstack's STS, whose keys here last 300 s:
under botocore's 10-minute mandatory refresh, every read of the credentials assumes the role
again, so each poll of the trigger has new keys to put on the model. A real transform job is
held InProgress (hold_job) while ML Commons signs CreateTransformJob, its status refreshes and
the cancel with those keys (the devstack's SageMaker checks each STS key's own token and
expiry), so the keys on the model are the ones really used. Every generation of keys is then
grepped (4 forms each) in our logs (raw) and third-party logs (as masked), the trigger's
events and serialized kwargs, what ML Commons answers and holds (models, the task), and the
node's and the front's logs.
"""

from __future__ import annotations

import asyncio
import json
import time

import pytest

import batchvec.hooks.mlcommons
import batchvec.model.connectors
from devstack import faults
from tests.helpers.dag_helpers import os_session
from tests.helpers.security_helpers import Capture, DevstackLogs, leaks, ml_model_places, needles

pytestmark = [pytest.mark.devstack, pytest.mark.airflow]

ROLE = "arn:aws:iam::000000000000:role/batchvec-sec-refresh"
TRIGGER_PUSHES = 3


@pytest.fixture
def sts_conn(airflow_env, monkeypatch):
    from devstack_connections import connections  # scripts/ is on sys.path once airflow_env ran

    ep = airflow_env.endpoints
    conn = connections(ep)["aws_default"]
    conn["extra"] = {**conn["extra"], "role_arn": ROLE,
                     "service_config": {**conn["extra"]["service_config"],
                                        "sts": {"endpoint_url": ep["sagemaker"]}}}
    monkeypatch.setenv("AIRFLOW_CONN_AWS_SEC_STS", json.dumps(conn))
    faults.set_faults(airflow_env.state_dir, sts_lifetime={"count": -1, "seconds": 300})
    yield "aws_sec_sts"
    faults.unset(airflow_env.state_dir, "sts_lifetime", "hold_job")


async def _trigger_until(trigger, done) -> list:
    """Run the trigger until `done()` holds; the events it fired before that (none expected)."""
    events, agen = [], trigger.run()

    async def consume():
        async for event in agen:
            events.append(event.payload)

    task = asyncio.ensure_future(consume())
    deadline = time.monotonic() + 180  # a hang guard, not a timing assumption
    while not done() and not task.done() and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await agen.aclose()
    return events


def test_the_key_refresh_path_leaks_no_assumed_role_key(airflow_env, sts_conn, monkeypatch):
    from batchvec.batch.job import cancel_job, transform_parameters
    from batchvec.batch.triggers import BatchJobTrigger
    from batchvec.hooks import mlcommons
    from batchvec.hooks.opensearch import OpenSearchDomainHook
    from batchvec.model import connectors

    devstack, ep = airflow_env, airflow_env.endpoints
    issued: list[dict] = []  # every set of keys handed to ML Commons
    keys_of = connectors.keys_of
    monkeypatch.setattr(batchvec.model.connectors, "keys_of", lambda frozen: issued.append(keys_of(frozen)) or issued[-1])
    capture = Capture(monkeypatch)
    devstack_logs = DevstackLogs(devstack)
    s3 = devstack.s3.client()
    prefix = f"sec-refresh/{int(time.time() * 1000)}"
    s3.put_object(Bucket=ep["bucket"], Key=f"{prefix}/input/a.jsonl",
                  Body=b'{"id": "r-1", "text": "refreshed keys"}\n')
    spec = connectors.ModelSpec(
        role_arn="", region=ep["region"], model_name="minilm-embedder",
        endpoint_name="devstack-minilm", sagemaker_api_url=ep["sagemaker"],
        sagemaker_runtime_url=ep["sagemaker_runtime"],
        tags=({"Key": "batchvec-test", "Value": prefix.replace("/", "-")},))  # a model of its own
    hook = OpenSearchDomainHook("opensearch_default")
    model = connectors.ensure_model(hook, spec, connectors.aws_connection_keys(sts_conn))
    assert model["model_created"]
    refresher = connectors.KeyRefresher(sts_conn, "opensearch_default", model["model_id"])
    assert refresher.push_if_changed()  # what the operator does before it submits
    job_name = prefix.replace("/", "-")
    faults.set_faults(devstack.state_dir, hold_job={"count": 1})
    submitted = mlcommons.batch_predict(hook, model["model_id"], transform_parameters(
        job_name, f"s3://{ep['bucket']}/{prefix}/input/", f"s3://{ep['bucket']}/{prefix}/output/"))
    trigger = BatchJobTrigger(
        job_name=job_name, task_id=submitted["task_id"], opensearch_conn_id="opensearch_default",
        aws_conn_id=sts_conn, poll_interval=0.2, deadline=time.time() + 600,
        started_at=time.time(), model_id=model["model_id"], refresh_keys=True)
    before = len(issued)
    events = asyncio.run(_trigger_until(
        trigger, lambda: capture.ours.count("put fresh AWS keys on model") >= TRIGGER_PUSHES))
    assert capture.ours.count("put fresh AWS keys on model") >= TRIGGER_PUSHES, capture.ours[-3000:]
    assert events == [] and len(issued) >= before + TRIGGER_PUSHES
    task = mlcommons.get_task(hook, submitted["task_id"])  # ML Commons signs with the newest keys
    assert task["state"] in ("CREATED", "RUNNING"), task
    cancel_job("opensearch_default", sts_conn, job_name, submitted["task_id"])
    faults.unset(devstack.state_dir, "hold_job")

    secrets = {}
    for n, keys in enumerate(issued):
        assert keys.get("session_token"), "assumed-role keys carry a session token"
        secrets[f"secret key #{n}"] = keys["secret_key"]
        secrets[f"session token #{n}"] = keys["session_token"]
    assert len(set(secrets.values())) == len(secrets)  # every generation is a new secret
    places = {**capture.places(), **devstack_logs.places(),
              "ensure_model result": json.dumps(model), "_batch_predict answer": json.dumps(submitted),
              "ml task (GET)": json.dumps(task), "trigger serialized": json.dumps(trigger.serialize()),
              "trigger events": json.dumps(events)}
    model_places, credentials = ml_model_places(devstack, os_session(devstack))
    places |= model_places
    assert set(credentials[model["model_id"]]["stored"]) == {"access_key", "secret_key", "session_token"}
    found = leaks(places, needles(secrets, user=ep["opensearch_user"]))
    assert not found, found
    # and the masker knows each generation: a task log would hide them all
    from airflow.sdk._shared.secrets_masker import redact

    assert not [label for label, value in secrets.items() if value in str(redact(value))]
