"""``plan``: the params resolved into a validated run plan (or a preview, with ``dry_run``),
and the Asset a run's report names."""

from __future__ import annotations

import logging

from batchvec.errors import fail_for_good
from batchvec.hooks.aws import aws_hook, s3_client
from batchvec.hooks.opensearch import OpenSearchDomainHook
from batchvec.plan.run_plan import resolve_plan
from batchvec.settings import OPENSEARCH_CONN_ID
from batchvec.tasks.context import run_date, run_version

log = logging.getLogger(__name__)


def make_plan(params: dict, context: dict) -> dict:
    hook = aws_hook("sagemaker")
    endpoint = hook.conn_config.get_service_endpoint_url
    target = OpenSearchDomainHook(OPENSEARCH_CONN_ID).target()
    try:
        plan = resolve_plan(
            params, dag_id=context["dag"].dag_id, run_id=context["run_id"], ds=run_date(context),
            region=hook.conn_region_name or "us-east-1",
            sagemaker_api_url=endpoint("sagemaker") or "",
            sagemaker_runtime_url=endpoint("sagemaker-runtime") or "",
            opensearch_service=target["service"],
            connector_credentials=target["connector_credentials"],
            version=run_version(context),
        )
    except ValueError as exc:
        raise fail_for_good(str(exc)) from None
    log.info("run %s -> key %s, input %s, staging s3://%s/%s, index %s", plan.run_id,
             plan.run_key, plan.input_uri, plan.bucket, plan.run_prefix, plan.index_name)
    data = {**plan.to_dict(), "staged_input_uri": plan.uri("input/"),
            "output_uri": plan.uri("output/")}
    if plan.dry_run:  # logs the preview, puts it in XCom, skips everything downstream
        _stop_for_preview(data, s3_client(), context)
    return data


def index_asset(base_url: str, index: str):
    """The Asset of one index: ``opensearch://<host>[:<port>]/<index>`` (no credentials:
    the connection's URL is built from host and port only)."""
    from airflow.sdk import Asset

    host = base_url.split("://", 1)[-1].rstrip("/")
    return Asset(uri=f"opensearch://{host}/{index}", name=f"opensearch://{host}/{index}")


def _stop_for_preview(plan: dict, s3, context: dict) -> None:
    """The plan task of a dry run: log the preview, put it in the task's XCom, and end the
    run there, every downstream task skipped (whatever its trigger rule: report and cleanup
    too), the plan task itself successful."""
    from airflow.sdk.exceptions import DownstreamTasksSkipped

    from batchvec.ingest.sources import InputError
    from batchvec.plan import preview

    try:
        found = preview.for_plan(plan, s3)
    except InputError as exc:  # what stage would fail on; a retry cannot fix it
        raise fail_for_good(f"dry run: cannot read input_uri: {exc}") from None
    log.info("dry run: the plan preview (nothing written, no model or job created):\n%s",
             preview.render(found))
    ti = context["ti"]
    ti.xcom_push(key="preview", value=found)
    ti.xcom_push(key="return_value", value={**plan, "preview": found})
    downstream = context["task"].get_flat_relatives(upstream=False)
    raise DownstreamTasksSkipped(tasks=sorted(t.task_id for t in downstream))
