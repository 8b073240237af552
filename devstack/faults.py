"""Faults on demand, shared by every devstack process through `<state dir>/faults.json`.

Tests (or `PUT /_devstack/faults` on any service) write the file; services consume counted
faults under an exclusive file lock, so "the next N requests" holds across processes.

Fault names (each a dict; `count` = how many times it fires, -1 = until cleared):
  sagemaker_throttle     {count}            CreateTransformJob -> ThrottlingException (through
                                            ML Commons: 400 remote_connector_throttling_exception)
  fail_job               {count, reason}    next transform job(s) end Failed with reason
                                            (the job faults also take `name_regex`: only
                                            jobs whose name it matches whole)
  stall_job              {count}            next job(s) stay InProgress until stopped
  hold_job               {count, after_files}  next job(s) pause, InProgress, once `after_files`
                                            (default 0) input files are done, for as long as the
                                            switch stays set; `unset(..., "hold_job")` lets them
                                            go on (tests hold a job instead of racing it)
  drop_output            {count}            next job(s) leave one .out unwritten
  bulk_item_429          {count, ratio}     next bulk request(s) through the OpenSearch front:
                                            that share of items taken out and answered 429
  sts_lifetime           {count, seconds}   next AssumeRole(s) issue credentials lasting seconds
                                            (0: expired at once)
  http                   [{service, path_regex, method?, count, status? | action: "reset" |
                           action: "reset_after" | latency_ms}]  generic faults: "reset" drops
                           the connection before handling, "reset_after" after doing the work
                           (service "opensearch": the HTTPS front before the real node)
ML Commons' own 429 on _batch_predict is no switch: the real node gives it past
`plugins.ml_commons.max_batch_inference_tasks` (tests/helpers/batch_task_limit.py).
"""

from __future__ import annotations

import fcntl
import json
import os
import re
from contextlib import contextmanager
from pathlib import Path

_path: Path | None = None


def init(state_dir: Path) -> None:
    """Use the devstack's one faults file: `$DEVSTACK_DIR` (set by the launcher for every
    service, so one switch reaches all of them), else the service's own state dir."""
    global _path
    _path = Path(os.environ.get("DEVSTACK_DIR") or state_dir) / "faults.json"


def _file(state_dir: Path | None) -> Path | None:
    if state_dir is not None:
        return Path(state_dir) / "faults.json"
    return _path


@contextmanager
def _locked(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            before = path.read_text() if path.exists() else ""
            box = [json.loads(before or "{}")]
            yield box
            after = json.dumps(box[0])
            if after != before:  # callers mutate nested specs in place: compare the text
                tmp = path.with_suffix(".tmp")
                tmp.write_text(after)
                os.replace(tmp, path)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def set_faults(state_dir: Path | None = None, **faults) -> None:
    """Add or replace faults (merging with those already set)."""
    path = _file(state_dir)
    with _locked(path) as box:
        box[0] = {**box[0], **faults}


def unset(state_dir: Path | None = None, *names: str) -> None:
    """Remove these switches, leaving the others set."""
    path = _file(state_dir)
    with _locked(path) as box:
        box[0] = {k: v for k, v in box[0].items() if k not in names}


def is_set(name: str) -> bool:
    """Whether a switch is present at all (spent or not): what a held job waits on."""
    return name in current(None)


def clear(state_dir: Path | None = None) -> None:
    path = _file(state_dir)
    with _locked(path) as box:
        box[0] = {}


def current(state_dir: Path | None = None) -> dict:
    path = _file(state_dir)
    if path is None or not path.exists():
        return {}
    return json.loads(path.read_text() or "{}")


def _consume(spec: dict) -> bool:
    count = spec.get("count", 1)
    if count == 0:
        return False
    if count > 0:
        spec["count"] = count - 1
    return True


def take(name: str, subject: str | None = None) -> dict | None:
    """Consume one firing of a counted fault; returns its spec (before consuming) or None.
    A spec with `name_regex` fires only for a `subject` (a job name) it matches whole."""
    path = _file(None)
    if path is None or not path.exists():  # fast path: no faults configured
        return None
    with _locked(path) as box:
        spec = box[0].get(name)
        if not isinstance(spec, dict):
            return None
        fired = dict(spec)
        pattern = spec.get("name_regex")
        if pattern is not None and (subject is None or not re.fullmatch(pattern, subject)):
            return None
        if not _consume(spec):
            return None
        return fired


def http_fault(service: str, method: str, path: str) -> dict | None:
    """The first generic rule matching this request, consumed; None when nothing applies."""
    file = _file(None)
    if file is None or not file.exists():
        return None
    with _locked(file) as box:
        for rule in box[0].get("http", []):
            if rule.get("service", service) != service:
                continue
            if rule.get("method") and rule["method"] != method:
                continue
            if not re.search(rule.get("path_regex", ""), path):
                continue
            if _consume(rule):
                return dict(rule)
    return None


def add_admin_routes(app) -> None:
    """GET/PUT/DELETE /_devstack/faults on a service, for curl users."""
    from devstack.httpbase import json_response

    @app.route("GET", "/_devstack/faults")
    def get_faults(req):
        return json_response(current())

    @app.route("PUT|POST", "/_devstack/faults")
    def put_faults(req):
        set_faults(None, **(req.json() or {}))
        return json_response(current())

    @app.route("DELETE", "/_devstack/faults")
    def delete_faults(req):
        clear(None)
        return json_response({})
