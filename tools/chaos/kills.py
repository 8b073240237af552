"""Where and when each run's kill lands.

A plan is drawn per run from the seed: a mode and a position `u` in [0, 1) inside that mode's
window. The watcher is fed the run's task instances (REST) and the stack's task processes
(psutil) every tick and SIGKILLs the chosen process when its moment comes:

  index_shard_bulk      an index_shard runner while its bulk requests are in flight (the
                        devstack holds each `_bulk` for a while, so a shard takes several
                        requests per lane and the kill lands between / inside them)
  index_shard_checkpoint  an index_shard runner once a shard's first checkpoint object is
                        in S3 (runs/<key>/checkpoints/index/): the retry must resume there
  stage_group_mid_file  a stage_group runner once its group's first segment is committed
                        (runs/<key>/staged/g<G>/s00000/commit.json in S3) while later
                        segments of the group are still to stage (this mode's runs give
                        each group several files, one segment each): the retry must skip
                        the committed segments and redo only the rest
  batch_predict_submit  the batch_predict runner while its `_batch_predict` request is held
                        by the devstack: the request still creates the job after the kill,
                        so the retry must find that job and attach, not submit another
  batch_predict_resume  the batch_predict runner that resumed after the deferral
                        (execute_complete): the retry must attach to the Completed job
  job_group             the batch_predict runner of job group 1 (the runs have 2 groups)
                        resumed after its deferral: its retry must attach to that group's
                        Completed job, and group 0's job and shards go on untouched
  task                  any other task (plan, list_input, stage_group, stage_shard, stage,
                        job_list, shard_list, ensure_model, check_outputs, prepare_index,
                        restore_index, switch_alias, report, cleanup) at a random point of
                        its process's life
  triggerer             the whole triggerer (SIGKILL) while a batch_predict is deferred; a new
                        triggerer takes the triggers over (the job waits, the shards' waits
                        on them: no task retry, the waits resume)
  worker                (--executor celery only) the whole Celery worker running an
                        index_shard, mid-bulk: its main process, pool, supervisors and runners
                        at once, so no one reports the tries failed; the scheduler finds them
                        by their missing heartbeats and they are retried on the other worker

If the target ends before the moment comes, the next task process that starts is killed
instead, so nearly every run has its kill (not when the target was the last task, cleanup).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

MODES: dict[str, int] = {  # weights
    "index_shard_bulk": 6,
    "index_shard_checkpoint": 3,
    "stage_group_mid_file": 2,
    "batch_predict_submit": 3,
    "batch_predict_resume": 2,
    "job_group": 2,
    "task": 6,
    "triggerer": 1,
}
# Drawn only under the CeleryExecutor (weighted with MODES).
CELERY_MODES: dict[str, int] = {"worker": 4}
OTHER_TASKS = ("plan", "list_input", "stage_group", "stage_shard", "stage", "job_list",
               "shard_list", "ensure_model", "check_outputs", "prepare_index", "restore_index", "switch_alias", "report",
               "cleanup")
# Seconds a task runner process lives (its title is set after the fork, so this is parse +
# execute), measured here; each session updates them from what it sees.
PRIOR_SECONDS = {"plan": 1.7, "list_input": 1.2, "stage_group": 2.0, "stage_shard": 1.2,
                 "job_list": 0.8, "shard_list": 0.8,
                 "stage": 1.2, "ensure_model": 1.5, "check_outputs": 1.0,
                 "prepare_index": 1.4, "restore_index": 0.9, "switch_alias": 1.2, "report": 1.3, "cleanup": 1.0,
                 "batch_predict": 1.5, "batch_predict_resume": 0.7, "index_shard": 3.0}
# A `task` kill lands in the first WINDOW_SHARE of the expected life, so a process that runs
# a little shorter than usual is still hit (cleanup, the last task, has no fallback after it).
WINDOW_SHARE = 0.8


@dataclass(frozen=True)
class KillPlan:
    mode: str
    task: str
    u: float  # where in the window: 0 = its start, 1 = its end

    def describe(self) -> str:
        return self.mode if self.mode != "task" else f"task:{self.task}"


def choose(rng: random.Random, modes: list[str] | None = None, run_index: int = 0,
           executor: str = "local") -> KillPlan:
    """Weighted draw, or the given modes in turn (`--modes`)."""
    if modes:
        mode = modes[(run_index - 1) % len(modes)]  # runs count from 1
    else:
        weights = {**MODES, **(CELERY_MODES if executor == "celery" else {})}
        names = list(weights)
        mode = rng.choices(names, weights=[weights[n] for n in names])[0]
    task = {"index_shard_bulk": "index_shard", "index_shard_checkpoint": "index_shard",
            "worker": "index_shard", "stage_group_mid_file": "stage_group",
            "batch_predict_submit": "batch_predict",
            "batch_predict_resume": "batch_predict", "job_group": "batch_predict",
            "triggerer": "batch_predict"}.get(mode)
    if mode.startswith("task:"):
        mode, task = "task", mode.split(":", 1)[1]
    elif mode == "task":
        task = rng.choice(OTHER_TASKS)
    return KillPlan(mode, task or "", rng.random())


@dataclass(frozen=True)
class GroupStage:
    """One staging group as S3 shows it mid-run: segments committed (their commit.json
    present), segments in all (from the listing), whether its group.json is written."""
    committed: int
    segments: int
    done: bool = False

    @property
    def mid(self) -> bool:
        """First segment committed, later ones still to stage."""
        return not self.done and 1 <= self.committed < self.segments


@dataclass
class KillRecord:
    target: str
    try_number: int | None
    at: float  # seconds after the run was triggered
    detail: str
    process_key: tuple[str, int] | None = None  # (ti id, pid) of the killed process


@dataclass
class Watcher:
    """Feed `tick()` until it returns a KillRecord (the kill happened) or the run ends."""

    plan: KillPlan
    kill_process: Callable[[object], bool]
    kill_triggerer: Callable[[], None]
    estimates: dict[str, float]
    bulk_window: float
    submit_window: float
    # SIGKILLs the Celery worker holding a runner process; says which ("" if none did).
    kill_worker: Callable[[object], str] | None = None
    started: float = field(default_factory=time.monotonic)
    fallback: bool = False
    deferred_seen: bool = False
    groups_deferred: set[int] = field(default_factory=set)  # batch_predict map indexes seen so
    _moment: float | None = None
    _seen: set[str] = field(default_factory=set)
    _fallback_ti: str | None = None
    _window_start: float = 0.0
    _window: float = 0.0
    note: str = ""

    def _record(self, ti: dict | None, target: str, detail: str, pid: int | None = None) -> KillRecord:
        label = target
        if ti is not None:
            label = ti["task_id"] + (f"[{ti['map_index']}]" if ti["map_index"] >= 0 else "")
        prefix = f"missed {self.plan.describe()} ({self.note}); " if self.fallback else ""
        return KillRecord(label, ti["try_number"] if ti else None,
                          round(time.monotonic() - self.started, 1), prefix + detail,
                          (ti["id"], pid) if ti is not None and pid is not None else None)

    def _workers_of(self, task_id: str, tis: dict[str, dict], workers: dict) -> list[str]:
        return sorted(i for i in workers if tis.get(i, {}).get("task_id") == task_id)

    def tick(self, tis: dict[str, dict], workers: dict, *, bulk_started: int,
             submit_in_flight: bool, checkpoints: int = 0,
             staged: dict[int, GroupStage] | None = None) -> KillRecord | None:
        """`tis`: ti id -> task instance (REST); `workers`: ti id -> runner process;
        `checkpoints`: index_shard checkpoint objects of the run now in S3; `staged`: group ->
        its GroupStage in S3 now (empty until the listing is written)."""
        now = time.monotonic()
        for t in tis.values():
            if t.get("task_id") == "batch_predict" and t.get("state") == "deferred":
                self.deferred_seen = True
                self.groups_deferred.add(t.get("map_index", -1))
        if self.fallback:
            return self._tick_fallback(now, tis, workers)
        plan = self.plan
        if plan.mode == "stage_group_mid_file":
            return self._tick_stage_group(now, tis, workers, staged or {})
        candidates = self._workers_of(plan.task, tis, workers)
        if plan.mode == "job_group":  # the second group's runner only
            candidates = [i for i in candidates if tis[i].get("map_index") == 1]
        if plan.mode == "triggerer":
            bp = [t for t in tis.values() if t.get("task_id") == "batch_predict"]
            deferred = any(t.get("state") == "deferred" for t in bp)
            if self._moment is None and deferred:
                self._moment = now + plan.u * 4.0
            if self._moment is not None and now >= self._moment:
                if deferred:
                    self.kill_triggerer()
                    return self._record(None, "triggerer", "SIGKILL while batch_predict deferred; "
                                        "new triggerer started")
                return self._miss("the job finished first")
            return None
        if self._moment is None:
            ready = bool(candidates)
            if plan.mode in ("index_shard_bulk", "worker"):
                ready = ready and bulk_started > 0
                window = self.bulk_window
            elif plan.mode == "index_shard_checkpoint":  # at once: the shard is still going
                ready, window = ready and checkpoints > 0, 0.0
            elif plan.mode == "batch_predict_submit":
                ready = ready and submit_in_flight
                window = self.submit_window
            elif plan.mode == "batch_predict_resume":
                ready = ready and self.deferred_seen
                window = WINDOW_SHARE * self.estimates.get("batch_predict_resume", 0.7)
            elif plan.mode == "job_group":
                ready = ready and 1 in self.groups_deferred
                window = WINDOW_SHARE * self.estimates.get("batch_predict_resume", 0.7)
            else:
                window = WINDOW_SHARE * self.estimates.get(plan.task, 1.5)
            if ready:
                self._moment = now + plan.u * window
                self._window_start, self._window = now, window
                self._seen.update(candidates)
            return None
        if now < self._moment:
            return None
        alive = [i for i in candidates if i in self._seen] or candidates
        if not alive:
            return self._miss("it ended first")
        ti_id = alive[int(plan.u * 1e6) % len(alive)]
        detail = {"index_shard_bulk": f"mid-bulk ({bulk_started} bulk requests begun)",
                  "index_shard_checkpoint": f"after its first checkpoint ({checkpoints} "
                                            "shards with one in S3)",
                  "batch_predict_submit": "while its _batch_predict request was in flight",
                  "batch_predict_resume": "resumed after the deferral",
                  "job_group": "of job group 1, resumed after the deferral",
                  "task": "random point", "worker": "mid-bulk"}[plan.mode]
        proc = workers[ti_id]
        if plan.mode == "worker" and self.kill_worker is not None:
            which = self.kill_worker(proc)
            if which:
                return self._record(tis[ti_id], "", f"SIGKILL of {which} {detail} ({bulk_started} "
                                    f"bulk requests begun), {now - self._window_start:.1f}s into "
                                    f"a {self._window:.1f}s window", proc.pid)
            return self._miss("its worker was gone")
        if self.kill_process(proc):
            return self._record(tis[ti_id], "", f"{detail}, {now - self._window_start:.1f}s into "
                                f"a {self._window:.1f}s window", proc.pid)
        return self._miss("its process was gone")

    def _tick_stage_group(self, now: float, tis: dict[str, dict], workers: dict,
                          staged: dict[int, GroupStage]) -> KillRecord | None:
        """At once (the group is still going): the runner of a group whose first segment is
        committed and whose later ones are not; a miss once no group can be caught so."""
        candidates = self._workers_of("stage_group", tis, workers)
        self._seen.update(candidates)  # the fallback takes a later task, not these
        mid = [i for i in candidates
               if tis[i].get("map_index", -1) in staged and staged[tis[i]["map_index"]].mid]
        if mid:
            ti_id = mid[int(self.plan.u * 1e6) % len(mid)]
            group = staged[tis[ti_id]["map_index"]]
            proc = workers[ti_id]
            self._window_start = now
            if self.kill_process(proc):
                return self._record(tis[ti_id], "", f"mid-group, {group.committed} of its "
                                    f"{group.segments} segment commits seen", proc.pid)
            return self._miss("its process was gone")
        if staged and all(g.done or g.committed >= g.segments for g in staged.values()):
            return self._miss("the group finished first")
        return None

    def _miss(self, why: str) -> None:
        self.fallback = True
        self.note = why
        self._moment = None
        return None

    def _tick_fallback(self, now: float, tis: dict[str, dict], workers: dict) -> KillRecord | None:
        """Kill the next task process that starts (after the missed target)."""
        if self._fallback_ti is None:
            fresh = [i for i in workers if i not in self._seen and i in tis]
            if not fresh:
                self._seen.update(workers)
                return None
            self._fallback_ti = sorted(fresh)[0]
            self._moment = now + self.plan.u * 1.0
            return None
        if now < self._moment:
            return None
        proc = workers.get(self._fallback_ti)
        if proc is not None and self.kill_process(proc):
            return self._record(tis[self._fallback_ti], "", "next task started after the miss",
                                proc.pid)
        self._seen.add(self._fallback_ti)
        self._fallback_ti = None
        return None
