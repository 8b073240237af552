"""The private Airflow of `airflow_stack`, with the CeleryExecutor: a private redis-server as
the broker and result backend, and Celery workers as separate processes.

Airflow 3.3 takes SQLite as the metadata DB with the CeleryExecutor (the Airflow 2 refusal is
gone: workers never open the DB, tasks talk to the api-server's execution API), so the
scheduler and api-server keep the stack's SQLite file and the workers get none. Each worker has
its own directory (cwd, AIRFLOW_HOME, TMPDIR, task logs) and shares nothing local with the
others or the scheduler but the code: `dags/`, `plugins/`, `include/`, as an image would.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import time
from pathlib import Path

from chaos import procs
from chaos.airflow_stack import AirflowStack, StackError, free_port, kill_tree
from chaos.worker_host import HOSTNAME_ENV

WORKER_NAMES = ("worker-a", "worker-b")
WORKER_CONCURRENCY = 2
# A SIGKILLed worker's tries stay `running` until their heartbeat is this old (default 300 s);
# supervisors heartbeat every 5 s ([workers] min_heartbeat_interval), so 30 s is six missed.
HEARTBEAT_TIMEOUT = 30


def celery_env(broker: str, backend: str) -> dict[str, str]:
    """What the scheduler, api-server and workers add to `airflow_env`."""
    return {
        "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
        "AIRFLOW__CELERY__BROKER_URL": broker,
        "AIRFLOW__CELERY__RESULT_BACKEND": backend,
        "AIRFLOW__CELERY__WORKER_CONCURRENCY": str(WORKER_CONCURRENCY),
        # A loaded 2-core machine can take more than the default 1 s to publish a task.
        "AIRFLOW__CELERY__OPERATION_TIMEOUT": "10",
        # Unacked (acks_late) messages of a dead worker come back after this; Airflow has
        # retried the try long before, and a late redelivery is ignored (TaskAlreadyRunning).
        "AIRFLOW__CELERY_BROKER_TRANSPORT_OPTIONS__VISIBILITY_TIMEOUT": "7200",
        # The executor keeps a dead worker's tries in its running set (no result ever comes),
        # so slots beyond the workers' own leave room for those; the workers' concurrency is
        # what bounds the work.
        "AIRFLOW__CORE__PARALLELISM": "16",
        "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": str(HEARTBEAT_TIMEOUT),
        "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "3",
    }


class RedisServer:
    """redis-server on a free loopback port with a password made now, its config, data and
    log in `root`; never the system service."""

    def __init__(self, root: Path, env: dict[str, str]):
        self.root, self.env = root, env
        self.port = free_port()
        self.password = secrets.token_urlsafe(24)
        self.proc: subprocess.Popen | None = None

    def url(self, db: int) -> str:
        return f"redis://:{self.password}@127.0.0.1:{self.port}/{db}"

    def start(self, timeout: float = 30.0) -> None:
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        if not os.access(binary, os.X_OK):
            raise StackError("redis-server not found: apt-get install -y redis-server "
                             "(scripts/bootstrap.sh does it)")
        self.root.mkdir(parents=True, exist_ok=True)
        conf = self.root / "redis.conf"
        # In a file, not argv: the password stays out of `ps`.
        conf.touch(mode=0o600)
        conf.write_text("\n".join([
            f"port {self.port}", "bind 127.0.0.1", "protected-mode yes",
            f"requirepass {self.password}", f"dir {self.root}", 'save ""', "appendonly no",
            "daemonize no", f"logfile {self.root / 'redis.log'}"]) + "\n")
        self.proc = subprocess.Popen([binary, str(conf)], env=self.env, cwd=self.root,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        import redis

        client = redis.Redis(host="127.0.0.1", port=self.port, password=self.password)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise StackError(f"redis-server exited ({self.proc.returncode}); see "
                                 f"{self.root / 'redis.log'}")
            try:
                if client.ping():
                    return
            except redis.RedisError:
                time.sleep(0.2)
        raise StackError(f"redis-server not answering after {timeout:.0f}s")


class CeleryStack(AirflowStack):
    """`AirflowStack` + redis + `airflow celery worker` x len(workers)."""

    def __init__(self, root: Path, devstack_env: dict[str, str], retries: int = 3,
                 extra_env: dict[str, str] | None = None,
                 workers: tuple[str, ...] = WORKER_NAMES):
        super().__init__(root, devstack_env, retries, extra_env)
        self.redis = RedisServer(root / "redis", {**os.environ, **self.env})
        self.env.update(celery_env(self.redis.url(0), self.redis.url(1)))
        self.env.update(extra_env or {})
        self.worker_names = workers
        self.workers: dict[str, subprocess.Popen] = {}

    def start(self, timeout: float = 240.0) -> None:
        self.redis.start()
        self.logs.mkdir(parents=True, exist_ok=True)
        for name in self.worker_names:  # they boot while the DB migrates
            self.start_worker(name)
        super().start(timeout)
        self.wait_workers(timeout)

    # -- workers --------------------------------------------------------------------------
    def worker_dir(self, name: str) -> Path:
        return self.root / "workers" / name

    def start_worker(self, name: str) -> None:
        wdir = self.worker_dir(name)
        for sub in ("home", "tmp"):
            (wdir / sub).mkdir(parents=True, exist_ok=True)
        env = {**self.env, "AIRFLOW_HOME": str(wdir / "home"), "TMPDIR": str(wdir / "tmp"),
               HOSTNAME_ENV: name,
               "AIRFLOW__CORE__HOSTNAME_CALLABLE": "chaos.worker_host.hostname"}
        log_path = self.logs / f"{name}.log"
        self._log_offsets = getattr(self, "_log_offsets", {})
        self._log_offsets[name] = log_path.stat().st_size if log_path.exists() else 0
        # --skip-serve-logs: one port per worker would be needed, and the api-server fetches
        # logs by hostname from one port; each worker's task logs stay in its home/logs.
        args = [self.airflow, "celery", "worker", "--celery-hostname", f"{name}@{self.stack_id}",
                "--concurrency", str(WORKER_CONCURRENCY), "--skip-serve-logs",
                "--without-gossip", "--without-mingle"]
        with open(log_path, "ab") as log:
            self.workers[name] = subprocess.Popen(args, env=env, stdout=log,
                                                  stderr=subprocess.STDOUT, cwd=wdir,
                                                  start_new_session=True)

    def wait_workers(self, timeout: float) -> None:
        """Each worker has logged Celery's `ready.` since it was (re)started."""
        deadline = time.monotonic() + timeout
        waiting = set(self.workers)
        while waiting and time.monotonic() < deadline:
            for name in sorted(waiting):
                proc = self.workers[name]
                if proc.poll() is not None:
                    raise StackError(f"celery {name} exited ({proc.returncode}): {self.tail(name)}")
                with open(self.logs / f"{name}.log", "rb") as f:
                    f.seek(self._log_offsets[name])
                    if b" ready." in f.read():
                        waiting.discard(name)
            time.sleep(0.5)
        if waiting:
            raise StackError(f"celery workers {sorted(waiting)} not ready after {timeout:.0f}s")

    def kill_worker(self, name: str) -> int:
        """SIGKILL a whole worker: the Celery main process, its pool, the task supervisors and
        runners under them (a node lost). Returns how many processes died."""
        return kill_tree(self.workers.pop(name))

    def restart_dead_workers(self, timeout: float = 240.0) -> list[str]:
        """Start again each worker that was killed or died (what systemd or k8s would do)."""
        dead = [n for n in self.worker_names
                if n not in self.workers or self.workers[n].poll() is not None]
        for name in dead:
            self.start_worker(name)
        if dead:
            self.wait_workers(timeout)
        return dead

    def worker_of(self, pid: int) -> str | None:
        """The worker whose process tree holds `pid`."""
        import psutil

        for name, proc in self.workers.items():
            try:
                if pid == proc.pid or pid in {p.pid for p in psutil.Process(proc.pid).children(True)}:
                    return name
            except psutil.NoSuchProcess:
                continue
        return None

    def stop(self) -> list[str]:
        """The workers first (a warm shutdown while their broker still answers), then every
        other process of the stack, redis among them."""
        import psutil

        mains, tree = [], []
        for proc in self.workers.values():
            try:
                main = psutil.Process(proc.pid)
                mains.append(main)
                tree += [main, *main.children(recursive=True)]
            except psutil.NoSuchProcess:
                continue
        procs.terminate_all(mains, grace=15.0)  # SIGTERM to the main: it stops its pool
        left = procs.terminate_all([p for p in tree if p.is_running()], grace=2.0)
        self.workers.clear()
        return [f"{p.pid}" for p in left] + super().stop()
