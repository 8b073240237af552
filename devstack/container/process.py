"""One model container: the toolkit's `serve` entry point (the HF DLC's) under the real
multi-model-server, as a process tree in PID and mount namespaces of its own.

Why namespaces: the toolkit writes its server config to the fixed path
`/etc/sagemaker-mms.properties`, MMS puts worker sockets at `/tmp/.mms.sock.9000`, and the
toolkit finds "its" server by scanning every process for the MMS class name (two servers on
one machine: "multiple mms model servers are not supported", or SIGTERM sent to the wrong
one). Inside `unshare`, /etc and /opt are overlays (writes stay private), the model sits at
/opt/ml/model as in SageMaker, /tmp is a tmpfs and `ps` sees only this container. The
network is the host's: the server binds 0.0.0.0:<port> (SAGEMAKER_BIND_TO_PORT, which the
server requires below 32768). The process started here is `unshare --kill-child`: killing it
takes the whole tree down (SIGTERM alone would leave the Python workers running).
"""

from __future__ import annotations

import ctypes
import os
import random
import shutil
import signal
import socket
import subprocess
import threading
import time
from concurrent.futures import Future
from pathlib import Path

import requests
from requests.adapters import HTTPAdapter

PORT_RANGE = (20000, 32767)
LOADED = "Model model loaded io_fd="  # mms/model_service_worker.py, after the handler loaded
_SCRIPT = (
    'set -e; mount -t overlay overlay -o "lowerdir=/etc,upperdir=$W/etc.up,workdir=$W/etc.wk" /etc; '
    'mount -t overlay overlay -o "lowerdir=/opt,upperdir=$W/opt.up,workdir=$W/opt.wk" /opt; '
    'mkdir -p /opt/ml; mount --bind "$W/ml" /opt/ml; mount --bind "$M" /opt/ml/model; '
    'mount -t tmpfs tmpfs /tmp; cd /tmp; '
    'exec "$V/bin/serve"'
)
_UNSHARE = ["unshare", "--pid", "--fork", "--kill-child", "--mount-proc", "--mount",
            "--propagation", "private", "--", "sh", "-c", _SCRIPT]


class ContainerError(RuntimeError):
    """The container would not start, or died."""


class _Spawner:
    """Starts processes from one long-lived thread: PR_SET_PDEATHSIG fires when the *thread*
    that forked exits, and job threads end while their containers stay warm."""

    def __init__(self):
        self._lock = threading.Lock()
        self._queue: list = []
        self._wake = threading.Condition(self._lock)
        threading.Thread(target=self._run, name="container-spawner", daemon=True).start()

    def _run(self):
        while True:
            with self._wake:
                while not self._queue:
                    self._wake.wait()
                fn, fut = self._queue.pop(0)
            try:
                fut.set_result(fn())
            except BaseException as exc:  # noqa: BLE001 (handed to the caller)
                fut.set_exception(exc)

    def popen(self, *args, **kwargs) -> subprocess.Popen:
        fut: Future = Future()
        with self._wake:
            self._queue.append((lambda: subprocess.Popen(*args, **kwargs), fut))
            self._wake.notify()
        return fut.result()


_spawner: _Spawner | None = None
_spawner_lock = threading.Lock()


def _die_with_parent() -> None:
    # If the devstack service dies (even SIGKILL), its containers go too.
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def free_port() -> int:
    for _ in range(200):
        port = random.randint(*PORT_RANGE)
        with socket.socket() as s:
            try:
                s.bind(("0.0.0.0", port))
                return port
            except OSError:
                continue
    raise ContainerError("no free port below 32768 for the model server")


class Container:
    """A started container; `invoke` posts to its /invocations."""

    def __init__(self, venv: Path, workdir: Path, model_dir: Path, env: dict[str, str]):
        self.venv, self.workdir, self.env = venv, workdir, dict(env)
        self.model_dir = model_dir
        self.log_path = workdir / "container.log"
        self.port = 0
        self.proc: subprocess.Popen | None = None
        self.started_s = 0.0
        self.session = requests.Session()
        self.session.mount("http://", HTTPAdapter(pool_connections=1, pool_maxsize=64))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 180.0) -> Container:
        global _spawner
        with _spawner_lock:
            _spawner = _spawner or _Spawner()
        for sub in ("etc.up", "etc.wk", "opt.up", "opt.wk"):
            (self.workdir / sub).mkdir(parents=True, exist_ok=True)
        (self.workdir / "ml" / "model").mkdir(parents=True, exist_ok=True)  # a mount point
        began = time.monotonic()
        for _ in range(3):  # another process may take the port between the check and the bind
            self.port = free_port()
            env = {"PATH": f"{self.venv / 'bin'}:/usr/local/bin:/usr/bin:/bin",
                   "HOME": str(self.workdir), "LANG": "C.UTF-8", "W": str(self.workdir),
                   "V": str(self.venv), "M": str(self.model_dir), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                   **self.env, "SAGEMAKER_BIND_TO_PORT": str(self.port)}
            log = open(self.log_path, "ab")
            self.proc = _spawner.popen(_UNSHARE, stdout=log, stderr=subprocess.STDOUT, env=env,
                                       stdin=subprocess.DEVNULL, start_new_session=True,
                                       preexec_fn=_die_with_parent)
            log.close()
            if self._wait_ready(began + timeout):
                self.started_s = time.monotonic() - began
                return self
            self.stop()
        raise ContainerError("the model server could not bind a port (3 tries)")

    def _wait_ready(self, deadline: float) -> bool:
        """True when the model is loaded; False if the port was taken; raises otherwise.
        /ping answers Healthy before the model has loaded (and even when loading failed),
        and MMS marks a worker READY before its handler has run model_fn, so readiness is
        /ping plus the worker's own "Model model loaded" line (model_fn returned)."""
        offset = self.log_size()
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ContainerError(f"the model container exited with code "
                                     f"{self.proc.returncode} while starting: {self.log_tail()}")
            log = self._log_since(offset)
            if "Address already in use" in log:
                return False
            if "Backend worker process died" in log or "Load model failed" in log:
                self.stop()
                raise ContainerError(f"the model container could not load the model: "
                                     f"{self.log_tail(3000)}")
            if LOADED in log:
                try:
                    if self.session.get(self.url + "/ping", timeout=2).status_code == 200:
                        return True
                except requests.RequestException:
                    pass
            time.sleep(0.25)
        self.stop()
        raise ContainerError(f"the model container was not ready after its start timeout: "
                             f"{self.log_tail()}")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def invoke(self, body: bytes, content_type: str, accept: str, timeout: float):
        """(status, body, content type) of POST /invocations; requests' errors propagate."""
        headers = {k: v for k, v in (("Content-Type", content_type), ("Accept", accept)) if v}
        resp = self.session.post(self.url + "/invocations", data=body, timeout=(5, timeout),
                                 headers=headers)
        return resp.status_code, resp.content, resp.headers.get("content-type", "")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()  # unshare --kill-child: PID 1 of the namespace dies, then all
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                pass
        self.session.close()

    def log_size(self) -> int:
        return self.log_path.stat().st_size if self.log_path.exists() else 0

    def _log_since(self, offset: int) -> str:
        with open(self.log_path, "rb") as f:
            f.seek(offset)
            return f.read().decode("utf-8", "replace")

    def log_tail(self, limit: int = 1500) -> str:
        if not self.log_path.exists():
            return ""
        with open(self.log_path, "rb") as f:
            f.seek(max(0, self.log_path.stat().st_size - limit))
            return f.read().decode("utf-8", "replace")

    def copy_log(self, start: int, dest: Path) -> None:
        """The container's log from byte `start` on (what one job saw) to `dest`."""
        dest.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "rb") as src, open(dest, "ab") as out:
            src.seek(start)
            shutil.copyfileobj(src, out)


def namespaces_available() -> bool:
    return shutil.which("unshare") is not None and os.geteuid() == 0
