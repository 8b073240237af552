"""Waiting on the run's transform jobs without a barrier: the tasks that wait, and their trigger.

`ShardOutputSensor` (check_outputs, one per shard) waits for its own group's batch_predict,
`IndexSensor` (prepare_index) for the first group to end; each then runs its step
(tasks/jobs.py). They read the run's batch_predict states (`get_task_states`), so "ended" is
Airflow's: success, or failed with its retries spent (job_groups.DONE).

Between looks a sensor is deferred on `JobStatesTrigger` (no worker slot held), which fires
when one more of the groups it watches has ended. `BATCHVEC_JOB_WAIT=reschedule` makes them
reschedule-mode sensors instead: for `dag.test()`, whose inline triggers block the only
process that would run the tasks they wait for. Not for production on Airflow 3.3: a
reschedule sensor there can be failed by a late executor event of its previous poke
(apache/airflow#71172).
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

from airflow.sdk import BaseSensorOperator, PokeReturnValue
from airflow.triggers.base import BaseTrigger, TriggerEvent

from batchvec import settings
from batchvec.batch import job_groups

# A wait ends with its job: batch_predict cancels past wait_timeout. This only backstops.
JOB_WAIT_TIMEOUT = timedelta(days=14)


def _deferrable() -> bool:
    return settings.job_waits_defer()


def _states(context) -> dict:
    ti = context["ti"]
    return ti.get_task_states(dag_id=ti.dag_id, task_ids=[job_groups.JOB_TASK],
                              run_ids=[ti.run_id]).get(ti.run_id, {})


class _JobWaitSensor(BaseSensorOperator):
    """Runs `_step(context, states)` -> (ready, value) until ready; returns the value.

    :param plan: the run plan (XCom of `plan`)
    :param item: what the step looks at: a shard (ShardOutputSensor) or the manifest (IndexSensor)
    :param poll_interval: seconds between looks, deferred on JobStatesTrigger (or rescheduled)
    """

    template_fields = ("plan", "item")

    def __init__(self, *, plan: Any, item: Any, poll_interval: float = 30.0, **kwargs):
        super().__init__(poke_interval=poll_interval, mode="reschedule",
                         timeout=JOB_WAIT_TIMEOUT.total_seconds(), **kwargs)
        self.plan, self.item, self.poll_interval = plan, item, poll_interval

    def _step(self, states: dict) -> tuple[bool, Any]:
        raise NotImplementedError

    def _groups(self) -> list[int]:
        raise NotImplementedError

    def poke(self, context) -> PokeReturnValue:
        ready, value = self._step(_states(context))
        return PokeReturnValue(ready, value)

    def execute(self, context, event=None) -> Any:
        if not _deferrable():
            return super().execute(context)
        states = _states(context)
        ready, value = self._step(states)
        if not ready:
            ti = context["ti"]
            groups = self._groups()
            done = [g for g in groups if job_groups.is_done(job_groups.state_of(states, g))]
            self.log.info("waiting for the batch_predict of job group(s) %s (ended: %s)",
                          groups, done or "none")
            self.defer(trigger=JobStatesTrigger(dag_id=ti.dag_id, run_id=ti.run_id,
                                                groups=groups, done=done,
                                                poll_interval=self.poll_interval),
                       method_name="execute", timeout=JOB_WAIT_TIMEOUT)
        return value


class ShardOutputSensor(_JobWaitSensor):
    """`item`: the shard (from the manifest). Returns its entry for index_shard once its
    group's job ended (tasks.jobs.check_output)."""

    def _groups(self) -> list[int]:
        return [] if self.item.get("job") is None else [self.item["job"]]

    def _step(self, states: dict) -> tuple[bool, Any]:
        from batchvec.tasks import jobs

        entry = jobs.check_output(self.plan, self.item, states)
        return entry is not None, entry


class IndexSensor(_JobWaitSensor):
    """`item`: the manifest. Creates (or checks) the index at the first ended job with an
    output, or once every job ended (tasks.jobs.prepare_index)."""

    def _groups(self) -> list[int]:
        return sorted({s["job"] for s in self.item["shards"] if s.get("job") is not None})

    def _step(self, states: dict) -> tuple[bool, Any]:
        from batchvec.tasks import jobs

        ready, first = jobs.first_output(self.plan, self.item["shards"], states)
        return ready, jobs.prepare_index(self.plan, self.item, first) if ready else None


class JobStatesTrigger(BaseTrigger):
    """Fires once one more of `groups`' batch_predict tries has ended than `done` at defer
    time. Reads the states through the triggerer's task SDK (as the standard provider's
    WorkflowTrigger does); a failed read is logged and retried at the next poll.

    :param dag_id: the run's DAG
    :param run_id: the run whose batch_predict map indexes are watched
    :param groups: the job groups (map indexes of batch_predict) to watch
    :param done: those already ended when the sensor deferred
    :param poll_interval: seconds between reads
    """

    def __init__(self, *, dag_id: str, run_id: str, groups: list[int], done: list[int],
                 poll_interval: float):
        super().__init__()
        self.dag_id, self.run_id = dag_id, run_id
        self.groups, self.done = list(groups), list(done)
        self.poll_interval = poll_interval

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return ("batchvec.batch.job_waits.JobStatesTrigger", {
            "dag_id": self.dag_id, "run_id": self.run_id, "groups": self.groups,
            "done": self.done, "poll_interval": self.poll_interval})

    async def run(self):
        from airflow.sdk.execution_time.task_runner import RuntimeTaskInstance
        from asgiref.sync import sync_to_async

        while True:
            try:
                states = (await sync_to_async(RuntimeTaskInstance.get_task_states)(
                    dag_id=self.dag_id, task_ids=[job_groups.JOB_TASK],
                    run_ids=[self.run_id])).get(self.run_id, {})
                ended = [g for g in self.groups
                         if job_groups.is_done(job_groups.state_of(states, g))]
                if set(ended) - set(self.done) or not self.groups:
                    yield TriggerEvent({"ended": ended})
                    return
            except Exception as exc:  # the API server restarting: look again next poll
                self.log.warning("reading batch_predict states of %s: %s", self.run_id, exc)
            await asyncio.sleep(self.poll_interval)
