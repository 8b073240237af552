"""batch_embeddings: stage -> ML Commons batch predict (SageMaker) -> bulk-index into k-NN.

Daily by default, each run reading its own day's partition (`.../ds=YYYY-MM-DD/`), so
`airflow backfill create` over a range processes each day once. Trigger by hand with the
form to embed any input. Stages and options: README.md.
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta

from airflow.sdk import (
    DAG,
    AssetAlias,
    Param,
    TriggerRule,
    get_current_context,
    task,
    task_group,
)

from batchvec.batch.job_waits import IndexSensor, ShardOutputSensor
from batchvec.batch.operators import BatchPredictOperator
from batchvec.plan.run_plan import param_schema
from batchvec.tasks import finishing, indexing, model, planning, staging
from batchvec.tasks.pod_resources import executor_config  # pod resources under Kubernetes, else {}

# Each run's report adds an event for the index it wrote, opensearch://<host>/<index>;
# schedule on this alias for every index, or on that Asset for one (README).
INDEX_ALIAS = AssetAlias("batch_embeddings_index")
POLL_INTERVAL = float(os.environ.get("BATCHVEC_POLL_INTERVAL", 30))


def _params() -> dict[str, Param]:
    return {name: Param(spec.pop("default"), **spec)
            for name, spec in ((n, dict(s)) for n, s in param_schema().items())}


with DAG(
    dag_id="batch_embeddings",
    description="Embed documents with SageMaker batch transform via ML Commons; index into k-NN",
    schedule="@daily",
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=4,
    params=_params(),
    # Every task is safe to retry (deterministic names, S3 checkpoints, idempotent _ids).
    default_args={"retries": int(os.environ.get("BATCHVEC_RETRIES", 2)),
                  "retry_delay": timedelta(seconds=float(os.environ.get("BATCHVEC_RETRY_DELAY", 30))),
                  "retry_exponential_backoff": True},
    tags=["embeddings", "opensearch", "sagemaker"],
    doc_md=__doc__,
):

    # dry_run: plan logs the preview, keeps it in its XCom, and skips every other task.
    @task(multiple_outputs=True)
    def plan(params=None):
        return planning.make_plan(params, get_current_context())

    # Staging (README: Staging at scale): list and group the input, each group in parallel,
    # then each shard against the index, then the manifest.
    @task
    def list_input(plan: dict):
        return staging.list_input(plan)["groups"]

    # Mapped over: a task's return value, not a key of the plan's or the manifest's.
    @task
    def shard_numbers(plan: dict):
        return list(range(plan["shards"]))

    @task
    def job_list(manifest: dict):  # batch_predict's kwargs per job group
        return manifest["jobs"]

    @task
    def shard_list(manifest: dict):
        return manifest["shards"]

    @task(max_active_tis_per_dagrun=8, executor_config=executor_config("stage_group"))
    def stage_group(plan: dict, group: int):
        return staging.stage_group(plan, group)

    @task(max_active_tis_per_dagrun=8, executor_config=executor_config("stage_shard"))
    def stage_shard(plan: dict, shard: int):
        return staging.stage_shard(plan, shard)

    @task(multiple_outputs=True)
    def stage(plan: dict):
        return staging.stage(plan)

    @task(multiple_outputs=True)
    def ensure_model(plan: dict):
        return model.ensure_model(plan)

    @task(max_active_tis_per_dagrun=4, executor_config=executor_config("index_shard"))
    def index_shard(plan: dict, index: dict, shard: dict):
        return indexing.index_shard(plan, shard, index)

    # Jobs per group of shards (README: Jobs per shard group): each shard waits for its own
    # group's job only (after a Failed one too: the files it did transform are indexed).
    @task_group(prefix_group_id=False)
    def each_shard(plan: dict, index: dict, shard: dict):
        checked = ShardOutputSensor(task_id="check_outputs", plan=plan, item=shard,
                                    poll_interval=POLL_INTERVAL)
        return index_shard(plan, index, checked.output)

    @task(trigger_rule=TriggerRule.ALL_DONE)
    def restore_index(plan: dict, manifest: dict):
        return indexing.restore_index(plan, manifest)

    # A model switch's new index goes live only when every shard indexed and it verifies.
    @task
    def switch_alias(plan: dict, manifest: dict, index: dict):
        return indexing.switch_alias(plan, manifest, index)

    @task(trigger_rule=TriggerRule.ALL_DONE, outlets=[INDEX_ALIAS])
    def report(plan: dict, manifest: dict):
        return finishing.report(plan, manifest, get_current_context(), INDEX_ALIAS)

    @task
    def cleanup(plan: dict):
        return finishing.cleanup(plan)

    the_plan = plan()
    listed = list_input(the_plan)
    grouped = stage_group.partial(plan=the_plan).expand(group=listed)
    sharded = stage_shard.partial(plan=the_plan).expand(shard=shard_numbers(the_plan))
    grouped >> sharded
    manifest = stage(the_plan)
    sharded >> manifest
    the_model = ensure_model(the_plan)
    jobs = BatchPredictOperator.partial(
        task_id="batch_predict",
        model_id=the_model["model_id"],
        output_s3_uri=the_plan["output_uri"],
        content_type=the_plan["content_type"],
        accept=the_plan["accept"],
        wait_timeout=the_plan["wait_timeout"],
        max_parallel_jobs=the_plan["max_parallel_jobs"],
        poll_interval=POLL_INTERVAL,
        executor_config=executor_config("batch_predict"),
    ).expand_kwargs(job_list(manifest))  # job_group, run_key, input_s3_uri, records_to_embed
    # The index is made as soon as the first group's job ended.
    index = IndexSensor(task_id="prepare_index", plan=the_plan, item=manifest,
                        poll_interval=POLL_INTERVAL).output
    indexed = each_shard.partial(plan=the_plan, index=index).expand(shard=shard_list(manifest))
    restored = restore_index(the_plan, manifest)
    indexed >> restored
    switched = switch_alias(the_plan, manifest, index)
    [indexed, restored] >> switched  # served with its own replicas and refresh interval back
    done = report(the_plan, manifest)
    [jobs, switched] >> done
    done >> cleanup(the_plan)
