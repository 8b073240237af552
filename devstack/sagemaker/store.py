"""The SageMaker service's state in SQLite (`<state dir>/sagemaker.db`): models, endpoint
configs and endpoints, transform jobs (names are unique forever, as in AWS: there is no
delete) and the input files each job has finished, so a job resumed after a restart skips
what it already wrote."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path

ACTIVE = ("InProgress", "Stopping")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS models (
    name TEXT PRIMARY KEY COLLATE NOCASE,
    arn TEXT NOT NULL,
    request TEXT NOT NULL,
    creation_time REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS jobs (
    name TEXT PRIMARY KEY COLLATE NOCASE,
    arn TEXT NOT NULL,
    status TEXT NOT NULL,
    failure_reason TEXT,
    request TEXT NOT NULL,
    container TEXT,
    faults TEXT NOT NULL DEFAULT '{}',
    creation_time REAL NOT NULL,
    start_time REAL,
    end_time REAL,
    last_modified REAL NOT NULL,
    records INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS endpoint_configs (
    name TEXT PRIMARY KEY COLLATE NOCASE,
    arn TEXT NOT NULL,
    request TEXT NOT NULL,
    creation_time REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS endpoints (
    name TEXT PRIMARY KEY COLLATE NOCASE,
    arn TEXT NOT NULL,
    config TEXT NOT NULL,
    status TEXT NOT NULL,
    failure_reason TEXT,
    creation_time REAL NOT NULL,
    last_modified REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_status ON jobs(status);
CREATE TABLE IF NOT EXISTS job_files (
    job TEXT NOT NULL COLLATE NOCASE,
    key TEXT NOT NULL,
    records INTEGER NOT NULL,
    PRIMARY KEY (job, key)
);
"""

_JSON_COLUMNS = ("request", "container", "faults")


class Store:
    def __init__(self, state_dir: Path):
        state_dir.mkdir(parents=True, exist_ok=True)
        # One connection shared by the HTTP threads and the workers, serialised by a lock:
        # the load is a few small writes per second, and this keeps SQLite's rules simple.
        self._db = sqlite3.connect(state_dir / "sagemaker.db", check_same_thread=False,
                                   isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._lock = threading.Lock()
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)

    def _query(self, sql: str, args=()) -> list[dict]:
        with self._lock:
            rows = self._db.execute(sql, args).fetchall()
        out = []
        for row in rows:
            d = dict(row)
            for col in _JSON_COLUMNS:
                if d.get(col) is not None:
                    d[col] = json.loads(d[col])
            out.append(d)
        return out

    def _exec(self, sql: str, args=()) -> int:
        with self._lock:
            return self._db.execute(sql, args).rowcount

    # models ---------------------------------------------------------------------------------
    def add_model(self, name: str, arn: str, request: dict) -> bool:
        try:
            self._exec("INSERT INTO models VALUES (?, ?, ?, ?)",
                       (name, arn, json.dumps(request), time.time()))
            return True
        except sqlite3.IntegrityError:
            return False

    def model(self, name: str) -> dict | None:
        rows = self._query("SELECT * FROM models WHERE name = ?", (name,))
        return rows[0] if rows else None

    def delete_model(self, name: str) -> bool:
        return self._exec("DELETE FROM models WHERE name = ?", (name,)) > 0

    # endpoint configs and endpoints -------------------------------------------------------
    def add_endpoint_config(self, name: str, arn: str, request: dict) -> bool:
        try:
            self._exec("INSERT INTO endpoint_configs VALUES (?, ?, ?, ?)",
                       (name, arn, json.dumps(request), time.time()))
            return True
        except sqlite3.IntegrityError:
            return False

    def endpoint_config(self, name: str) -> dict | None:
        rows = self._query("SELECT * FROM endpoint_configs WHERE name = ?", (name,))
        return rows[0] if rows else None

    def delete_endpoint_config(self, name: str) -> bool:
        return self._exec("DELETE FROM endpoint_configs WHERE name = ?", (name,)) > 0

    def add_endpoint(self, name: str, arn: str, config: str) -> bool:
        now = time.time()
        try:
            self._exec("INSERT INTO endpoints VALUES (?, ?, ?, 'Creating', NULL, ?, ?)",
                       (name, arn, config, now, now))
            return True
        except sqlite3.IntegrityError:
            return False

    def endpoint(self, name: str) -> dict | None:
        rows = self._query("SELECT * FROM endpoints WHERE name = ?", (name,))
        return rows[0] if rows else None

    def endpoints(self) -> list[dict]:
        return self._query("SELECT * FROM endpoints ORDER BY creation_time")

    def set_endpoint(self, name: str, status: str, *, config: str | None = None,
                     failure_reason: str | None = None) -> None:
        self._exec("UPDATE endpoints SET status = ?, config = COALESCE(?, config),"
                   " failure_reason = ?, last_modified = ? WHERE name = ?",
                   (status, config, failure_reason, time.time(), name))

    def delete_endpoint(self, name: str) -> bool:
        return self._exec("DELETE FROM endpoints WHERE name = ?", (name,)) > 0

    # jobs -----------------------------------------------------------------------------------
    def add_job(self, name: str, arn: str, request: dict, container: dict | None,
                faults: dict) -> bool:
        now = time.time()
        try:
            self._exec(
                "INSERT INTO jobs (name, arn, status, request, container, faults, creation_time,"
                " last_modified) VALUES (?, ?, 'InProgress', ?, ?, ?, ?, ?)",
                (name, arn, json.dumps(request), json.dumps(container), json.dumps(faults), now, now),
            )
            return True
        except sqlite3.IntegrityError:
            return False

    def job(self, name: str) -> dict | None:
        rows = self._query("SELECT * FROM jobs WHERE name = ?", (name,))
        return rows[0] if rows else None

    def jobs(self, status: str | None = None) -> list[dict]:
        if status:
            return self._query("SELECT * FROM jobs WHERE status = ? ORDER BY creation_time",
                               (status,))
        return self._query("SELECT * FROM jobs ORDER BY creation_time")

    def set_status(self, name: str, status: str, *, only_from: tuple[str, ...] = ACTIVE,
                   failure_reason: str | None = None) -> bool:
        """Move a job to `status` if it is in one of `only_from` (so a stop and the end of the
        work cannot overwrite each other); terminal states get their end time."""
        now = time.time()
        end = now if status in ("Completed", "Failed", "Stopped") else None
        marks = ",".join("?" * len(only_from))
        return self._exec(
            f"UPDATE jobs SET status = ?, failure_reason = COALESCE(?, failure_reason),"
            f" end_time = COALESCE(?, end_time), last_modified = ?"
            f" WHERE name = ? AND status IN ({marks})",
            (status, failure_reason, end, now, name, *only_from),
        ) > 0

    def mark_started(self, name: str) -> None:
        now = time.time()
        self._exec("UPDATE jobs SET start_time = COALESCE(start_time, ?), last_modified = ?"
                   " WHERE name = ?", (now, now, name))

    def status(self, name: str) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT status FROM jobs WHERE name = ?", (name,)).fetchone()
        return row[0] if row else None

    def file_done(self, job: str, key: str, records: int) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO job_files VALUES (?, ?, ?)", (job, key, records))
            self._db.execute("UPDATE jobs SET records = (SELECT COALESCE(SUM(records), 0) FROM"
                             " job_files WHERE job = ?), last_modified = ? WHERE name = ?",
                             (job, time.time(), job))

    def files_done(self, job: str) -> dict[str, int]:
        rows = self._query("SELECT key, records FROM job_files WHERE job = ?", (job,))
        return {r["key"]: r["records"] for r in rows}

    def close(self) -> None:
        with self._lock:
            self._db.close()
