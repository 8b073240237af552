"""What `make demo` shows while the DAG runs: one line per task as it starts and ends (with
its duration), and the pipeline's own progress lines for long steps, while Airflow's full
log goes to a file.

Task states come from the run's rows in Airflow's metadata DB (SQLite, read-only), so the
lines say what Airflow itself recorded; progress lines are picked out of the log file.
"""

from __future__ import annotations

import re
import sqlite3
import threading
import time
from datetime import datetime
from pathlib import Path

# The library's progress lines (staging, the job's status changes, bulk indexing).
PROGRESS = re.compile(r"(staging: \d|job \S+: \S+ \(SageMaker |shard \S+: [\d,]+/[\d,]+ docs sent)")
_TERMINAL = {"success", "failed", "upstream_failed", "skipped", "removed"}
_SHOWN = {"running": "started", "deferred": "waiting (deferred to the triggerer)",
          "up_for_retry": "failed, will retry"}
_LOG_SUFFIX = re.compile(r"\s+\[[\w.]+\]\s+loc=\S+\s*$")  # structlog's logger and location


def _seconds(start: str | None, end: str | None) -> float | None:
    if not start or not end:
        return None
    parse = lambda v: datetime.fromisoformat(v.replace(" ", "T"))  # noqa: E731
    return (parse(end) - parse(start)).total_seconds()


class TaskWatcher:
    """Polls the task instances of the newest run of `dag_id` started after `since`."""

    def __init__(self, db: Path, dag_id: str, since: float, out=print, every: float = 0.5):
        self.db, self.dag_id, self.since, self.out, self.every = db, dag_id, since, out, every
        self.seen: dict[tuple[str, int], str] = {}
        self.before = self._last_run_id()  # runs up to this one are earlier demos: not shown
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.poll()  # the last transitions, after the run ended

    def _loop(self) -> None:
        while not self._stop.wait(self.every):
            try:
                self.poll()
            except sqlite3.Error:
                pass  # the DB is being migrated or written: next round

    def _last_run_id(self) -> int:
        if not self.db.exists():
            return 0
        try:
            with sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=1) as con:
                found = con.execute("SELECT MAX(id) FROM dag_run WHERE dag_id = ?",
                                    (self.dag_id,)).fetchone()
        except sqlite3.Error:  # no tables yet
            return 0
        return found[0] or 0

    def rows(self) -> list[tuple]:
        if not self.db.exists():
            return []
        with sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=1) as con:
            run = con.execute(
                "SELECT run_id FROM dag_run WHERE dag_id = ? AND id > ? ORDER BY id DESC LIMIT 1",
                (self.dag_id, self.before)).fetchone()
            if run is None:
                return []
            return con.execute(
                "SELECT task_id, map_index, state, start_date, end_date FROM task_instance "
                "WHERE dag_id = ? AND run_id = ? ORDER BY start_date", (self.dag_id, run[0])
            ).fetchall()

    def poll(self) -> None:
        for task_id, map_index, state, start, end in self.rows():
            key = (task_id, map_index)
            if state is None or self.seen.get(key) == state:
                continue
            self.seen[key] = state
            name = task_id if map_index < 0 else f"{task_id}[{map_index}]"
            took = _seconds(start, end)
            if state in _TERMINAL:
                self.out(f"  {name:<18} {state:<16}" + (f"{took:6.1f}s" if took is not None else ""))
            elif state in _SHOWN:  # queued / scheduled are Airflow's bookkeeping: not shown
                self.out(f"  {name:<18} {_SHOWN[state]}")


class ProgressTail:
    """Echoes the pipeline's progress lines from Airflow's log file as they are written."""

    def __init__(self, log: Path, out=print, every: float = 0.5):
        self.log, self.out, self.every = log, out, every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._pos = 0

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _loop(self) -> None:
        while not self._stop.wait(self.every):
            self.read_new()

    def read_new(self) -> None:
        if not self.log.exists():
            return
        with open(self.log, "rb") as fh:
            fh.seek(self._pos)
            data = fh.read()
        cut = data.rfind(b"\n") + 1  # only whole lines; the rest next round
        self._pos += cut
        for raw in data[:cut].decode(errors="replace").splitlines():
            m = PROGRESS.search(raw)
            if m:
                self.out("      " + _LOG_SUFFIX.sub("", raw[m.start():]).strip()[:160])


def watch(db: Path, log: Path, dag_id: str, out=print):
    """Start both watchers; returns a function that stops them."""
    tasks, tail = TaskWatcher(db, dag_id, time.time(), out), ProgressTail(log, out)
    tasks.start()
    tail.start()

    def stop() -> None:
        tail.stop()
        tail.read_new()
        tasks.stop()

    return stop
