"""P8's measured process: the full run and an all-unchanged rerun of the same input, both
via dag.test() in this one process (prints one JSON line last on stdout).

    python -m bench.p8_child <input.jsonl> <index> <sagemaker model> <sagemaker endpoint>

The rerun gets its own, later logical date (so its own run_id and run key: a new run, not
the first one resumed). Each run's report is read back from S3 (the ``report`` task's
``report_uri``); what P8 needs of it is returned with the run's timings.
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime, timedelta

from bench.p5_child import load_dag, timed_run

DAG_ID = "batch_embeddings"


def report_of(run_id: str) -> dict:
    """The run's report.json, from S3 (where the report task published it)."""
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    from batchvec.hooks.aws import s3_client

    with create_session() as session:
        rows = session.scalars(XComModel.get_many(run_id=run_id, key="return_value",
                                                  task_ids="report", dag_ids=DAG_ID)).all()
        returned = [XComModel.deserialize_value(row) for row in rows]
    if not returned or not returned[0].get("report_uri"):
        raise RuntimeError(f"run {run_id} left no report_uri (its report task did not finish)")
    uri = returned[0]["report_uri"]
    bucket, key = uri.split("://", 1)[1].split("/", 1)
    body = s3_client().get_object(Bucket=bucket, Key=key)["Body"].read()
    return json.loads(body)


def summary_of(report: dict) -> dict:
    extra = report.get("extra") or {}
    return {"totals": report["totals"], "sagemaker_records": report["sagemaker_records"],
            "physical_index": report.get("physical_index"),
            "alias_moved": report.get("alias_moved"), "balanced": report.get("balanced"),
            "batch_job": extra.get("batch_job"), "stage_seconds": report.get("stage_seconds")}


def runs(path: str, index: str, model: str, endpoint: str) -> dict:
    conf = {"input_uri": path, "index_name": index, "metadata_fields": ["lang"],
            "sagemaker_model_name": model, "sagemaker_endpoint_name": endpoint}
    first = datetime.now(UTC).replace(microsecond=0)
    out = {}
    for name, when in (("full", first), ("rerun", None)):
        if when is None:  # later than the first, and not in the future
            when = max(datetime.now(UTC).replace(microsecond=0), first + timedelta(seconds=1))
        result = timed_run(load_dag(), when, conf)
        result["logical_date"] = when.isoformat()
        if "success" in result["state"]:
            result["report"] = summary_of(report_of(result["run_id"]))
        out[name] = result
        print(f"P8 {name}: {json.dumps(result)}", file=sys.stderr, flush=True)
        if "success" not in result["state"]:
            break  # a failed full run leaves nothing meaningful to rerun against
    return out


def main(argv: list[str]) -> None:
    print(json.dumps(runs(*argv[:4])))


if __name__ == "__main__":
    main(sys.argv[1:])
