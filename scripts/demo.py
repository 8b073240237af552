"""`make demo`: run the batch_embeddings DAG on the devstack and print its report."""

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

if not (REPO / "dags" / "batch_embeddings.py").exists():
    sys.exit("make demo: the batch_embeddings DAG has not landed yet (issue 4); nothing to run.")
