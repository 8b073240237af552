"""P5's measured processes (each prints one JSON line last on stdout).

    python -m bench.p5_child dag <input.jsonl> <index>    the whole DAG via dag.test()
    python -m bench.p5_child model <input.jsonl>          the model alone, same texts

The model alone is what the transform job's model container runs, without the container:
sentence-transformers on the package's model (`batchvec.model.container.package`), fed the
job's MultiRecord requests (records packed up to MaxPayloadInMB = 1 MiB) in forward passes
of 32 (the container's BATCHVEC_BATCH_SIZE), all cores; loading the weights is not timed
(the container loads them before its first request).
"""

from __future__ import annotations

import json
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import orjson

REPO = Path(__file__).resolve().parents[1]


def model(path: str) -> dict:
    import torch
    from sentence_transformers import SentenceTransformer

    from batchvec.model.container import package as pkg
    from bench.p6_container import _bodies

    torch.set_num_threads(os.cpu_count() or 1)
    texts = [orjson.loads(line)["text"] for line in Path(path).read_bytes().splitlines()]
    st = SentenceTransformer(str(pkg.default_model_dir()), device="cpu")
    st.encode(texts[:32], batch_size=32)  # warm, as the container's ping and first request do
    started = time.perf_counter()
    for body, _n in _bodies(texts):
        st.encode([orjson.loads(line) for line in body.split(b"\n")], batch_size=32,
                  normalize_embeddings=True)
    return {"seconds": time.perf_counter() - started, "texts": len(texts)}


def load_dag():
    """The batch_embeddings DAG, parsed afresh (dag.test() leaves a run's conf in its params)."""
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(REPO / "dags"))
    if bag.import_errors:
        raise RuntimeError(f"DAG import errors: {bag.import_errors}")
    return bag.dags["batch_embeddings"]


def dag(path: str, index: str) -> dict:
    when = datetime.now(UTC).replace(microsecond=0)
    conf = {"input_uri": path, "index_name": index, "metadata_fields": ["lang"]}
    return timed_run(load_dag(), when, conf)


def timed_run(the_dag, when: datetime, conf: dict) -> dict:
    """One dag.test() run at logical date ``when``: wall seconds, state, per-task durations
    (a failed or retried task is named with its state and try) and the timeline."""
    started = time.perf_counter()
    run = the_dag.test(run_after=when, logical_date=when, run_conf=conf)
    wall = time.perf_counter() - started
    tasks, timeline = {}, []
    for ti in run.get_task_instances():
        if ti.start_date and ti.end_date:
            key = ti.task_id if ti.map_index < 0 else f"{ti.task_id}[{ti.map_index}]"
            tasks[key] = round((ti.end_date - ti.start_date).total_seconds(), 1)
            if str(ti.state) != "success" or ti.try_number > 1:
                tasks[key + f" ({ti.state}, try {ti.try_number})"] = tasks.pop(key)
                key += f" ({ti.state}, try {ti.try_number})"
            timeline.append((round((ti.start_date - run.start_date).total_seconds(), 1),
                             tasks[key], key))
    return {"seconds": wall, "state": str(run.state), "run_id": run.run_id, "tasks": tasks,
            "timeline": sorted(timeline)}


def main(argv: list[str]) -> None:
    out = model(argv[1]) if argv[0] == "model" else dag(argv[1], argv[2])
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1:])
