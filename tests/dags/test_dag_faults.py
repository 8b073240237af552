"""The whole DAG under injected faults: every record still accounted for, no document twice,
no SageMaker job or ML Commons task left running that nobody waits for.

Faults go through the devstack's switches (devstack/faults.py): SageMaker's own, the
HTTPS front's before the real OpenSearch node (`http` rules, `bulk_item_429`), and the node's
real refusals (ML Commons' batch task limit). Each test ends by reading the run's report from
S3 and checking the index, SageMaker and ML Commons themselves.
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime

import pytest

from devstack import faults, launcher
from tests.helpers import batch_task_limit
from tests.helpers.dag_helpers import (
    docs,
    load_dag,
    os_get,
    reports,
    run,
    transform_jobs,
    write_jsonl,
)

pytestmark = [pytest.mark.devstack, pytest.mark.airflow,
              pytest.mark.usefixtures("no_faults")]

LIVE_JOB_STATES = {"InProgress", "Stopping"}


def jobs_for_run_key(devstack, run_key: str) -> dict[str, str]:
    return {j["TransformJobName"]: j["TransformJobStatus"] for j in transform_jobs(devstack)
            if j["TransformJobName"] == run_key or j["TransformJobName"].startswith(run_key + "-r")}


def assert_balanced(rep: dict, records_in: int) -> dict:
    t = rep["totals"]
    assert rep["balanced"], rep
    assert t["records_in"] == records_in
    assert t["created"] + t["updated"] + t["rejected_total"] + t["failed_total"] == records_in
    return t


def live_jobs(devstack) -> list[str]:
    return [j["TransformJobName"] for j in transform_jobs(devstack)
            if j["TransformJobStatus"] in LIVE_JOB_STATES]


def assert_nothing_left_running(devstack) -> None:
    """No SageMaker job running (a Stopping one is given a moment to stop) and no ML Commons
    batch task live once refreshed."""
    deadline = time.monotonic() + 20
    while live_jobs(devstack) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not live_jobs(devstack)
    assert not batch_task_limit.live_tasks(devstack)


def test_transient_faults_everywhere_still_index_every_record_once(dag, airflow_env, tmp_path,
                                                                    capfd, caplog):
    """Throttled submits (SageMaker's ThrottlingException, passed back by ML Commons), a share
    of bulk items answered 429, 5xx on bulk requests, and connections reset before and after
    the node did the work (the front's faults)."""
    devstack = airflow_env
    faults.set_faults(
        devstack.state_dir,
        sagemaker_throttle={"count": 2},
        bulk_item_429={"count": 3, "ratio": 0.3},
        http=[{"service": "opensearch", "path_regex": "_bulk$", "status": 503, "count": 2},
              {"service": "opensearch", "path_regex": "_bulk$", "status": 500, "count": 1},
              {"service": "opensearch", "path_regex": "_bulk$", "action": "reset", "count": 1},
              {"service": "opensearch", "path_regex": "_bulk$", "action": "reset_after", "count": 2}],
    )
    source = write_jsonl(tmp_path / "in.jsonl", docs("tf", 120))
    dagrun = run(dag, datetime(2026, 6, 1, tzinfo=UTC),
                 {"input_uri": str(source), "index_name": "faults-transient", "shards": 3})
    assert dagrun.state == "success"
    left = faults.current(devstack.state_dir)
    assert left["sagemaker_throttle"]["count"] == 0
    assert "_batch_predict throttled (Error from remote service: The request was denied due to " \
           "remote server throttling" in logged(capfd, caplog)
    assert left["bulk_item_429"]["count"] == 0
    assert all(rule["count"] == 0 for rule in left["http"]), left["http"]  # every fault fired
    (rep,) = reports(devstack, "faults-transient")
    t = assert_balanced(rep, 120)
    assert t["failed_total"] == 0
    assert t["updated"] > 0  # the batches reset after the server wrote them came back as updates
    # A reset after the server wrote a batch makes its retry an update, never a second doc.
    assert os_get(devstack, "/faults-transient/_count")["count"] == 120
    jobs = jobs_for_run_key(devstack, rep["run_key"])
    assert jobs == {rep["run_key"]: "Completed"}  # throttled submits made no extra job
    assert_nothing_left_running(devstack)


@pytest.fixture
def dag_without_retries(airflow_env, monkeypatch):
    """The DAG parsed with BATCHVEC_RETRIES=0, for faults whose first failure is the answer."""
    monkeypatch.setenv("BATCHVEC_RETRIES", "0")
    return load_dag()


def logged(capfd, caplog) -> str:
    """Everything the run logged: dag.test() prints task logs (tracebacks included) to the
    process's stdout/stderr, our library logs through logging."""
    out, err = capfd.readouterr()
    return out + err + caplog.text


def task_states(dagrun) -> dict[tuple[str, int], str]:
    return {(ti.task_id, ti.map_index): str(ti.state) for ti in dagrun.get_task_instances()}


def test_failed_job_fails_that_try_with_its_reason_and_the_retry_runs_a_new_job(
        dag, airflow_env, tmp_path, capfd, caplog):
    devstack = airflow_env
    faults.set_faults(devstack.state_dir, fail_job={"count": 1, "reason": "ClientError: model OOM"})
    source = write_jsonl(tmp_path / "in.jsonl", docs("fj", 30))
    dagrun = run(dag, datetime(2026, 6, 2, tzinfo=UTC),
                 {"input_uri": str(source), "index_name": "faults-failed-job"})
    assert dagrun.state == "success"
    assert "ClientError: model OOM" in logged(capfd, caplog)  # the first try failed with the job's reason
    (rep,) = reports(devstack, "faults-failed-job")
    assert_balanced(rep, 30)
    key = rep["run_key"]
    assert jobs_for_run_key(devstack, key) == {key: "Failed", f"{key}-r2": "Completed"}
    assert rep["transform_job_name"] == f"{key}-r2"
    assert os_get(devstack, "/faults-failed-job/_count")["count"] == 30
    assert_nothing_left_running(devstack)


def test_stalled_job_is_cancelled_at_wait_timeout_and_the_run_fails_accounted(
        dag_without_retries, airflow_env, tmp_path, capfd, caplog):
    devstack = airflow_env
    faults.set_faults(devstack.state_dir, stall_job={"count": 1})
    source = write_jsonl(tmp_path / "in.jsonl", docs("st", 10))
    dagrun = run(dag_without_retries, datetime(2026, 6, 3, tzinfo=UTC),
                 {"input_uri": str(source), "index_name": "faults-stall", "wait_timeout": 3})
    assert dagrun.state == "failed"
    assert task_states(dagrun)[("batch_predict", 0)] == "failed"
    text = logged(capfd, caplog)
    assert "(SageMaker InProgress)" in text and "past the wait_timeout: cancelled it" in text
    (rep,) = reports(devstack, "faults-stall")  # the report is written even so
    t = assert_balanced(rep, 10)
    assert t["failed"] == {"batch_job_failed": 10}
    status = jobs_for_run_key(devstack, rep["run_key"])
    assert set(status.values()) <= {"Stopped", "Stopping"}, status
    assert_nothing_left_running(devstack)  # nothing left running that nobody waits for
    assert jobs_for_run_key(devstack, rep["run_key"]) == {rep["run_key"]: "Stopped"}


def test_missing_output_fails_that_shard_by_name_and_the_others_index(
        dag_without_retries, airflow_env, tmp_path, capfd, caplog):
    devstack = airflow_env
    faults.set_faults(devstack.state_dir, drop_output={"count": 1})
    source = write_jsonl(tmp_path / "in.jsonl", docs("do", 60))
    dagrun = run(dag_without_retries, datetime(2026, 6, 4, tzinfo=UTC),
                 {"input_uri": str(source), "index_name": "faults-drop", "shards": 3})
    assert dagrun.state == "failed"
    states = task_states(dagrun)
    shard_states = sorted(v for (task, _), v in states.items() if task == "index_shard")
    assert shard_states == ["failed", "success", "success"]
    assert states[("report", -1)] == "failed" and states[("restore_index", -1)] == "success"
    (rep,) = reports(devstack, "faults-drop")
    t = assert_balanced(rep, 60)
    (lost,) = [r for r in rep["shards"] if r["failed"]]
    assert lost["failed"] == {"output_missing": lost["records_in"]}
    text = logged(capfd, caplog)
    assert f"ShardFailed: shard {lost['shard']}: output s3://" in text and "is missing" in text
    assert t["created"] == 60 - lost["records_in"]
    assert os_get(devstack, f"/{rep['physical_index']}/_count")["count"] == 60 - lost["records_in"]
    assert not rep["alias_moved"]  # an incomplete build is not put behind the alias
    assert f"{lost['records_in']} records failed: " in text  # after the report
    assert_nothing_left_running(devstack)


def test_batch_task_limit_429_waits_for_a_free_slot(dag, airflow_env, tmp_path, capfd, caplog,
                                                    monkeypatch):
    """ML Commons' real refusal past plugins.ml_commons.max_batch_inference_tasks (429): the
    submit backs off until another run's task has ended, then runs once. The slot is freed
    when the first refusal comes back, not on a timer (see tests/batch_task_limit.py)."""
    devstack = airflow_env
    with batch_task_limit.limited_to(devstack, free_slots=1):
        blocker = batch_task_limit.hold_a_slot(devstack, blocker_model(devstack))
        refusals = batch_task_limit.free_on_first_refusal(monkeypatch, devstack, blocker)
        source = write_jsonl(tmp_path / "in.jsonl", docs("tl", 20))
        dagrun = run(dag, datetime(2026, 6, 5, tzinfo=UTC),
                     {"input_uri": str(source), "index_name": "faults-task-limit"})
    assert dagrun.state == "success"
    assert len(refusals) == 1 and refusals[0].startswith(
        "Exceeded maximum limit for BATCH_PREDICTION tasks"), refusals
    assert "_batch_predict throttled (Exceeded maximum limit for BATCH_PREDICTION tasks" \
           in logged(capfd, caplog)
    (rep,) = reports(devstack, "faults-task-limit")
    assert_balanced(rep, 20)
    assert jobs_for_run_key(devstack, rep["run_key"]) == {rep["run_key"]: "Completed"}
    assert batch_task_limit.task_state(devstack, blocker) == "COMPLETED"
    assert_nothing_left_running(devstack)


def blocker_model(devstack) -> str:
    """A model of another pipeline (the devstack's SageMaker model), for the blocking task."""
    from batchvec.hooks.opensearch import OpenSearchDomainHook
    from batchvec.model import connectors

    ep = devstack.endpoints
    spec = connectors.ModelSpec(
        role_arn="arn:aws:iam::000000000000:role/batchvec-sagemaker", region=ep["region"],
        model_name="minilm-embedder", endpoint_name="devstack-minilm",
        sagemaker_api_url=ep["sagemaker"], sagemaker_runtime_url=ep["sagemaker_runtime"])
    return connectors.ensure_model(OpenSearchDomainHook(), spec,
                                   connectors.aws_connection_keys("aws_default"))["model_id"]


def test_devstack_restart_in_the_middle_of_the_job(dag, airflow_env, tmp_path, capfd, caplog):
    """SageMaker and OpenSearch/ML Commons go down and come back while the job runs: the
    trigger keeps polling through the outage and the run completes with one job."""
    devstack = airflow_env
    source = write_jsonl(tmp_path / "in.jsonl", docs("rs", 400))
    restarted = threading.Event()

    def restart_when_the_job_runs():
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            running = [j for j in transform_jobs(devstack) if j["TransformJobStatus"] == "InProgress"]
            if running:
                launcher.down(devstack.state_dir, services=("opensearch", "sagemaker"))
                launcher.up(devstack.state_dir, services=("sagemaker", "opensearch"))
                restarted.set()
                break
            time.sleep(0.2)
        faults.unset(devstack.state_dir, "hold_job")  # the job goes on after the restart

    faults.set_faults(devstack.state_dir, hold_job={"count": 1})  # held InProgress: no race
    watcher = threading.Thread(target=restart_when_the_job_runs, daemon=True)
    watcher.start()
    dagrun = run(dag, datetime(2026, 6, 6, tzinfo=UTC),
                 {"input_uri": str(source), "index_name": "faults-restart", "shards": 2})
    watcher.join(timeout=120)
    assert restarted.is_set(), "the job finished before the restart could happen"
    assert dagrun.state == "success"
    # The trigger saw the outage and polled through it (the front answers 502 while the node
    # is down; right after its start ML Commons may answer 500 "Failed to get data object
    # from index .plugins-ml-task").
    assert "ML Commons could not refresh task" in logged(capfd, caplog)
    (rep,) = reports(devstack, "faults-restart")
    assert_balanced(rep, 400)
    assert jobs_for_run_key(devstack, rep["run_key"]) == {rep["run_key"]: "Completed"}
    assert os_get(devstack, "/faults-restart/_count")["count"] == 400
    assert_nothing_left_running(devstack)
