"""Model containers for transform jobs and endpoints, as SageMaker starts them: the model's
`ModelDataUrl` (one model.tar.gz) fetched from S3 and unpacked, the model's Environment plus
the job's, the DLC's serving stack started on it (devstack.container).

Warm reuse (a devstack shortcut, not SageMaker's behaviour: SageMaker starts fresh instances
for every job): a container is keyed by the package (URL + ETag) and the full environment and
kept running after its job, so later jobs and the endpoint of the same model + environment
skip the ~10 s start on this 2-core machine. A container that failed a job (crashed, timed
out, answered garbage) is never reused. At most MAX_WARM idle containers are kept.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import shutil
import tarfile
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from devstack.container import venv
from devstack.container.process import Container, ContainerError
from devstack.sagemaker.transform import parse_s3_uri

log = logging.getLogger("devstack.sagemaker.containers")

MAX_WARM = 2


class ModelDataError(Exception):
    """ModelDataUrl cannot be fetched or is not a model.tar.gz."""


class Pool:
    def __init__(self, s3, state_dir: Path, max_warm: int = MAX_WARM):
        self.s3, self.max_warm = s3, max_warm
        self.data_dir = state_dir / "model-data"
        self.run_dir = state_dir / "containers"
        self._lock = threading.Lock()
        self._key_locks: dict[tuple, threading.Lock] = {}
        self._containers: dict[tuple, Container] = {}
        self._users: dict[tuple, int] = {}
        self._last_used: dict[tuple, float] = {}
        self._closed = False

    # model data -------------------------------------------------------------------------
    def model_dir(self, url: str) -> Path:
        """The unpacked package, fetched once per URL + ETag (as SageMaker copies it into
        /opt/ml/model for each container)."""
        bucket, key = parse_s3_uri(url)
        try:
            etag = self.s3.head_object(Bucket=bucket, Key=key)["ETag"].strip('"')
        except Exception as exc:
            raise ModelDataError(f"Could not access model data at {url}: {exc}") from None
        target = self.data_dir / hashlib.sha256(f"{url}\0{etag}".encode()).hexdigest()[:16]
        if target.exists():
            return target
        self.data_dir.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        with tempfile.TemporaryDirectory(dir=self.data_dir) as tmp:
            archive = Path(tmp) / "model.tar.gz"
            self.s3.download_file(bucket, key, str(archive))
            unpacked = Path(tmp) / "model"
            try:
                with tarfile.open(archive, "r:gz") as tar:
                    tar.extractall(unpacked, filter="data")
            except (tarfile.TarError, OSError, EOFError) as exc:
                raise ModelDataError(f"model data at {url} is not a valid .tar.gz: {exc}") from None
            try:
                unpacked.rename(target)
            except OSError:  # another thread unpacked the same package first
                if not target.exists():
                    raise
        log.info("unpacked %s into %s in %.1fs", url, target, time.monotonic() - started)
        return target

    # containers -------------------------------------------------------------------------
    @contextlib.contextmanager
    def lease(self, container_def: dict, extra_env: dict[str, str] | None = None,
              ) -> Iterator[Container]:
        """A running container for this model + environment (started, or warm)."""
        url = container_def["ModelDataUrl"]
        env = {**(container_def.get("Environment") or {}), **(extra_env or {})}
        model_dir = self.model_dir(url)
        key = (str(model_dir), tuple(sorted(env.items())))
        with self._lock:
            key_lock = self._key_locks.setdefault(key, threading.Lock())
        with key_lock:  # one start per key; others wait for it and share it
            with self._lock:
                if self._closed:
                    raise ContainerError("the SageMaker service is shutting down")
                container = self._containers.get(key)
            if container is None or not container.alive():
                container = self._start(key, model_dir, env)
            with self._lock:
                self._containers[key] = container
                self._users[key] = self._users.get(key, 0) + 1
        try:
            yield container
        finally:
            with self._lock:
                self._users[key] -= 1
                self._last_used[key] = time.monotonic()
            self._evict()

    def _start(self, key: tuple, model_dir: Path, env: dict[str, str]) -> Container:
        python_env = venv.ensure(progress=log.info)
        workdir = self.run_dir / hashlib.sha256(repr(key).encode()).hexdigest()[:12]
        shutil.rmtree(workdir, ignore_errors=True)
        workdir.mkdir(parents=True)
        log.info("starting a model container for %s (%d env vars) in %s", model_dir,
                 len(env), workdir)
        container = Container(python_env, workdir, model_dir, env).start()
        log.info("model container up on port %d in %.1fs (log %s)", container.port,
                 container.started_s, container.log_path)
        return container

    def discard(self, container: Container) -> None:
        """Stop a container that failed a job: it is not handed out again."""
        with self._lock:
            for key, c in list(self._containers.items()):
                if c is container:
                    del self._containers[key]
        container.stop()

    def _evict(self) -> None:
        with self._lock:
            idle = [k for k, c in self._containers.items() if not self._users.get(k)]
            idle.sort(key=lambda k: self._last_used.get(k, 0.0))
            drop = [self._containers.pop(k) for k in idle[:max(0, len(idle) - self.max_warm)]]
        for container in drop:
            log.info("stopping idle model container on port %d (over %d warm)", container.port,
                     self.max_warm)
            container.stop()

    def shutdown(self) -> None:
        with self._lock:
            self._closed = True
            containers = list(self._containers.values())
            self._containers.clear()
        for container in containers:
            container.stop()
