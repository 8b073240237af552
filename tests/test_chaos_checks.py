"""The chaos harness's pure parts: the accounting checks, kill plans, process titles, and the
watcher's timing (with fake processes and a fake clock)."""

from __future__ import annotations

import random

import pytest

from chaos import checks, kills, procs

IDS = {f"d{i}" for i in range(10)}
REPORT = {"balanced": True, "extra": {"smoke_query": {"ok": True}},
          "totals": {"records_in": 12, "created": 7, "updated": 3, "rejected_total": 2,
                     "failed_total": 0, "failed": {}}}


def job(name: str, status: str) -> dict:
    return {"TransformJobName": name, "TransformJobStatus": status}


# -- index -------------------------------------------------------------------------------------

def test_index_with_every_expected_document_once_is_clean():
    assert checks.check_index(IDS, sorted(IDS), 10).clean


def test_missing_documents_are_lost():
    got = checks.check_index(IDS, sorted(IDS - {"d1", "d2"}), 8)
    assert (got.lost, got.duplicated) == (2, 0)


def test_documents_beyond_the_expected_ones_are_duplicated():
    # _count above the distinct ids found (the same record stored twice) ...
    assert checks.check_index(IDS, sorted(IDS), 12).duplicated == 2
    # ... or ids that are not in the input (a record indexed under another id).
    got = checks.check_index(IDS, sorted(IDS) + ["d1-copy"], 11)
    assert got.duplicated == 1 and "unexpected ids" in got.problems[0]
    assert checks.check_index(IDS, sorted(IDS) + ["d3"], 10).duplicated == 1


# -- report ------------------------------------------------------------------------------------

def test_balanced_report_counting_each_record_once_is_clean():
    assert checks.check_report(REPORT, records_in=12, accepted=10, rejected=2).clean


def test_report_counting_records_twice_is_duplicated():
    rep = {**REPORT, "totals": {**REPORT["totals"], "updated": 5}}
    got = checks.check_report(rep, records_in=12, accepted=10, rejected=2)
    assert got.duplicated == 2 and got.problems


def test_report_with_failed_records_or_unbalanced_or_missing_is_not_clean():
    failed = {**REPORT, "totals": {**REPORT["totals"], "created": 5, "failed_total": 2,
                                   "failed": {"indexing_failed": 2}}}
    assert checks.check_report(failed, records_in=12, accepted=10, rejected=2).lost == 2
    unbalanced = {**REPORT, "balanced": False}
    assert not checks.check_report(unbalanced, records_in=12, accepted=10, rejected=2).clean
    short = {**REPORT, "totals": {**REPORT["totals"], "created": 6}}
    got = checks.check_report(short, records_in=12, accepted=10, rejected=2)
    assert (got.lost, got.duplicated) == (0, 0) and "expected (12, 10, 2)" in got.problems[0]
    assert checks.check_report(None, records_in=12, accepted=10, rejected=2).problems
    no_smoke = {**REPORT, "extra": {}}
    assert not checks.check_report(no_smoke, records_in=12, accepted=10, rejected=2).clean


# -- transform jobs ----------------------------------------------------------------------------

def test_jobs_of_a_run_are_its_key_and_attempt_suffixes_only():
    jobs = [job("k1", "Completed"), job("k1-r2", "Failed"), job("k10", "Completed"),
            job("k1-rx", "Completed"), job("other", "InProgress")]
    assert [j["TransformJobName"] for j in checks.job_summaries_for_run(jobs, "k1")] == ["k1", "k1-r2"]


def test_one_completed_job_is_clean_and_failed_attempts_do_not_count():
    assert checks.check_jobs([job("k", "Completed")]).clean
    assert checks.check_jobs([job("k", "Failed"), job("k-r2", "Completed")]).clean


def test_a_job_still_running_after_the_run_is_an_orphan():
    got = checks.check_jobs([job("k", "Completed"), job("k-r2", "InProgress")])
    assert (got.orphan_jobs, got.duplicated) == (1, 1)
    assert checks.check_jobs([job("k", "Stopping")]).orphan_jobs == 1


def test_two_jobs_doing_the_same_work_are_duplicated():
    assert checks.check_jobs([job("k", "Completed"), job("k-r2", "Completed")]).duplicated == 1
    assert not checks.check_jobs([]).clean  # no job at all: the run cannot have succeeded


def test_models_and_model_groups_are_one_per_name():
    assert checks.check_unique_names("models", ["a", "b"]).clean
    assert checks.check_unique_names("models", ["a", "a", "a", "b"]).duplicated == 2
    assert checks.check_unique_names("model_groups", ["batchvec", "batchvec"]).duplicated == 1


def test_the_session_checks_models_and_groups_and_each_run_registers_its_own_model(tmp_path):
    """The connector lives inside the model: nothing standalone to count. A run's tag is
    part of the model's definition, so each run creates (and a killed ensure_model retries
    creating) a model of its own."""
    from batchvec import connectors, plan
    from chaos import runner

    assert runner.ML_KINDS == ("models", "model_groups")
    source = tmp_path / "in.jsonl"
    source.write_text("{}\n")
    names = set()
    for i in (1, 2):
        conf = {**runner.run_conf(i, source, f"chaos-{i:03d}", 2),
                "sagemaker_model_name": "minilm-embedder",
                "sagemaker_endpoint_name": "devstack-minilm"}
        p = plan.resolve_plan(conf, dag_id="batch_embeddings", run_id=f"chaos-{i:03d}",
                              ds="2026-01-01", region="us-east-1")
        names.add(connectors.connector_definition(connectors.ModelSpec(**p.model))["name"])
    assert len(names) == 2


# -- the result line ---------------------------------------------------------------------------

def test_result_line_round_trips():
    total = checks.RunCheck(lost=0, duplicated=1, orphan_jobs=2)
    line = checks.result_line(20, total)
    assert line == "runs=20 lost=0 duplicated=1 orphan_jobs=2"
    assert checks.parse_result_line(line) == {"runs": 20, "lost": 0, "duplicated": 1, "orphan_jobs": 2}
    with pytest.raises(ValueError):
        checks.parse_result_line("runs=1 lost=0")


def test_run_checks_add_up():
    a = checks.RunCheck(1, 0, 0, ["x"])
    b = checks.RunCheck(0, 2, 1, ["y"])
    assert a.add(b) == checks.RunCheck(1, 2, 1, ["x", "y"])


# -- kill plans and process titles --------------------------------------------------------------

def test_plans_follow_the_seed_and_cover_the_modes():
    draw = [kills.choose(random.Random(3), None, i) for i in range(1, 4)]
    assert draw == [kills.choose(random.Random(3), None, i) for i in range(1, 4)]
    rng = random.Random(11)
    modes = {kills.choose(rng).mode for _ in range(300)}
    assert modes == set(kills.MODES)


def test_given_modes_are_used_in_turn():
    rng = random.Random(0)
    plans = [kills.choose(rng, ["index_shard_bulk", "task:report"], i) for i in range(1, 4)]
    assert [(p.mode, p.task) for p in plans] == [
        ("index_shard_bulk", "index_shard"), ("task", "report"), ("index_shard_bulk", "index_shard")]
    assert all(0 <= p.u < 1 for p in plans)


def test_process_titles():
    ti = "01a20891-91c5-735a-a39f-ae9b4673a051"
    assert procs.parse_title(f"airflow worker -- {ti}") == ("worker", ti)
    assert procs.parse_title(f"airflow worker -- LocalExecutor: {ti}  ") == ("supervisor", ti)
    assert procs.parse_title(f"airflow supervisor: {ti}") == ("supervisor", ti)
    assert procs.parse_title("airflow worker -- LocalExecutor: <idle>") is None
    assert procs.parse_title("python -m devstack.opensearch") is None


# -- the watcher -------------------------------------------------------------------------------

class FakeProc:
    def __init__(self, pid: int):
        self.pid = pid


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch):
    c = Clock()
    monkeypatch.setattr(kills.time, "monotonic", c)
    return c


def ti(ti_id: str, task: str, state: str = "running", map_index: int = -1, try_number: int = 1):
    return {"id": ti_id, "task_id": task, "state": state, "map_index": map_index,
            "try_number": try_number}


def watcher(plan: kills.KillPlan, killed: list) -> kills.Watcher:
    return kills.Watcher(plan=plan, kill_process=lambda p: killed.append(p.pid) or True,
                         kill_triggerer=lambda: killed.append("triggerer"),
                         estimates=dict(kills.PRIOR_SECONDS), bulk_window=2.0, submit_window=3.0)


def test_bulk_kill_waits_for_bulk_requests_then_lands_inside_the_window(clock):
    killed: list = []
    w = watcher(kills.KillPlan("index_shard_bulk", "index_shard", 0.5), killed)
    tis = {"a": ti("a", "index_shard", map_index=0), "b": ti("b", "stage", "success")}
    workers = {"a": FakeProc(7)}
    assert w.tick(tis, workers, bulk_started=0, submit_in_flight=False) is None
    clock.now += 5
    assert w.tick(tis, workers, bulk_started=3, submit_in_flight=False) is None  # window opens
    clock.now += 0.9
    assert w.tick(tis, workers, bulk_started=5, submit_in_flight=False) is None
    clock.now += 0.2  # 0.5 x 2.0 s
    rec = w.tick(tis, workers, bulk_started=6, submit_in_flight=False)
    assert killed == [7] and rec.target == "index_shard[0]" and rec.try_number == 1
    assert rec.process_key == ("a", 7) and "mid-bulk" in rec.detail


def test_checkpoint_kill_waits_for_the_first_checkpoint_object(clock):
    killed: list = []
    w = watcher(kills.KillPlan("index_shard_checkpoint", "index_shard", 0.7), killed)
    tis = {"a": ti("a", "index_shard", map_index=1)}
    workers = {"a": FakeProc(4)}
    assert w.tick(tis, workers, bulk_started=9, submit_in_flight=False) is None  # none yet
    clock.now += 5
    assert w.tick(tis, workers, bulk_started=9, submit_in_flight=False, checkpoints=1) is None
    rec = w.tick(tis, workers, bulk_started=9, submit_in_flight=False, checkpoints=1)
    assert killed == [4] and rec.target == "index_shard[1]"  # at once, whatever u
    assert "after its first checkpoint" in rec.detail


def test_submit_kill_needs_the_request_in_flight(clock):
    killed: list = []
    w = watcher(kills.KillPlan("batch_predict_submit", "batch_predict", 0.0), killed)
    tis = {"a": ti("a", "batch_predict")}
    assert w.tick(tis, {"a": FakeProc(9)}, bulk_started=0, submit_in_flight=False) is None
    assert w.tick(tis, {"a": FakeProc(9)}, bulk_started=0, submit_in_flight=True) is None
    rec = w.tick(tis, {"a": FakeProc(9)}, bulk_started=0, submit_in_flight=True)
    assert killed == [9] and rec.target == "batch_predict"


def test_resume_kill_only_after_the_deferral(clock):
    killed: list = []
    w = watcher(kills.KillPlan("batch_predict_resume", "batch_predict", 0.0), killed)
    running = {"a": ti("a", "batch_predict")}
    assert w.tick(running, {"a": FakeProc(1)}, bulk_started=0, submit_in_flight=False) is None
    assert w.tick(running, {"a": FakeProc(1)}, bulk_started=0, submit_in_flight=False) is None
    assert killed == []
    w.tick({"a": ti("a", "batch_predict", "deferred")}, {}, bulk_started=0, submit_in_flight=False)
    assert w.tick(running, {"a": FakeProc(2)}, bulk_started=0, submit_in_flight=False) is None
    assert w.tick(running, {"a": FakeProc(2)}, bulk_started=0, submit_in_flight=False)
    assert killed == [2]


def test_a_missed_target_falls_back_to_another_task_process(clock):
    killed: list = []
    w = watcher(kills.KillPlan("task", "stage", 0.99), killed)
    tis = {"s": ti("s", "stage"), "e": ti("e", "ensure_model"), "c": ti("c", "check_outputs")}
    w.tick(tis, {"s": FakeProc(1)}, bulk_started=0, submit_in_flight=False)
    clock.now += 10  # stage ended before the moment
    assert w.tick(tis, {}, bulk_started=0, submit_in_flight=False) is None
    assert w.fallback
    w.tick(tis, {"e": FakeProc(2)}, bulk_started=0, submit_in_flight=False)
    clock.now += 1  # ensure_model ended too: the next one is taken
    assert w.tick(tis, {"c": FakeProc(3)}, bulk_started=0, submit_in_flight=False) is None
    w.tick(tis, {"c": FakeProc(3)}, bulk_started=0, submit_in_flight=False)
    clock.now += 1
    rec = w.tick(tis, {"c": FakeProc(3)}, bulk_started=0, submit_in_flight=False)
    assert killed == [3] and rec.target == "check_outputs" and rec.detail.startswith("missed task:stage")


def test_triggerer_kill_while_deferred(clock):
    killed: list = []
    w = watcher(kills.KillPlan("triggerer", "batch_predict", 0.0), killed)
    deferred = {"a": ti("a", "batch_predict", "deferred")}
    rec = w.tick(deferred, {}, bulk_started=0, submit_in_flight=False)
    assert killed == ["triggerer"] and rec.target == "triggerer" and rec.try_number is None


# -- the CeleryExecutor's kill mode --------------------------------------------------------------

def test_the_worker_mode_is_drawn_only_under_celery():
    rng = random.Random(5)
    assert {kills.choose(rng, executor="celery").mode for _ in range(300)} == {
        *kills.MODES, *kills.CELERY_MODES}
    plan = kills.choose(rng, ["worker"], 1, "celery")
    assert (plan.mode, plan.task) == ("worker", "index_shard")


def test_worker_kill_takes_the_whole_worker_of_a_shard_mid_bulk(clock):
    killed: list = []
    w = watcher(kills.KillPlan("worker", "index_shard", 0.0), killed)
    w.kill_worker = lambda p: killed.append(("worker-of", p.pid)) or "worker-a (6 processes)"
    tis = {"a": ti("a", "index_shard", map_index=2)}
    assert w.tick(tis, {"a": FakeProc(4)}, bulk_started=0, submit_in_flight=False) is None
    assert w.tick(tis, {"a": FakeProc(4)}, bulk_started=2, submit_in_flight=False) is None
    rec = w.tick(tis, {"a": FakeProc(4)}, bulk_started=3, submit_in_flight=False)
    assert killed == [("worker-of", 4)] and rec.target == "index_shard[2]"
    assert "SIGKILL of worker-a (6 processes) mid-bulk" in rec.detail


def test_the_worker_mode_needs_the_celery_executor(capsys):
    from chaos import cli

    with pytest.raises(SystemExit):
        cli.parse_args(["--modes", "worker"])
    assert "--executor celery" in capsys.readouterr().err
    opts, _ = cli.parse_args(["--modes", "worker", "--executor", "celery"])
    assert (opts.modes, opts.executor) == (["worker"], "celery")


def test_processes_in_a_dir_inside_the_stack_are_ours(tmp_path):
    class P:
        def __init__(self, cwd):
            self._cwd = cwd

        def cwd(self):
            return self._cwd

        def environ(self):
            return {}

    root = str(tmp_path / "stack")
    assert procs.ours(P(root), "x", root)
    assert procs.ours(P(f"{root}/workers/worker-a"), "x", root)
    assert not procs.ours(P(f"{root}-other"), "x", root)
