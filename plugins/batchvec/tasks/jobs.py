"""The tasks that wait on the transform jobs, with no barrier on the slowest one.

``batch_predict``   mapped over the job groups (``job_groups``), each deferred on its job
``prepare_index``   as soon as one group's job is done: the index, its dimension read from
                    that group's first output (or every job is done and none wrote one)
``check_outputs``   mapped over the shards, each waiting for its own group's job only; then
                    whether SageMaker wrote the shard's `.out` (after a Failed job too: its
                    shards without output are counted failed, with the job's FailureReason)
                    and whether its first line holds a vector of the run's dimension

The waits read the Airflow states of the run's batch_predict tries (``states``, as
``get_task_states`` gives them), in sensors that hold no worker slot between pokes.
"""

from __future__ import annotations

import logging

from batchvec import errors
from batchvec.batch import job_groups
from batchvec.errors import fail_for_good
from batchvec.hooks import s3io
from batchvec.hooks.aws import s3_client
from batchvec.hooks.opensearch import OpenSearchDomainHook
from batchvec.index import lifecycle
from batchvec.outputs import check, convert
from batchvec.plan import naming
from batchvec.settings import AWS_CONN_ID, OPENSEARCH_CONN_ID
from batchvec.tasks.context import plan_of

log = logging.getLogger(__name__)


def output_key(plan, shard: dict) -> str:
    return plan.key("output", shard["name"] + ".out")


def check_output(plan_data: dict, shard: dict, states: dict) -> dict | None:
    """The shard's entry for index_shard once its job is done (None until then)."""
    plan = plan_of(plan_data)
    group = shard.get("job")
    if group is None:  # nothing of it went to the model: counts and deletes only
        return {**shard, "output_present": False}
    state = job_groups.state_of(states, group)
    if not job_groups.is_done(state):
        return None
    s3 = s3_client()
    key = output_key(plan, shard)
    entry = {**shard, "output_present": s3io.exists(s3, plan.bucket, key)}
    if not entry["output_present"]:
        failure = None
        if state != "success":
            failure = last_job_failure(shard["job_name"]) or \
                f"the batch job of group {group} {state} (see batch_predict[{group}]'s log)"
            entry.update(missing_reason="batch_job_failed", failure=failure)
        log.error("shard %s: no output at s3://%s/%s%s", shard["name"], plan.bucket, key,
                  f" (job group {group}: {failure})" if failure else "")
        return entry
    try:
        convert.check_output_shape(check.first_output_line(s3, plan.bucket, key),
                                   plan.dimension or None)
    except convert.OutputShapeError as exc:
        raise fail_for_good(f"shard {shard['name']} (s3://{plan.bucket}/{key}): {exc}") from None
    log.info("shard %s: output of job group %d present", shard["name"], group)
    return entry


def first_output(plan_data: dict, shards: list[dict], states: dict) -> tuple[bool, dict | None]:
    """(ready, shard): the first shard with an output of a done job (a Failed one's too:
    it wrote the files that succeeded, and no retry will rewrite them); ready without one
    once every job is done (or there were none)."""
    plan = plan_of(plan_data)
    groups = sorted({s["job"] for s in shards if s.get("job") is not None})
    s3 = None
    for shard in shards:
        group = shard.get("job")
        if group is None or not job_groups.is_done(job_groups.state_of(states, group)):
            continue
        s3 = s3 or s3_client()
        if s3io.exists(s3, plan.bucket, output_key(plan, shard)):
            return True, shard
    return all(job_groups.is_done(job_groups.state_of(states, g)) for g in groups), None


def prepare_index(plan_data: dict, manifest: dict, first: dict | None) -> dict:
    """Create (or check) the run's index, with the dimension of `first`'s output."""
    from batchvec.index.aliases import Target

    plan = plan_of(plan_data)
    hook = OpenSearchDomainHook(OPENSEARCH_CONN_ID)
    target = Target.from_dict(manifest["target"])
    if first is not None:
        line = check.first_output_line(s3_client(), plan.bucket, output_key(plan, first))
        dimension = convert.vector_dimension(line)
    elif hook.index_exists(target.physical):  # nothing was embedded: counts and deletes
        dimension = lifecycle.existing_dimension(hook.get_mapping(target.physical),
                                                plan.vector_field) or plan.dimension
    else:
        raise errors.ShardFailed("no shard has an output: nothing to index")
    return lifecycle.prepare_index(plan, hook, dimension, target)


def last_job_failure(job_base: str) -> str | None:
    """FailureReason of a group's latest transform job (attempts are base, base-r2, ...)."""
    from batchvec.batch.job import MAX_JOB_ATTEMPTS
    from batchvec.hooks.sagemaker import describe_transform_job
    from batchvec.util.redact import scrub

    reason = None
    for attempt in range(1, MAX_JOB_ATTEMPTS + 1):
        try:
            desc = describe_transform_job(AWS_CONN_ID, naming.transform_job_name(job_base, attempt))
        except Exception:  # no such job: the previous one was the last
            break
        reason = scrub(desc.get("FailureReason") or desc.get("TransformJobStatus") or "") or None
    return reason
