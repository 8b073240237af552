"""The chaos harness's pure parts: the accounting checks, kill plans, process titles, and the
watcher's timing (with fake processes and a fake clock)."""

from __future__ import annotations

import random
from pathlib import Path

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
            job("k1-rx", "Completed"), job("other", "InProgress"), job("k1-j0", "Completed"),
            job("k1-j1-r2", "Completed"), job("k1-jx", "Completed")]
    assert [j["TransformJobName"] for j in checks.job_summaries_for_run(jobs, "k1")] == [
        "k1", "k1-r2", "k1-j0", "k1-j1-r2"]


def test_each_job_group_needs_its_one_completed_job():
    assert checks.check_jobs([job("k-j0", "Completed"), job("k-j1", "Failed"),
                              job("k-j1-r2", "Completed")]).clean
    twice = checks.check_jobs([job("k-j0", "Completed"), job("k-j1", "Completed"),
                               job("k-j1-r2", "Completed")])
    assert twice.duplicated == 1 and "k-j1" in twice.problems[0]
    none = checks.check_jobs([job("k-j0", "Completed"), job("k-j1", "Failed")])
    assert not none.clean and "k-j1" in none.problems[0]


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
    from batchvec.model import connectors
    from batchvec.plan import run_plan
    from chaos import runner

    assert runner.ML_KINDS == ("models", "model_groups")
    source = tmp_path / "in.jsonl"
    source.write_text("{}\n")
    names = set()
    for i in (1, 2):
        conf = {**runner.run_conf(i, source, f"chaos-{i:03d}", 2),
                "sagemaker_model_name": "minilm-embedder",
                "sagemaker_endpoint_name": "devstack-minilm"}
        p = run_plan.resolve_plan(conf, dag_id="batch_embeddings", run_id=f"chaos-{i:03d}",
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


def test_triggerer_kill_when_any_job_group_is_deferred(clock):
    killed: list = []
    w = watcher(kills.KillPlan("triggerer", "batch_predict", 0.0), killed)
    tis = {"a": ti("a", "batch_predict", "success", map_index=0),
           "b": ti("b", "batch_predict", "deferred", map_index=1)}
    assert w.tick(tis, {}, bulk_started=0, submit_in_flight=False).target == "triggerer"


def test_job_group_kill_takes_group_1s_runner_once_it_resumed_not_group_0s(clock):
    killed: list = []
    w = watcher(kills.KillPlan("job_group", "batch_predict", 0.0), killed)
    g0, g1 = ti("a", "batch_predict", "deferred", 0), ti("b", "batch_predict", "deferred", 1)
    assert w.tick({"a": g0, "b": g1}, {}, bulk_started=0, submit_in_flight=False) is None
    g0 = {**g0, "state": "running"}  # group 0 resumed first: not the target
    assert w.tick({"a": g0, "b": g1}, {"a": FakeProc(5)}, bulk_started=0,
                  submit_in_flight=False) is None
    g1 = {**g1, "state": "running"}
    tis, workers = {"a": g0, "b": g1}, {"a": FakeProc(5), "b": FakeProc(6)}
    assert w.tick(tis, workers, bulk_started=0, submit_in_flight=False) is None
    rec = w.tick(tis, workers, bulk_started=0, submit_in_flight=False)
    assert killed == [6] and rec.target == "batch_predict[1]" and "job group 1" in rec.detail


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


# -- stage_group_mid_file ------------------------------------------------------------------------

def stages(**groups: tuple[int, int, bool]) -> dict[int, kills.GroupStage]:
    return {int(g[1:]): kills.GroupStage(*v) for g, v in groups.items()}


def test_group_stage_is_mid_between_its_first_and_last_commit():
    assert not kills.GroupStage(0, 4).mid  # nothing committed yet
    assert kills.GroupStage(1, 4).mid and kills.GroupStage(3, 4).mid
    assert not kills.GroupStage(4, 4).mid  # every segment committed: nothing left to skip past
    assert not kills.GroupStage(2, 4, done=True).mid


def test_the_stage_group_mode_targets_stage_group():
    plan = kills.choose(random.Random(0), ["stage_group_mid_file"], 1)
    assert (plan.mode, plan.task) == ("stage_group_mid_file", "stage_group")
    assert kills.MODES["stage_group_mid_file"] > 0


def test_mid_group_kill_waits_for_a_first_commit_then_kills_that_group_at_once(clock):
    killed: list = []
    w = watcher(kills.KillPlan("stage_group_mid_file", "stage_group", 0.9), killed)
    tis = {"a": ti("a", "stage_group", map_index=0), "b": ti("b", "stage_group", map_index=1)}
    workers = {"a": FakeProc(5), "b": FakeProc(6)}
    tick = lambda staged: w.tick(tis, workers, bulk_started=0, submit_in_flight=False,  # noqa: E731
                                 staged=staged)
    assert tick({}) is None  # no listing yet
    assert tick(stages(g0=(0, 12, False), g1=(0, 12, False))) is None
    rec = tick(stages(g0=(0, 12, False), g1=(2, 12, False)))  # group 1 is mid-way: at once
    assert killed == [6] and rec.target == "stage_group[1]" and rec.try_number == 1
    assert rec.process_key == ("b", 6) and rec.detail == "mid-group, 2 of its 12 segment commits seen"


def test_a_group_that_committed_everything_is_not_a_mid_group_target(clock):
    killed: list = []
    w = watcher(kills.KillPlan("stage_group_mid_file", "stage_group", 0.0), killed)
    tis = {"a": ti("a", "stage_group", map_index=0), "b": ti("b", "stage_group", map_index=1)}
    rec = w.tick(tis, {"a": FakeProc(5), "b": FakeProc(6)}, bulk_started=0,
                 submit_in_flight=False, staged=stages(g0=(12, 12, False), g1=(3, 12, False)))
    assert killed == [6] and rec.target == "stage_group[1]"


def test_mid_group_kill_falls_back_when_the_groups_finish_first(clock):
    killed: list = []
    w = watcher(kills.KillPlan("stage_group_mid_file", "stage_group", 0.0), killed)
    tis = {"a": ti("a", "stage_group", map_index=0), "s": ti("s", "stage_shard", map_index=0)}
    # group 0's runner is seen while nothing is committed, then the group is done at once
    assert w.tick(tis, {"a": FakeProc(5)}, bulk_started=0, submit_in_flight=False,
                  staged=stages(g0=(0, 3, False))) is None
    assert w.tick(tis, {"a": FakeProc(5)}, bulk_started=0, submit_in_flight=False,
                  staged=stages(g0=(3, 3, True))) is None
    assert w.fallback and w.note == "the group finished first"
    # the finishing stage_group runner is not the fallback: the next task's is
    w.tick(tis, {"a": FakeProc(5), "s": FakeProc(8)}, bulk_started=0, submit_in_flight=False)
    clock.now += 1
    rec = w.tick(tis, {"s": FakeProc(8)}, bulk_started=0, submit_in_flight=False)
    assert killed == [8] and rec.target == "stage_shard[0]"
    assert rec.detail.startswith("missed stage_group_mid_file (the group finished first); ")


def test_mid_group_kill_of_a_process_already_gone_is_a_miss(clock):
    w = kills.Watcher(plan=kills.KillPlan("stage_group_mid_file", "stage_group", 0.0),
                      kill_process=lambda p: False, kill_triggerer=lambda: None,
                      estimates={}, bulk_window=1.0, submit_window=1.0)
    tis = {"a": ti("a", "stage_group", map_index=0)}
    assert w.tick(tis, {"a": FakeProc(5)}, bulk_started=0, submit_in_flight=False,
                  staged=stages(g0=(1, 3, False))) is None
    assert w.fallback and w.note == "its process was gone"


@pytest.mark.parametrize("records", [100, 300])  # make test's light chaos, make chaos
def test_the_mid_group_input_is_the_same_lines_in_several_files_and_segments(tmp_path, records):
    """stage_group_mid_file's runs read the session's input split into files, cut into
    groups of several one-file segments; the other modes keep the one file and the defaults."""
    from batchvec.ingest import staging_groups
    from chaos import runner

    sample = Path(runner.__file__).resolve().parents[2] / "include" / "sample" / "documents.jsonl"
    source = tmp_path / "input.jsonl"
    ids = runner.write_input(source, records, sample)
    sizes = runner.split_input(source, tmp_path / "files", runner.Options.stage_files)
    files = sorted((tmp_path / "files").iterdir())
    assert len(files) == runner.Options.stage_files and [f.stat().st_size for f in files] == sizes
    assert "".join(f.read_text() for f in files) == source.read_text()
    conf = runner.staging_conf(sizes, runner.Options.stage_groups)
    assert conf["staging_commit_mb"] == 0 and conf["keep_staging"] is True
    mb = staging_groups.MB
    groups = staging_groups.group_files(sizes, int(conf["staging_group_mb"] * mb), 32)
    assert len(groups) == runner.Options.stage_groups == 2
    for a, b in groups:
        segs = staging_groups.segments(sizes, a, b, int(conf["staging_commit_mb"] * mb))
        assert len(segs) == b - a >= 20  # one segment per file, many per group
    assert len(ids) == records
    plain = runner.run_conf(1, source, "chaos-001", 2)
    assert not {"staging_group_mb", "staging_commit_mb", "keep_staging"} & set(plain)
    mid = runner.run_conf(1, tmp_path / "files", "chaos-001", 2, conf)
    assert {k: mid[k] for k in conf} == conf and mid["input_uri"] == str(tmp_path / "files")


def test_a_retry_that_skipped_the_committed_segments_untouched_is_clean():
    before = {"g1/s0/commit.json": ("e0", "t0"), "g1/s1/commit.json": ("e1", "t1")}
    after = {**before, "g1/s2/commit.json": ("e2", "t5"), "g1/s3/commit.json": ("e3", "t5")}
    skip = checks.SegmentSkip(1, before, after, logged=2)
    assert skip.check().clean and (skip.committed, skip.unchanged) == (2, 2)
    assert skip.describe() == (
        'stage_group[1]: the killed try had committed 2 of 4 segments; the retry skipped 2 '
        '(its log: "committed by an earlier try"), 2 of the 2 commit.json unchanged (ETag, '
        'LastModified); it staged the other 2')
    # one more skipped than seen: a commit whose request landed just after the kill
    assert checks.SegmentSkip(1, before, after, logged=3).check().clean


def test_a_retry_that_restaged_a_committed_segment_is_a_problem():
    before = {"g0/s0/commit.json": ("e0", "t0"), "g0/s1/commit.json": ("e1", "t1")}
    rewritten = {"g0/s0/commit.json": ("e0", "t0"), "g0/s1/commit.json": ("e1", "t7")}  # same body
    got = checks.SegmentSkip(0, before, rewritten, logged=1).check()
    assert len(got.problems) == 2 and "rewrote or lost 1 of the 2" in got.problems[0]
    assert "skipped 1 segments, the killed try had committed 2" in got.problems[1]
    lost = checks.SegmentSkip(0, before, {"g0/s1/commit.json": ("e1", "t1")}, logged=2).check()
    assert not lost.clean
    assert "no log" in checks.SegmentSkip(0, before, before, logged=None).check().problems[0]


def test_the_run_line_and_summary_show_what_the_retry_skipped():
    from chaos import runner

    before = {"g1/s0/commit.json": ("e0", "t0")}
    skip = checks.SegmentSkip(1, before, {**before, "g1/s1/commit.json": ("e1", "t2")}, 1)
    kill = kills.KillRecord("stage_group[1]", 1, 12.5, "mid-group, 1 of its 2 segment commits seen")
    plan = kills.KillPlan("stage_group_mid_file", "stage_group", 0.3)
    hit = runner.RunResult(1, plan, kill, "success", 60.0, {"stage_group[1]": 2},
                           {"Completed": 1}, checks.RunCheck(), skip=skip)
    line = runner.describe(hit, 2)
    assert "killed stage_group[1] try 1 at 12.5s (mid-group" in line
    assert line.splitlines()[1] == "  " + skip.describe()
    fallback = kills.KillRecord("stage_shard[0]", 1, 20.0, "missed stage_group_mid_file (the "
                                "group finished first); next task started after the miss")
    missed = runner.RunResult(2, plan, fallback, "success", 60.0, {"stage_shard[0]": 2},
                              {"Completed": 1}, checks.RunCheck())
    assert len(runner.describe(missed, 2).splitlines()) == 1
    lines = runner.summary([hit, missed], 120.0)
    assert ("chaos: stage_group killed mid-group in 1 runs: committed [1] segments, the retries "
            "skipped [1], commit.json unchanged [1]") in lines
    assert any("missed its moment in 1 runs" in ln for ln in lines)
