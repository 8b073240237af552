"""Transform jobs per group of shards (README: Jobs per shard group).

The shards that hold records to embed are cut, in shard order, into at most `max_jobs`
groups of about equal records, each under `max_records_per_job` where `max_jobs` allows (a
shard is never split). Each group is one transform job over a ManifestFile listing its
shards, named from the run key: one group keeps the run key itself, more are
`<run key>-j<G>`. A retry so attaches to its group's job, and a Failed group resubmits alone
as `-r2` while the others' shards index as soon as their own job is done.

Pure functions: the grouping, the manifest body, and the rules on the Airflow states of the
run's `batch_predict` tries that the operator (its submit window) and the tasks waiting on
a job share.
"""

from __future__ import annotations

import math

MAX_JOBS = 1024
JOB_TASK = "batch_predict"
# Airflow states after which a try of batch_predict will not run again (up_for_retry and
# up_for_reschedule are not among them: the task is not done with its job).
DONE = frozenset({"success", "failed", "skipped", "upstream_failed", "removed"})


def schema() -> dict[str, dict]:
    return {
        "max_records_per_job": {"default": 5_000_000, "type": "integer", "minimum": 1,
                                "description": "records (to embed) per transform job: the "
                                "shards are grouped into jobs of at most this many, where "
                                "max_jobs allows (a shard is never split)"},
        "max_jobs": {"default": 64, "type": "integer", "minimum": 1, "maximum": MAX_JOBS,
                     "description": "at most this many transform jobs per run (larger jobs "
                     "past it)"},
        "max_parallel_jobs": {"default": 4, "type": "integer", "minimum": 1, "maximum": 100,
                              "description": "transform jobs of one run running at once, each "
                              "on instance_count instances (ML Commons' "
                              "plugins.ml_commons.max_batch_inference_tasks caps the cluster)"},
    }


def resolve(p: dict) -> tuple[dict, list[str]]:
    """The three params, checked; defaults where one is bad (its problem is listed)."""
    values, problems = {}, []
    for name, spec in schema().items():
        value = p.get(name, spec["default"])
        high = spec.get("maximum")
        if (isinstance(value, bool) or not isinstance(value, int) or value < spec["minimum"]
                or (high is not None and value > high)):
            within = f"in {spec['minimum']}..{high}" if high else f">= {spec['minimum']}"
            problems.append(f"{name}: must be an integer {within}, got {value!r}")
            value = spec["default"]
        values[name] = value
    return values, problems


def group_shards(embed: list[tuple[str, int]], max_records_per_job: int,
                 max_jobs: int) -> list[list[str]]:
    """Shard names (in order, with their records to embed) -> contiguous groups of names.

    Shards with nothing to embed belong to no group. A shard goes to the group its middle
    record falls in, so groups come out about equal; empty groups are dropped."""
    todo = [(name, n) for name, n in embed if n > 0]
    total = sum(n for _, n in todo)
    if not todo:
        return []
    count = max(1, min(max_jobs, len(todo), math.ceil(total / max_records_per_job)))
    share = total / count
    groups: list[list[str]] = [[] for _ in range(count)]
    seen = 0
    for name, n in todo:
        groups[min(count - 1, int((seen + n / 2) / share))].append(name)
        seen += n
    return [g for g in groups if g]


def job_base(run_key: str, group: int, groups: int) -> str:
    """The name of a group's first job (`naming.transform_job_name` adds `-r<n>`)."""
    return run_key if groups == 1 else f"{run_key}-j{group}"


def manifest_body(input_prefix_uri: str, names: list[str]) -> list:
    """A SageMaker ManifestFile: the prefix, then each input object relative to it. The
    outputs are named like the objects (`<prefix>/<name>` -> `output/<name>.out`)."""
    return [{"prefix": input_prefix_uri.rstrip("/") + "/"}, *names]


def state_of(states: dict[str, str | None], group: int) -> str | None:
    """A group's batch_predict state in `get_task_states`'s map (`<task>_<map index>`);
    before the task is expanded, its one unmapped try stands for every group."""
    if f"{JOB_TASK}_{group}" in states:
        return states[f"{JOB_TASK}_{group}"]
    return states.get(JOB_TASK)


def is_done(state: str | None) -> bool:
    return state in DONE


def may_submit(states: dict[str, str | None], group: int, parallel: int) -> bool:
    """Group G submits a new job only while fewer than `parallel` lower groups are unfinished.

    Every group running at once was submitted under this rule, and all but the highest of
    them are lower groups it counted, so at most `parallel` run; lower groups go first."""
    unfinished = sum(1 for g in range(group) if not is_done(state_of(states, g)))
    return unfinished < parallel
