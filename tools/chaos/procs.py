"""Find and kill this chaos stack's processes, never anyone else's.

Airflow 3.3's LocalExecutor worker processes supervise one task try at a time, titled
`airflow worker -- LocalExecutor: <ti id>` (`airflow supervisor: <ti id>` under other
executors, executors/base_executor.py); the supervisor forks the task runner, which retitles
itself `airflow worker -- <ti id>` (sdk/execution_time/task_runner.py). The ti id
is a UUID per try. Killing the runner is a worker dying mid-task: the supervisor sees the
non-zero exit and reports the try failed, and the API server makes it `up_for_retry` while
tries remain. (Killing the supervisor instead leaves a zombie found only after the heartbeat
timeout.) Every process of the stack carries `CHAOS_STACK_ID=<id>` in its environment, which
is how they are told apart from other Airflows on the machine.
"""

from __future__ import annotations

import os
import signal
import time

import psutil

WORKER_TITLE = "airflow worker -- "
SUPERVISOR_TITLE = "airflow supervisor: "
MARKER_ENV = "CHAOS_STACK_ID"


def _title(proc: psutil.Process) -> str:
    try:
        return " ".join(proc.cmdline())
    except (psutil.Error, OSError):
        return ""


def ours(proc: psutil.Process, stack_id: str, root: str) -> bool:
    """By cwd (the stack's dir, or one inside it: each Celery worker and redis have their
    own) or by the marker; setproctitle overwrites /proc/<pid>/environ, so the cwd counts."""
    try:
        cwd = proc.cwd()
        if cwd == root or cwd.startswith(root.rstrip(os.sep) + os.sep):
            return True
        return proc.environ().get(MARKER_ENV) == stack_id
    except (psutil.Error, OSError):
        return False


def parse_title(title: str) -> tuple[str, str] | None:
    """`("worker" | "supervisor", ti_id)` from a process title, else None."""
    for kind, prefix in (("worker", WORKER_TITLE), ("supervisor", SUPERVISOR_TITLE)):
        if title.startswith(prefix):
            ti_id = title[len(prefix):].strip()
            if ti_id.startswith("LocalExecutor"):  # the executor's worker, supervising
                kind, ti_id = "supervisor", ti_id.partition(": ")[2]
            return (kind, ti_id) if ti_id and ti_id != "<idle>" else None
    return None


def task_workers(stack_id: str, root: str) -> dict[str, psutil.Process]:
    """ti id -> the task runner process running that try, for this stack."""
    found: dict[str, psutil.Process] = {}
    me = os.getuid()
    for proc in psutil.process_iter(["cmdline", "uids"]):
        try:
            if proc.info["uids"] is None or proc.info["uids"].real != me:
                continue
            title = " ".join(proc.info["cmdline"] or ())
        except (psutil.Error, OSError):
            continue
        parsed = parse_title(title)
        if parsed and parsed[0] == "worker" and ours(proc, stack_id, root):
            found[parsed[1]] = proc
    return found


def stack_processes(stack_id: str, root: str) -> list[psutil.Process]:
    """Every live process that carries this stack's marker."""
    me = os.getuid()
    procs = []
    for proc in psutil.process_iter(["uids"]):
        try:
            if proc.info["uids"] is not None and proc.info["uids"].real == me and ours(proc, stack_id, root):
                procs.append(proc)
        except (psutil.Error, OSError):
            continue
    return procs


def sigkill(proc: psutil.Process) -> bool:
    """SIGKILL one process; False if it was already gone."""
    try:
        proc.send_signal(signal.SIGKILL)
        return True
    except psutil.NoSuchProcess:
        return False


def terminate_all(procs: list[psutil.Process], grace: float = 10.0) -> list[psutil.Process]:
    """SIGTERM, a bounded wait, then SIGKILL of what is left; returns those still alive."""
    for proc in procs:
        try:
            proc.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=grace)
    for proc in alive:
        sigkill(proc)
    _, alive = psutil.wait_procs(alive, timeout=5)
    return alive


def wait_gone(stack_id: str, root: str, timeout: float = 5.0) -> list[psutil.Process]:
    deadline = time.monotonic() + timeout
    left = stack_processes(stack_id, root)
    while left and time.monotonic() < deadline:
        time.sleep(0.2)
        left = stack_processes(stack_id, root)
    return left
