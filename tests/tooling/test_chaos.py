"""`make chaos`, lighter: three runs under a real Airflow (scheduler + LocalExecutor +
triggerer), one with an index_shard runner SIGKILLed mid-bulk, one with batch_predict
SIGKILLed while its `_batch_predict` request is in flight, and one with a stage_group runner
SIGKILLed between its segment commits. Airflow's retries must finish the runs with nothing
lost or duplicated and no job left running, the stage_group retry must skip what the dead try
committed; and the harness must leave no process behind. The full 20-run version is
`make chaos`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from chaos import checks
from tests.helpers.paths import REPO

pytestmark = [pytest.mark.devstack, pytest.mark.airflow]



def leftovers(work: Path) -> list[str]:
    """Processes still running in the session's work dir (how the harness marks its own)."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if proc.cwd() == str(work) or str(work) in " ".join(proc.info["cmdline"] or ()):
                found.append(f"{proc.pid} {' '.join(proc.info['cmdline'] or ())[:120]}")
        except (psutil.Error, OSError):
            continue
    return found


def test_killed_runs_are_finished_by_retries_with_nothing_lost_or_duplicated(tmp_path):
    work = tmp_path / "chaos"
    cmd = [sys.executable, str(REPO / "scripts" / "chaos.py"), "--runs", "3", "--seed", "5",
           "--records", "100", "--modes",
           "index_shard_bulk,batch_predict_submit,stage_group_mid_file", "--dir", str(work)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env, cwd=REPO)
    try:
        out, _ = proc.communicate(timeout=780)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)  # the harness stops its stack on SIGTERM
        out, _ = proc.communicate(timeout=90)
        pytest.fail(f"chaos did not finish in 780s:\n{out[-4000:]}")
    lines = out.strip().splitlines()
    result = next((ln for ln in reversed(lines) if ln.startswith("runs=")), None)
    assert result is not None, out[-4000:]
    assert checks.parse_result_line(result) == {"runs": 3, "lost": 0, "duplicated": 0,
                                                "orphan_jobs": 0}, out[-4000:]
    assert proc.returncode == 0, out[-4000:]
    runs = [ln for ln in lines if ln.startswith("chaos: run ")]
    assert len(runs) == 3 and all("-> success" in ln for ln in runs), out[-4000:]
    assert "killed index_shard[" in runs[0] and "mid-bulk" in runs[0], runs[0]
    # batch_predict is mapped over the run's two job groups: one group's try was killed
    assert "killed batch_predict[" in runs[1] and "in flight" in runs[1], runs[1]
    # The killed task took a second try (a third is possible: Airflow's own defer-exit race,
    # apache/airflow#71580, can fail a batch_predict try whose trigger fires at once).
    assert "index_shard[" in runs[0].split("tries: ")[1]
    assert "batch_predict[" in runs[1].split("tries: ")[1]
    # stage_group killed between commits; its retry skipped the committed segments (the line
    # after the run's says how many, from S3 and from the retry's log; a mismatch is a problem
    # and fails the result above)
    assert "killed stage_group[" in runs[2] and "mid-group" in runs[2], runs[2]
    assert "stage_group[" in runs[2].split("tries: ")[1]
    skipped = lines[lines.index(runs[2]) + 1]
    assert "the retry skipped" in skipped and "commit.json unchanged" in skipped, skipped
    deadline = time.monotonic() + 10
    while leftovers(work) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not leftovers(work), leftovers(work)
