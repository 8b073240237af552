"""`make demo`: the batch_embeddings DAG on the devstack, end to end, with a report.

Starts the devstack (unless it is already running), runs `airflow dags test` on the sample
data (or INPUT=... with its own field names and format), shows one line per task and the
pipeline's progress while Airflow's own log goes to a file, then prints the run report and
the top hits of two natural-language neural queries, stops what it started, and exits
non-zero if the accounting is off or the run failed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import requests  # noqa: E402
from demo_progress import watch  # noqa: E402

from batchvec.report.accounting import RunReport, render_table  # noqa: E402
from devstack import config, launcher, seed  # noqa: E402
from devstack_connections import airflow_env as devstack_airflow_env  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tools"), str(REPO / "plugins"), str(REPO / "scripts")]

QUERIES = ["a cat sleeping in the sun", "what happened to interest rates and shares"]


def airflow_env(state: Path, endpoints: dict) -> dict:
    env = dict(os.environ)
    home = state / "airflow-home"
    env.update(
        AIRFLOW_HOME=str(home), AIRFLOW__CORE__DAGS_FOLDER=str(REPO / "dags"),
        AIRFLOW__CORE__PLUGINS_FOLDER=str(REPO / "plugins"), AIRFLOW__CORE__LOAD_EXAMPLES="False",
        BATCHVEC_POLL_INTERVAL="2",
    )
    env.update(devstack_airflow_env(endpoints))
    return env


def run_dag(env: dict, conf: dict, log_path: Path) -> int:
    """`airflow dags test`, its output to `log_path`; task and progress lines on stdout."""
    airflow = str(Path(sys.executable).with_name("airflow"))
    home = Path(env["AIRFLOW_HOME"])
    if not (home / "airflow.db").exists():
        print("demo: initialising the Airflow metadata DB (first run only)")
        subprocess.run([airflow, "db", "migrate"], env=env, check=True, stdout=subprocess.DEVNULL)
    print(f"demo: airflow dags test batch_embeddings -c '{json.dumps(conf)}'")
    print(f"demo: Airflow's log: {log_path}")
    stop = watch(home / "airflow.db", log_path, "batch_embeddings")
    try:
        with open(log_path, "wb") as log:
            return subprocess.run(
                [airflow, "dags", "test", "batch_embeddings", "-c", json.dumps(conf)],
                env=env, stdout=log, stderr=subprocess.STDOUT).returncode
    finally:
        stop()


def latest_report(endpoints: dict, since: float) -> dict | None:
    import boto3

    s3 = boto3.client("s3", endpoint_url=endpoints["s3"], region_name=endpoints["region"],
                      aws_access_key_id=endpoints["aws_access_key_id"],
                      aws_secret_access_key=endpoints["aws_secret_access_key"])
    newest = None
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=endpoints["bucket"], Prefix="runs/"):
        for obj in page.get("Contents", []):
            if obj["Key"].endswith("/report.json") and obj["LastModified"].timestamp() >= since - 5:
                if newest is None or obj["LastModified"] > newest["LastModified"]:
                    newest = obj
    if newest is None:
        return None
    return json.loads(s3.get_object(Bucket=endpoints["bucket"], Key=newest["Key"])["Body"].read())


def show_queries(endpoints: dict, report: dict, vector_field: str = "embedding") -> None:
    auth = (endpoints["opensearch_user"], endpoints["opensearch_password"])
    for query in QUERIES:
        body = {"size": 3, "_source": ["text"], "query": {"neural": {vector_field: {
            "query_text": query, "model_id": report["model_id"], "k": 3}}}}
        resp = requests.post(f"{endpoints['opensearch']}/{report['index']}/_search", json=body,
                             auth=auth, timeout=60, verify=endpoints["opensearch_ca"])
        resp.raise_for_status()
        print(f"\nneural query: {query!r}")
        for hit in resp.json()["hits"]["hits"]:
            print(f"  {hit['_score']:.3f}  {hit['_id']:<10} {hit['_source']['text']}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--input", default=str(REPO / "include" / "sample" / "documents.jsonl"))
    parser.add_argument("--index", default="demo-embeddings")
    parser.add_argument("--id-field", default="id", help="the input's id field (ID_FIELD)")
    parser.add_argument("--text-field", default="text", help="the input's text field (TEXT_FIELD)")
    parser.add_argument("--metadata", default=None,
                        help="comma-separated fields copied into each document (METADATA); "
                        "default: topic for the sample, none for your own input")
    parser.add_argument("--format", default="auto", dest="input_format",
                        help="auto, jsonl, jsonl.gz, parquet or csv (FORMAT)")
    args = parser.parse_args()
    sample = args.input == parser.get_default("input")
    metadata = args.metadata if args.metadata is not None else ("topic" if sample else "")
    state = config.state_dir()
    already = any(launcher.status(state).values())
    started = time.time()
    endpoints = launcher.up(state)
    print(f"demo: devstack {'already running' if already else 'started'} ({state})")
    try:
        seed.ensure_sagemaker_model(endpoints)
        conf = {"input_uri": args.input, "index_name": args.index, "input_format": args.input_format,
                "id_field": args.id_field, "text_field": args.text_field,
                "metadata_fields": [m.strip() for m in metadata.split(",") if m.strip()]}
        log_path = state / "demo-airflow.log"
        rc = run_dag(airflow_env(state, endpoints), conf, log_path)
        report = latest_report(endpoints, started)
        if report is None:
            print(f"demo: the run wrote no report; Airflow's log says why: {log_path}",
                  file=sys.stderr)
            return 1
        (state / "last-report.json").write_text(json.dumps(report, indent=2))
        totals = report["totals"]
        print("\n== run report (.devstack/last-report.json)")
        print(render_table(RunReport.from_dict(report)))
        written = totals.get("created", 0) + totals.get("updated", 0)
        if report.get("model_id") and written + totals.get("unchanged", 0):
            show_queries(endpoints, report)
        smoke = report.get("extra", {}).get("smoke_query") or {}
        # A rerun of unchanged input writes nothing (and sends nothing to SageMaker): no smoke
        # query to run, and nothing wrong.
        ok = rc == 0 and report.get("balanced") and (smoke.get("ok") or not written)
        print(f"\ndemo: {'OK' if ok else 'FAILED'}: records_in={totals['records_in']} "
              f"indexed={written} unchanged={totals.get('unchanged', 0)} "
              f"rejected={totals['rejected_total']} failed={totals['failed_total']} "
              f"sent_to_sagemaker={report.get('sagemaker_records', 0)} "
              f"balanced={report.get('balanced')} "
              f"smoke_query={'ok' if smoke.get('ok') else ('not needed' if not written else 'FAILED')}")
        return 0 if ok else 1
    finally:
        if not already:
            launcher.down(state)
            print("demo: devstack stopped")


if __name__ == "__main__":
    sys.exit(main())
