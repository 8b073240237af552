"""The transform-job worker: runs InProgress jobs (two at a time) in threads, moves them to
Completed / Failed / Stopped, and picks up after a restart: jobs left InProgress resume
(skipping the files they already finished), jobs left Stopping become Stopped.

A model with a ModelDataUrl runs in a model container (containers.Pool: the package users
deploy, served by the real HF toolkit and multi-model-server); one without runs on the
in-process embedder of devstack.model (the cheap path the control-plane tests use). The
container's log for each job is kept in `<state>/job-logs/<job>.log`.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

from botocore.exceptions import BotoCoreError, ClientError

from devstack import faults, model
from devstack.container.process import ContainerError
from devstack.sagemaker.containers import ModelDataError, Pool
from devstack.sagemaker.dataprocessing import FilterError
from devstack.sagemaker.invoke import (
    DEFAULT_RETRIES,
    DEFAULT_TIMEOUT_S,
    ContainerPredict,
    execution_parameters,
)
from devstack.sagemaker.store import Store
from devstack.sagemaker.transform import (
    MAX_RECORDS_PER_CALL,
    FileFailed,
    FileTransformer,
    ModelFailed,
    Settings,
    Shutdown,
    StopRequested,
    embedder_predict,
    list_inputs,
    output_location,
)

log = logging.getLogger("devstack.sagemaker.jobs")

PROGRESS_EVERY_S = 5.0
MAX_FAILURE_REASON = 1024  # FailureReason's max length in the service model


class _Progress:
    """Logs records done and the rate, at most every few seconds."""

    def __init__(self, job: str, total_files: int, done_before: int = 0):
        self.job, self.total_files = job, total_files
        self.records = 0  # this run's, for the rate
        self.done_before = done_before  # finished by an earlier run of the job
        self.file_index, self.file = 0, ""
        self.started = self.last = time.monotonic()

    def next_file(self, uri: str) -> None:
        self.file_index += 1
        self.file = uri

    def add(self, n: int) -> None:
        self.records += n
        now = time.monotonic()
        if now - self.last >= PROGRESS_EVERY_S:
            self.last = now
            log.info("job %s: %d records, %.0f records/s (file %d/%d %s)", self.job,
                     self.done_before + self.records, self.records / max(now - self.started, 1e-6),
                     self.file_index, self.total_files, self.file)


def job_environment(request: dict) -> dict[str, str]:
    """The container environment a job adds to its model's: its own Environment and the
    SAGEMAKER_* variables (the last three only when the job sets them)."""
    env = {k: str(v) for k, v in (request.get("Environment") or {}).items()}
    env["SAGEMAKER_BATCH"] = "true"
    if request.get("MaxPayloadInMB") is not None:
        env["SAGEMAKER_MAX_PAYLOAD_IN_MB"] = str(request["MaxPayloadInMB"])
    if request.get("BatchStrategy"):
        env["SAGEMAKER_BATCH_STRATEGY"] = {"SingleRecord": "SINGLE_RECORD"}.get(
            request["BatchStrategy"], "MULTI_RECORD")
    if request.get("MaxConcurrentTransforms"):
        env["SAGEMAKER_MAX_CONCURRENT_TRANSFORMS"] = str(request["MaxConcurrentTransforms"])
    return env


def effective_request(request: dict, container_params: dict) -> dict:
    """The job's values, else the container's /execution-parameters, else the defaults."""
    out = dict(request)
    theirs = dict(container_params)
    theirs["BatchStrategy"] = {"SINGLE_RECORD": "SingleRecord", "MULTI_RECORD": "MultiRecord"}.get(
        str(theirs.get("BatchStrategy", "")).upper())
    for key, default in (("MaxConcurrentTransforms", 1), ("MaxPayloadInMB", 6),
                         ("BatchStrategy", "MultiRecord")):
        unset = out.get(key) is None if key == "MaxPayloadInMB" else not out.get(key)
        if unset:  # MaxPayloadInMB 0 is a value (no limit); MaxConcurrentTransforms 0 is not
            out[key] = theirs.get(key) or default
    return out


class Worker:
    def __init__(self, store: Store, s3, tmp_dir: Path, max_jobs: int = 2,
                 pool: Pool | None = None):
        self.store, self.s3, self.max_jobs = store, s3, max_jobs
        self.tmp_dir = tmp_dir
        self.pool = pool or Pool(s3, tmp_dir.parent)
        self.log_dir = tmp_dir.parent / "job-logs"
        tmp_dir.mkdir(parents=True, exist_ok=True)
        self._wake = threading.Event()
        self._closing = threading.Event()
        self._lock = threading.Lock()
        self._running: set[str] = set()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        for job in self.store.jobs("Stopping"):
            self.store.set_status(job["name"], "Stopped", only_from=("Stopping",))
            log.info("job %s was stopping when the service went down: Stopped", job["name"])
        for job in self.store.jobs("InProgress"):
            log.info("resuming job %s (left InProgress by the previous run)", job["name"])
        self._thread = threading.Thread(target=self._loop, name="sagemaker-jobs", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def shutdown(self) -> None:
        """Stop taking work; running jobs stay InProgress and resume at the next start."""
        self._closing.set()
        self._wake.set()

    def _loop(self) -> None:
        while not self._closing.is_set():
            self._wake.wait(1.0)
            self._wake.clear()
            try:
                self._schedule()
            except Exception:  # never let the scheduler die: jobs would hang
                log.exception("job scheduler error")

    def _schedule(self) -> None:
        with self._lock:
            for job in self.store.jobs("Stopping") + self.store.jobs("InProgress"):
                name = job["name"]
                if name in self._running or self._closing.is_set():
                    continue
                if job["status"] == "Stopping":  # stopped before a slot was free
                    self.store.set_status(name, "Stopped", only_from=("Stopping",))
                    log.info("job %s stopped before it started", name)
                elif len(self._running) < self.max_jobs:
                    self._running.add(name)
                    threading.Thread(target=self._run, args=(name,), name=f"job-{name}",
                                     daemon=True).start()

    def _run(self, name: str) -> None:
        try:
            self._execute(name)
        finally:
            with self._lock:
                self._running.discard(name)
            self._wake.set()

    def _check(self, name: str) -> None:
        if self._closing.is_set():
            raise Shutdown()
        if self.store.status(name) != "InProgress":
            raise StopRequested()

    def _fail(self, name: str, reason: str) -> None:
        reason = reason[:MAX_FAILURE_REASON]
        if self.store.set_status(name, "Failed", only_from=("InProgress",), failure_reason=reason):
            log.warning("job %s Failed: %s", name, reason)
        else:  # a stop won the race
            self.store.set_status(name, "Stopped", only_from=("Stopping",))

    def _execute(self, name: str) -> None:
        job = self.store.job(name)
        self.store.mark_started(name)
        started = time.monotonic()
        try:
            self._transform(job)
        except StopRequested:
            self.store.set_status(name, "Stopped", only_from=("Stopping",))
            log.info("job %s Stopped after %.1fs", name, time.monotonic() - started)
        except Shutdown:
            log.info("job %s interrupted by shutdown; it resumes at the next start", name)
        except FilterError as exc:
            self._fail(name, f"ClientError: {exc}")
        except ModelFailed as exc:  # the container died: the job ends here
            if not self._closing.is_set():  # (unless the service stopped it: then it resumes)
                self._fail(name, str(exc))
        except (ContainerError, ModelDataError) as exc:
            if not self._closing.is_set():
                self._fail(name, f"ClientError: {exc}")
        except (ClientError, BotoCoreError) as exc:
            if self._closing.is_set():
                return
            self._fail(name, f"ClientError: {exc}")
        except Exception as exc:
            if self._closing.is_set():
                return
            log.exception("job %s crashed", name)
            self._fail(name, f"InternalServerError: {exc!r}")

    @staticmethod
    def _hold(name: str, files_done: int, check) -> None:
        log.info("job %s: hold_job fault: paused after %d files until the switch is unset",
                 name, files_done)
        while faults.is_set("hold_job"):
            check()
            time.sleep(0.1)
        log.info("job %s: hold_job released", name)

    def _transform(self, job: dict) -> None:
        name, request, injected = job["name"], job["request"], job["faults"] or {}
        check = lambda: self._check(name)  # noqa: E731
        if injected.get("stall"):
            log.info("job %s: stall_job fault: staying InProgress until stopped", name)
            while True:
                check()
                time.sleep(0.2)
        if injected.get("fail"):
            time.sleep(0.5)  # long enough for a poller to see InProgress first
            check()
            self._fail(name, injected["fail"])
            return
        check()
        inputs = list_inputs(self.s3, request)
        if not inputs:
            source = request["TransformInput"]["DataSource"]["S3DataSource"]["S3Uri"]
            raise FilterError(f"No S3 objects found under S3 URL \"{source}\"")
        container_def = job["container"] or {}
        if not container_def.get("ModelDataUrl"):
            embedder = model.get_embedder(container_def)
            if hasattr(embedder, "load"):
                embedder.load()  # waits for a load already under way
            self._run_files(job, inputs, effective_request(request, {}),
                            embedder_predict(embedder.embed), 1, embedder.name)
            return
        with self.pool.lease(container_def, job_environment(request)) as container:
            log_start = container.log_size()
            troubled = True
            try:
                effective = effective_request(request, execution_parameters(container))
                client = effective.get("ModelClientConfig") or {}
                predict = ContainerPredict(
                    container, effective["TransformInput"].get("ContentType") or "",
                    effective["TransformOutput"].get("Accept") or "",
                    float(client.get("InvocationsTimeoutInSeconds") or DEFAULT_TIMEOUT_S),
                    int(client.get("InvocationsMaxRetries", DEFAULT_RETRIES)))
                self._run_files(job, inputs, effective, predict,
                                effective["MaxConcurrentTransforms"],
                                f"container on port {container.port}", max_records=None)
                troubled = predict.troubled
            except (StopRequested, Shutdown):
                troubled = False
                raise
            finally:
                container.copy_log(log_start, self.log_dir / f"{name}.log")
                if troubled:  # crashed, timed out or answered 5xx: never hand it out again
                    self.pool.discard(container)

    def _run_files(self, job: dict, inputs: list, request: dict, predict, concurrency: int,
                   model_name: str, max_records: int | None = MAX_RECORDS_PER_CALL) -> None:
        name, injected = job["name"], job["faults"] or {}
        check = lambda: self._check(name)  # noqa: E731
        done = self.store.files_done(name)
        drop = inputs[0].key if injected.get("drop_output") else None
        progress = _Progress(name, len(inputs), sum(done.values()))
        if done:
            log.info("job %s: %d of %d files already done, resuming", name, len(done), len(inputs))
        else:
            log.info("job %s: %d input files, model %s, %d concurrent", name, len(inputs),
                     model_name, concurrency)
        transformer = FileTransformer(self.s3, predict, Settings.of(request), check,
                                      progress.add, self.tmp_dir, concurrency, max_records)
        accept = request["TransformOutput"].get("Accept") or "application/jsonlines"
        failures = []
        for n, src in enumerate(inputs):
            if n == injected.get("hold_after_files"):
                self._hold(name, n, check)
            progress.next_file(src.uri)
            if src.key in done:
                continue
            try:
                spool, records = transformer.run(src)
            except FileFailed as exc:  # no .out for this file; the others go on
                log.warning("job %s: %s", name, exc.reason)
                failures.append(exc.reason)
                continue
            with spool:
                bucket, key = output_location(request, src.rel)
                if src.key == drop:
                    log.warning("job %s: drop_output fault: s3://%s/%s not written", name, bucket, key)
                else:
                    check()  # a stop or shutdown before the upload leaves no new .out
                    self.s3.upload_fileobj(spool, bucket, key, ExtraArgs={"ContentType": accept})
            self.store.file_done(name, src.key, records)
        elapsed = time.monotonic() - progress.started
        if failures:
            more = f" ({len(failures)} of {len(inputs)} files failed)" if len(inputs) > 1 else ""
            self._fail(name, failures[0] + more)
            return
        if self.store.set_status(name, "Completed", only_from=("InProgress",)):
            log.info("job %s Completed: %d records in %d files (this run: %d in %.1fs, %.0f "
                     "records/s)", name, progress.done_before + progress.records, len(inputs),
                     progress.records, elapsed, progress.records / max(elapsed, 1e-6))
        else:
            raise StopRequested()
