"""SQLite persistence for the OpenSearch stand-in: ML Commons objects, indices, documents and
vectors. One connection guarded by a lock (the HTTP server is threaded); WAL so a crash loses
at most the last transaction; vectors as float32 blobs so 100k x 384-d stays compact.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from devstack.opensearch.common import dumps, loads

_SCHEMA = """
CREATE TABLE IF NOT EXISTS kv (ns TEXT, id TEXT, body BLOB, PRIMARY KEY (ns, id));
CREATE TABLE IF NOT EXISTS indices (name TEXT PRIMARY KEY, meta BLOB);
CREATE TABLE IF NOT EXISTS docs (
    idx TEXT, id TEXT, version INTEGER, seq INTEGER, cseq INTEGER, source BLOB,
    PRIMARY KEY (idx, id));
CREATE INDEX IF NOT EXISTS docs_cseq ON docs (idx, cseq);
CREATE TABLE IF NOT EXISTS vectors (
    idx TEXT, field TEXT, id TEXT, cseq INTEGER, vec BLOB, PRIMARY KEY (idx, field, id));
"""
_CHUNK = 900  # stay under SQLite's bound-parameter limit


def _chunks(items: list, size: int = _CHUNK) -> Iterator[list]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


class Store:
    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(_SCHEMA)
        self.lock = threading.RLock()

    def close(self) -> None:
        with self.lock:
            self.db.close()

    @contextmanager
    def transaction(self):
        with self.lock:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                yield self.db
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
            self.db.execute("COMMIT")

    # --- ML Commons objects and cluster state: JSON documents by namespace -------------------
    def kv_get(self, ns: str, id_: str):
        with self.lock:
            row = self.db.execute("SELECT body FROM kv WHERE ns=? AND id=?", (ns, id_)).fetchone()
        return loads(row[0]) if row else None

    def kv_put(self, ns: str, id_: str, obj) -> None:
        with self.lock:
            self.db.execute("INSERT INTO kv VALUES (?, ?, ?) ON CONFLICT (ns, id) DO UPDATE SET "
                            "body=excluded.body", (ns, id_, dumps(obj)))  # keeps creation order

    def kv_delete(self, ns: str, id_: str) -> bool:
        with self.lock:
            return self.db.execute("DELETE FROM kv WHERE ns=? AND id=?", (ns, id_)).rowcount > 0

    def kv_all(self, ns: str) -> list[tuple[str, dict]]:
        with self.lock:
            rows = self.db.execute("SELECT id, body FROM kv WHERE ns=? ORDER BY rowid", (ns,))
            rows = rows.fetchall()
        return [(r[0], loads(r[1])) for r in rows]

    # --- index metadata -------------------------------------------------------------------
    def index_put(self, name: str, meta: dict) -> None:
        with self.lock:
            self.db.execute("INSERT OR REPLACE INTO indices VALUES (?, ?)", (name, dumps(meta)))

    def index_all(self) -> dict[str, dict]:
        with self.lock:
            rows = self.db.execute("SELECT name, meta FROM indices").fetchall()
        return {r[0]: loads(r[1]) for r in rows}

    def index_drop(self, name: str) -> None:
        with self.transaction() as db:
            db.execute("DELETE FROM indices WHERE name=?", (name,))
            db.execute("DELETE FROM docs WHERE idx=?", (name,))
            db.execute("DELETE FROM vectors WHERE idx=?", (name,))

    # --- documents ------------------------------------------------------------------------
    def docs_state(self, idx: str, ids: Iterable[str]) -> dict[str, tuple[int, int, int]]:
        """id -> (version, seq, cseq) for the ids that exist."""
        out: dict[str, tuple[int, int, int]] = {}
        with self.lock:
            for chunk in _chunks(list(dict.fromkeys(ids))):
                marks = ",".join("?" * len(chunk))
                for row in self.db.execute(
                    f"SELECT id, version, seq, cseq FROM docs WHERE idx=? AND id IN ({marks})",
                    (idx, *chunk),
                ):
                    out[row[0]] = (row[1], row[2], row[3])
        return out

    def write(self, idx: str, docs: list[tuple], vectors: list[tuple], drop_vectors: list[tuple],
              deletes: list[str], meta: dict) -> None:
        """One transaction: docs rows (id, version, seq, cseq, source bytes), vector rows
        (field, id, cseq, blob), vector removals (field, id), deleted ids, and the index meta."""
        with self.transaction() as db:
            if deletes:
                for chunk in _chunks(deletes):
                    marks = ",".join("?" * len(chunk))
                    db.execute(f"DELETE FROM docs WHERE idx=? AND id IN ({marks})", (idx, *chunk))
                    db.execute(f"DELETE FROM vectors WHERE idx=? AND id IN ({marks})", (idx, *chunk))
            if docs:
                db.executemany(
                    "INSERT INTO docs VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (idx, id) DO UPDATE SET "
                    "version=excluded.version, seq=excluded.seq, source=excluded.source",
                    [(idx, *d) for d in docs],
                )
            if drop_vectors:
                db.executemany("DELETE FROM vectors WHERE idx=? AND field=? AND id=?",
                               [(idx, f, i) for f, i in drop_vectors])
            if vectors:
                db.executemany("INSERT OR REPLACE INTO vectors VALUES (?, ?, ?, ?, ?)",
                               [(idx, *v) for v in vectors])
            db.execute("INSERT OR REPLACE INTO indices VALUES (?, ?)", (idx, dumps(meta)))

    def doc_get(self, idx: str, id_: str):
        """(version, seq, source dict) or None."""
        with self.lock:
            row = self.db.execute("SELECT version, seq, source FROM docs WHERE idx=? AND id=?",
                                  (idx, id_)).fetchone()
        return (row[0], row[1], loads(row[2])) if row else None

    def docs_by_ids(self, idx: str, ids: list[str], max_cseq: int | None = None) -> dict:
        """id -> (version, seq, source dict), optionally only those visible (cseq <= max_cseq)."""
        out = {}
        vis = "" if max_cseq is None else " AND cseq<=?"
        with self.lock:
            for chunk in _chunks(list(dict.fromkeys(ids))):
                marks = ",".join("?" * len(chunk))
                args = (idx, *chunk) + (() if max_cseq is None else (max_cseq,))
                for row in self.db.execute(
                    f"SELECT id, version, seq, source FROM docs WHERE idx=? AND id IN ({marks}){vis}",
                    args,
                ):
                    out[row[0]] = (row[1], row[2], loads(row[3]))
        return out

    def docs_count(self, idx: str, max_cseq: int) -> int:
        with self.lock:
            return self.db.execute("SELECT COUNT(*) FROM docs WHERE idx=? AND cseq<=?",
                                   (idx, max_cseq)).fetchone()[0]

    def docs_page(self, idx: str, max_cseq: int, offset: int, limit: int) -> list:
        with self.lock:
            rows = self.db.execute(
                "SELECT id, version, seq, source FROM docs WHERE idx=? AND cseq<=? "
                "ORDER BY rowid LIMIT ? OFFSET ?", (idx, max_cseq, limit, offset)).fetchall()
        return [(r[0], r[1], r[2], loads(r[3])) for r in rows]

    def docs_scan(self, idx: str, max_cseq: int) -> list:
        """All visible (id, version, seq, source dict) in index order."""
        with self.lock:
            rows = self.db.execute(
                "SELECT id, version, seq, source FROM docs WHERE idx=? AND cseq<=? ORDER BY rowid",
                (idx, max_cseq)).fetchall()
        return [(r[0], r[1], r[2], loads(r[3])) for r in rows]

    # --- vectors --------------------------------------------------------------------------
    def vectors_for(self, idx: str, ids: list[str]) -> dict[str, dict[str, np.ndarray]]:
        """id -> {field: float32 vector}."""
        out: dict[str, dict[str, np.ndarray]] = {}
        with self.lock:
            for chunk in _chunks(list(dict.fromkeys(ids))):
                marks = ",".join("?" * len(chunk))
                for field, id_, blob in self.db.execute(
                    f"SELECT field, id, vec FROM vectors WHERE idx=? AND id IN ({marks})",
                    (idx, *chunk),
                ):
                    out.setdefault(id_, {})[field] = np.frombuffer(blob, dtype=np.float32)
        return out

    def vectors_matrix(self, idx: str, field: str, dim: int):
        """(ids list, cseq array, float32 matrix) of every vector of a field, in one read."""
        with self.lock:
            rows = self.db.execute(
                "SELECT id, cseq, vec FROM vectors WHERE idx=? AND field=? ORDER BY rowid",
                (idx, field)).fetchall()
        ids = [r[0] for r in rows]
        cseq = np.fromiter((r[1] for r in rows), dtype=np.int64, count=len(rows))
        matrix = np.frombuffer(b"".join(r[2] for r in rows), dtype=np.float32)
        return ids, cseq, matrix.reshape(len(rows), dim) if rows else matrix.reshape(0, dim)
