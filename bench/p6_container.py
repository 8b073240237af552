"""P6: passages/s of the model container's handler (batchvec's code/inference.py under the
real HF inference toolkit and multi-model-server, one worker, as the devstack runs it)
against sentence-transformers' own `encode` in this process, on the same ~300-char texts,
CPU, the same number of torch threads on each side.

Ours is driven as batch transform drives it: MultiRecord application/jsonlines requests of
up to 1 MiB, one at a time; the time includes HTTP, parsing and the JSON answer. The
container is started once (its start time is noted) and warmed with one request.
"""

from __future__ import annotations

import io
import os
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
import orjson

from bench.common import Row, text_of

GOAL = 0.9  # ours at least 0.9x the passages/s of encode
MIB = 1 << 20


def _bodies(texts: list[str], limit: int = MIB) -> list[tuple[bytes, int]]:
    bodies, batch, size = [], [], 0
    for t in texts:
        rec = orjson.dumps(t)
        if batch and size + len(rec) + 1 > limit:
            bodies.append((b"\n".join(batch), len(batch)))
            batch, size = [], 0
        batch.append(rec)
        size += len(rec) + 1
    if batch:
        bodies.append((b"\n".join(batch), len(batch)))
    return bodies


def run(docs: int, repeats: int) -> Row:
    import torch
    from sentence_transformers import SentenceTransformer

    from batchvec.model.container import package as pkg
    from devstack.container import venv
    from devstack.container.process import Container

    threads = os.cpu_count() or 1
    torch.set_num_threads(threads)
    texts = [text_of(i) for i in range(docs)]
    bodies = _bodies(texts)
    with tempfile.TemporaryDirectory(prefix="bench-p6-") as tmp:
        model_dir = Path(tmp) / "model"
        with tarfile.open(fileobj=io.BytesIO(pkg.build(pkg.default_model_dir()).data)) as tar:
            tar.extractall(model_dir, filter="data")
        env = {"SAGEMAKER_MODEL_SERVER_WORKERS": "1", "SAGEMAKER_MODEL_SERVER_TIMEOUT": "600",
               "MMS_MAX_RESPONSE_SIZE": str(200 * MIB), "BATCHVEC_BATCH_SIZE": "32"}
        container = Container(venv.ensure(), Path(tmp) / "c", model_dir, env).start()
        try:
            st = SentenceTransformer(str(pkg.default_model_dir()), device="cpu")
            st.encode(texts[:64], batch_size=32)
            container.invoke(bodies[0][0][:20_000].rsplit(b"\n", 1)[0], "application/jsonlines",
                             "application/jsonlines", 600)  # warm-up
            ours_t, st_t, got = [], [], []
            for _ in range(repeats):  # round-robin: load from other processes hits both
                started = time.perf_counter()
                got = []
                for body, _n in bodies:
                    status, data, _ = container.invoke(body, "application/jsonlines",
                                                       "application/jsonlines", 600)
                    assert status == 200, data[:300]
                    got.extend(orjson.loads(line) for line in data.split(b"\n"))
                ours_t.append(time.perf_counter() - started)
                started = time.perf_counter()
                want = st.encode(texts, batch_size=32, normalize_embeddings=True)
                st_t.append(time.perf_counter() - started)
        finally:
            container.stop()
    got = np.asarray(got, dtype=np.float32)
    cos = float((got * want).sum(1).min())
    ours, naive = docs / float(np.median(ours_t)), docs / float(np.median(st_t))
    return Row(
        key="P6", what=f"container handler vs sentence-transformers encode ({docs:,} passages, "
        f"~300 chars, CPU, {threads} threads)", unit="passages/s", ours=ours, naive_a=naive,
        ratios=f"{ours / naive:.2f}x (a)", goal=f">= {GOAL}x (a), same vectors",
        met=ours >= GOAL * naive and cos >= 0.9999,
        notes=[f"P6: container start {container.started_s:.1f}s (model loaded); "
               f"{len(bodies)} MultiRecord request(s) of <= 1 MiB; min cosine to encode {cos:.6f}"])
