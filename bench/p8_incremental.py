"""P8: an all-unchanged rerun against the full run of the same documents.

A fresh devstack like P5's (S3, SageMaker, the real OpenSearch node with ML Commons behind its
HTTPS front) with the devstack's hash-embedder-384 model (exact, weightless vectors, so the
model is not what the full run waits on), Airflow configured as P5's. One child process
(bench/p8_child.py) runs the DAG twice via dag.test() on the same input: the full run
(every document created and embedded), then a rerun with a later logical date, which
compares the staged records with the index (one scroll per shard) and sends nothing to
SageMaker. A rerun that sends anything to the model is a bug, not a number: the row raises.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from bench.common import Row, write_input
from bench.p5_dag import airflow_env, migrate
from bench.stack import devstack, run_child

GOAL = 0.5
MODEL = "hash-embedder-384"
INDEX = "bench-p8"


def check(docs: int, out: dict) -> None:
    """Both runs succeeded, the full run embedded and created every document, the rerun
    none and found every one unchanged."""
    for name in ("full", "rerun"):
        if name not in out or "success" not in out[name]["state"]:
            got = out.get(name, {})
            raise RuntimeError(f"the {name} run ended {got.get('state', 'not run')}: "
                               f"{got.get('tasks')}")
    full, rerun = out["full"]["report"], out["rerun"]["report"]
    if full["sagemaker_records"] != docs or full["totals"]["created"] != docs:
        raise RuntimeError(f"the full run sent {full['sagemaker_records']} records to the model "
                           f"and created {full['totals']['created']}, not {docs}: {full}")
    if rerun["sagemaker_records"] != 0:
        raise RuntimeError(f"the all-unchanged rerun sent {rerun['sagemaker_records']} "
                           f"records to the model, not 0: {rerun}")
    if rerun["totals"]["unchanged"] != docs or rerun["totals"]["created"] != 0:
        raise RuntimeError(f"the rerun found {rerun['totals']['unchanged']} unchanged and "
                           f"created {rerun['totals']['created']}, not {docs} and 0: {rerun}")


def run(docs: int) -> Row:
    from devstack import launcher, seed

    with tempfile.TemporaryDirectory(prefix="bench-p8-") as tmp, \
            devstack(launcher.SERVICES) as (state, endpoints):
        path = Path(tmp) / "docs.jsonl"
        write_input(path, docs, unique=True)
        model, endpoint = seed.ensure_hash_model(endpoints, MODEL)
        env = airflow_env(state, endpoints)
        migrate(env)
        out = run_child(["bench.p8_child", str(path), INDEX, model, endpoint], env=env)
    for name in ("full", "rerun"):
        if name in out:
            print(f"P8 {name} timeline (start offset s, duration s, task): "
                  f"{out[name]['timeline']}", file=sys.stderr)
            print(f"P8 {name} report: {out[name].get('report')}", file=sys.stderr)
    check(docs, out)
    full, rerun = out["full"], out["rerun"]
    ratio = rerun["seconds"] / full["seconds"]
    slowest = sorted(rerun["tasks"].items(), key=lambda kv: -kv[1])[:4]
    return Row(
        key="P8", what=f"incremental: all-unchanged rerun vs the full run ({docs:,} docs)",
        unit="s", ours=rerun["seconds"], naive_a=full["seconds"],
        ratios=f"{ratio:.2f}x (a)", goal=f"<= {GOAL}x (a)", met=ratio <= GOAL,
        notes=[f"P8: (a) the full run of the same input on a fresh index; model {MODEL} "
               "(devstack hash embedder: exact, weightless vectors, so the model is not the "
               f"bottleneck); sagemaker_records full {full['report']['sagemaker_records']:,}, "
               f"rerun {rerun['report']['sagemaker_records']} "
               f"({rerun['report']['totals']['unchanged']:,} unchanged); rerun's slowest "
               "tasks: " + ", ".join(f"{k} {v:.1f}s" for k, v in slowest)],
    )
