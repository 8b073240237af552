"""make demo's progress lines: task transitions from Airflow's DB, progress from its log."""

from __future__ import annotations

import sqlite3
import sys
from pathlib import Path

from tests.helpers.paths import REPO

sys.path.insert(0, str(REPO / "scripts"))

from demo_progress import ProgressTail, TaskWatcher  # noqa: E402


def make_db(path: Path) -> sqlite3.Connection:
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE dag_run (id INTEGER PRIMARY KEY, dag_id TEXT, run_id TEXT)")
    con.execute("CREATE TABLE task_instance (dag_id TEXT, run_id TEXT, task_id TEXT, "
                "map_index INTEGER, state TEXT, start_date TEXT, end_date TEXT)")
    con.execute("INSERT INTO dag_run (dag_id, run_id) VALUES ('d', 'old')")
    con.commit()
    return con


def test_one_line_per_task_start_and_end_with_its_duration(tmp_path):
    con = make_db(tmp_path / "airflow.db")
    lines: list[str] = []
    con.execute("INSERT INTO task_instance VALUES ('d', 'old', 'plan', -1, 'failed', NULL, NULL)")
    con.commit()
    watcher = TaskWatcher(tmp_path / "airflow.db", "d", 0, out=lines.append)
    watcher.poll()
    assert lines == []  # an earlier demo's run, already in the DB, is not this one
    con.execute("INSERT INTO dag_run (dag_id, run_id) VALUES ('d', 'new')")
    con.execute("INSERT INTO task_instance VALUES ('d', 'new', 'plan', -1, 'queued', NULL, NULL)")
    con.commit()
    watcher.poll()
    assert lines == []  # queued is bookkeeping; the old run is not this one
    con.execute("UPDATE task_instance SET state='running', start_date='2026-01-01 00:00:00' "
                "WHERE run_id='new'")
    con.execute("INSERT INTO task_instance VALUES ('d', 'new', 'index_shard', 1, 'running', "
                "'2026-01-01 00:00:01', NULL)")
    con.commit()
    watcher.poll()
    watcher.poll()  # unchanged: nothing new
    con.execute("UPDATE task_instance SET state='success', end_date='2026-01-01 00:00:02.500000' "
                "WHERE task_id='plan'")
    con.commit()
    watcher.poll()
    assert [ln.split() for ln in lines] == [
        ["plan", "started"], ["index_shard[1]", "started"], ["plan", "success", "2.5s"]]


def test_progress_lines_are_picked_out_of_the_log_as_they_are_written(tmp_path):
    log = tmp_path / "airflow.log"
    lines: list[str] = []
    tail = ProgressTail(log, out=lines.append)
    log.write_bytes(b"INFO some airflow chatter\n"
                    b"[x] INFO - staging: 10 records (0 rejected), 1.0 MB [batchvec.tasks.staging] "
                    b"loc=steps.py:107\n"
                    b"job k: RUNNING (SageMaker InProgress) after 3s [batchvec.batch.triggers] loc=t.py:1\n"
                    b"shard part-0: 12/40 docs sent (half a li")
    tail.read_new()
    assert lines == ["      staging: 10 records (0 rejected), 1.0 MB",
                     "      job k: RUNNING (SageMaker InProgress) after 3s"]
    with open(log, "ab") as fh:
        fh.write(b"ne)\n")
    tail.read_new()
    assert lines[-1] == "      shard part-0: 12/40 docs sent (half a line)"
