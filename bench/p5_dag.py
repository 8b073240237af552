"""P5: wall time of the whole DAG on the devstack against the model alone on the same texts.

A fresh devstack (S3, SageMaker running the model in a real model container, the real
OpenSearch node with ML Commons behind its HTTPS front) in a temp dir on random ports,
Airflow configured like the tests' ``airflow_env`` fixture (temp AIRFLOW_HOME, the
devstack's connections and BATCHVEC_* presets, 1 s job polling), the DAG run by
``dag.test()`` in a child process. Everything the DAG does besides embedding (task startup, staging,
waiting, indexing, report) is the overhead this row measures; it includes starting the model
container for the job (~9-17 s here: a fresh devstack has none warm), as SageMaker starts
instances for each job.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

from bench.common import REPO, Row, write_input
from bench.stack import devstack, python_env, run_child

GOAL = 1.25


def airflow_env(state: Path, endpoints: dict) -> dict[str, str]:
    sys.path.insert(0, str(REPO / "scripts"))
    from devstack_connections import airflow_env

    env = python_env(
        AIRFLOW_HOME=str(state / "airflow-home"), AIRFLOW__CORE__LOAD_EXAMPLES="False",
        AIRFLOW__CORE__DAGS_FOLDER=str(REPO / "dags"),
        AIRFLOW__CORE__PLUGINS_FOLDER=str(REPO / "plugins"),
        BATCHVEC_POLL_INTERVAL="1", BATCHVEC_RETRY_DELAY="1",
    )
    env.update(airflow_env(endpoints))
    return env


def migrate(env: dict[str, str]) -> None:
    airflow = str(Path(sys.executable).with_name("airflow"))
    subprocess.run([airflow, "db", "migrate"], env=env, check=True, cwd=REPO,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def run(docs: int) -> Row:
    from devstack import launcher, seed

    with tempfile.TemporaryDirectory(prefix="bench-p5-") as tmp, \
            devstack(launcher.SERVICES) as (state, endpoints):
        path = Path(tmp) / "docs.jsonl"
        write_input(path, docs, unique=True)
        seed.ensure_sagemaker_model(endpoints)
        env = airflow_env(state, endpoints)
        migrate(env)
        alone = run_child(["bench.p5_child", "model", str(path)])
        dag = run_child(["bench.p5_child", "dag", str(path), "bench-p5"], env=env)
    print(f"P5 timeline (start offset s, duration s, task): {dag['timeline']}", file=sys.stderr)
    if "success" not in dag["state"]:
        raise RuntimeError(f"the DAG run ended {dag['state']}: {dag['tasks']}")
    ratio = dag["seconds"] / alone["seconds"]
    slowest = sorted(dag["tasks"].items(), key=lambda kv: -kv[1])[:4]
    return Row(
        key="P5", what=f"orchestration: whole DAG on the devstack vs the model alone "
                       f"({docs:,} docs)",
        unit="s", ours=dag["seconds"], naive_a=alone["seconds"],
        ratios=f"{ratio:.2f}x (a)", goal=f"<= {GOAL}x (a)", met=ratio <= GOAL,
        notes=["P5: (a) the model alone (sentence-transformers on the package's model, the "
               "job's 1 MiB MultiRecord requests in passes of 32, weights preloaded); on the "
               "real node; slowest tasks: "
               + ", ".join(f"{k} {v:.1f}s" for k, v in slowest)],
    )
