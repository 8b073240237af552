"""A real, private Airflow for the chaos runs: api-server, scheduler (LocalExecutor),
dag-processor and triggerer as subprocesses with their own AIRFLOW_HOME, ports and SQLite DB.

`dag.test()` runs tasks inside its own process, so killing a task there kills the runner; here
each try is its own OS process, and Airflow itself notices the death and retries it.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
import uuid
from pathlib import Path

import requests

from chaos import procs

REPO = Path(__file__).resolve().parents[2]
DAG_ID = "batch_embeddings"
COMPONENTS = ("api-server", "scheduler", "dag-processor", "triggerer")


class StackError(RuntimeError):
    pass


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def airflow_env(home: Path, api_port: int, devstack_env: dict[str, str], stack_id: str,
                retries: int, base: dict | None = None) -> dict[str, str]:
    """The environment every component (and so every task process) runs with."""
    env = dict(os.environ if base is None else base)
    paths = [str(REPO / "plugins"), str(REPO / "dags"), str(REPO), str(REPO / "tools")]
    env.update({
        procs.MARKER_ENV: stack_id,
        "AIRFLOW_HOME": str(home),
        "PYTHONPATH": os.pathsep.join(paths + [p for p in [env.get("PYTHONPATH")] if p]),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__PARALLELISM": "4",
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
        "AIRFLOW__CORE__AUTH_MANAGER":
            "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{api_port}/execution/",
        "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{api_port}",
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": str(api_port),
        "AIRFLOW__API__SECRET_KEY": secrets.token_urlsafe(16),
        "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(32),
        "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
        "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port()),
        # Only triggered runs: the @daily schedule would add a run for an empty partition.
        "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "False",
        "AIRFLOW__TRIGGERER__TRIGGERER_HEALTH_CHECK_THRESHOLD": "10",
        "BATCHVEC_RETRIES": str(retries),
        "BATCHVEC_RETRY_DELAY": "1",
        "BATCHVEC_POLL_INTERVAL": "1",
        "BATCHVEC_JOB_WAIT": "defer",  # a real triggerer: waits on jobs deferred, as deployed
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    })
    env.update(devstack_env)  # AIRFLOW_CONN_* and the BATCHVEC_* devstack presets
    return env


def kill_tree(proc: subprocess.Popen) -> int:
    """SIGKILL a process and every process under it (listed first: orphans are reparented);
    returns how many were killed."""
    import psutil

    try:
        root = psutil.Process(proc.pid)
        tree = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        tree = []
    killed = sum(procs.sigkill(p) for p in tree)
    proc.wait(10)
    return killed


class AirflowStack:
    def __init__(self, root: Path, devstack_env: dict[str, str], retries: int = 3,
                 extra_env: dict[str, str] | None = None):
        self.root = root
        self.home = root / "airflow-home"
        self.logs = root / "logs"
        self.stack_id = f"chaos-{uuid.uuid4().hex[:12]}"
        self.api_port = free_port()
        self.env = airflow_env(self.home, self.api_port, devstack_env, self.stack_id, retries)
        self.env.update(extra_env or {})
        self.api = f"http://127.0.0.1:{self.api_port}/api/v2"
        self.components: dict[str, subprocess.Popen] = {}
        self.http = requests.Session()
        self.airflow = str(Path(sys.executable).with_name("airflow"))

    # -- lifecycle ------------------------------------------------------------------------
    def start(self, timeout: float = 240.0) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(parents=True, exist_ok=True)
        with open(self.logs / "db-migrate.log", "wb") as log:
            rc = subprocess.run([self.airflow, "db", "migrate"], env=self.env, stdout=log,
                                stderr=subprocess.STDOUT, timeout=timeout).returncode
        if rc:
            raise StackError(f"airflow db migrate failed: {self.tail('db-migrate')}")
        for name in COMPONENTS:
            self.start_component(name)
        self.wait_ready(timeout)

    def start_component(self, name: str) -> None:
        args = [self.airflow, name]
        if name == "api-server":
            args += ["--port", str(self.api_port), "--host", "127.0.0.1", "--workers", "1"]
        log = open(self.logs / f"{name}.log", "ab")  # the child keeps its own copy
        self.components[name] = subprocess.Popen(args, env=self.env, stdout=log,
                                                 stderr=subprocess.STDOUT, cwd=self.root,
                                                 start_new_session=True)
        log.close()

    def kill_component(self, name: str) -> None:
        """SIGKILL a component and every process under it (a triggerer crash)."""
        kill_tree(self.components.pop(name))

    def tail(self, name: str, chars: int = 3000) -> str:
        path = self.logs / f"{name}.log"
        return path.read_text(errors="replace")[-chars:] if path.exists() else "(no log)"

    def wait_ready(self, timeout: float) -> None:
        """api-server answering, scheduler + triggerer healthy, the DAG parsed."""
        deadline = time.monotonic() + timeout
        last = "not started"
        while time.monotonic() < deadline:
            for name, proc in self.components.items():
                if proc.poll() is not None:
                    raise StackError(f"airflow {name} exited ({proc.returncode}): {self.tail(name)}")
            try:
                health = self.http.get(f"{self.api}/monitor/health", timeout=5).json()
                dag = self.http.get(f"{self.api}/dags/{DAG_ID}", timeout=5)
                states = {k: (v or {}).get("status") for k, v in health.items()}
                last = f"health {states}, dag {dag.status_code}"
                if (states.get("scheduler") == "healthy" and states.get("triggerer") == "healthy"
                        and dag.status_code == 200):
                    errors = self.http.get(f"{self.api}/importErrors", timeout=5).json()
                    if errors.get("total_entries"):
                        raise StackError(f"DAG import errors: {errors}")
                    return
            except requests.RequestException as exc:
                last = str(exc)
            time.sleep(1)
        raise StackError(f"Airflow not ready after {timeout:.0f}s ({last}); logs in {self.logs}")

    def stop(self) -> list[str]:
        """Stop every process of the stack; returns descriptions of any left alive."""
        tracked = procs.stack_processes(self.stack_id, str(self.root))
        left = procs.terminate_all(tracked, grace=15.0)
        for proc in self.components.values():
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
        left += procs.wait_gone(self.stack_id, str(self.root), timeout=5.0)
        if left:  # stragglers forked during shutdown
            left = procs.terminate_all(left, grace=2.0)
        self.components.clear()
        return [f"{p.pid}" for p in left]

    # -- REST API -------------------------------------------------------------------------
    def _json(self, method: str, path: str, **kw) -> dict:
        for attempt in range(5):
            try:
                resp = self.http.request(method, f"{self.api}{path}", timeout=30, **kw)
            except requests.RequestException:
                if attempt == 4:
                    raise
                time.sleep(1)
                continue
            if resp.status_code >= 500 and attempt < 4:
                time.sleep(1)
                continue
            if resp.status_code >= 400:
                raise StackError(f"{method} {path}: {resp.status_code} {resp.text[:500]}")
            return resp.json()
        raise AssertionError("unreachable")

    def trigger(self, run_id: str, conf: dict, logical_date: str | None = None) -> dict:
        return self._json("POST", f"/dags/{DAG_ID}/dagRuns",
                          json={"dag_run_id": run_id, "logical_date": logical_date, "conf": conf})

    def dag_run(self, run_id: str) -> dict:
        return self._json("GET", f"/dags/{DAG_ID}/dagRuns/{run_id}")

    def task_instances(self, run_id: str) -> list[dict]:
        return self._json("GET", f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances",
                          params={"limit": 1000})["task_instances"]

    def tries(self, run_id: str, task_id: str, map_index: int = -1) -> list[dict]:
        path = f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/{task_id}"
        if map_index >= 0:
            path += f"/{map_index}"
        return self._json("GET", path + "/tries")["task_instances"]
