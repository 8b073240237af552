"""Sample inputs for the preview tests: tests/unit/plan/test_preview.py,
tests/integration/test_preview.py and tests/dags/test_dag_preview.py."""

from __future__ import annotations

import io
import json
import random

# The estimate from ~1 MiB of a few files, on records of varying length: within 5%.
TOLERANCE = 0.05


def records(seed: int, n: int, prefix: str = "d") -> list[dict]:
    rng = random.Random(seed)  # hex text: gzip cannot shrink it much, so a .gz passes 1 MiB
    return [{"id": f"{prefix}-{i}", "text": rng.randbytes(rng.randint(40, 160)).hex()}
            for i in range(n)]


def jsonl(docs: list[dict], blank_lines: int = 0) -> bytes:
    return ("\n".join(json.dumps(d) for d in docs) + "\n" + "\n" * blank_lines).encode()


def parquet(docs: list[dict]) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(docs), buf, row_group_size=1000)
    return buf.getvalue()
