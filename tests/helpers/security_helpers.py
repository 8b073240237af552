"""What the secrets greps share: the needles, the log capture, and every place a secret could
surface (logs, the metadata DB, S3, the devstack's OpenSearch logs, ML Commons models)."""

from __future__ import annotations

import base64
import json
import logging
import os
from pathlib import Path

import requests


def needles(named: dict[str, str], user: str = "") -> dict[str, str]:
    """Each secret, a 16-char slice of it (a truncated echo is still a leak), and the base64
    forms it travels in (`Authorization: Basic base64(user:password)`)."""
    out = {}
    for label, value in named.items():
        out[label] = value
        out[f"{label}[4:20]"] = value[4:20]
        out[f"{label} base64"] = base64.b64encode(value.encode()).decode().rstrip("=")
        if user:
            out[f"{label} basic header"] = base64.b64encode(f"{user}:{value}".encode()).decode()
    return out


def leaks(places: dict[str, str], secret_needles: dict[str, str]) -> list[str]:
    return [f"{label} in {place}" for place, text in places.items()
            for label, needle in secret_needles.items() if needle in text]


class Capture:
    """Every log record of the run at DEBUG, from every logger (stdlib and structlog), before
    any handler or masker.

    Airflow reconfigures logging when a run starts (handlers replaced, levels reset), so a
    root handler would miss the run: records are taken where Logger.handle() receives them,
    and every logger is made DEBUG-enabled (SQLAlchemy's would echo each query: left alone).

    Our own records (any logger named batchvec...) are grepped raw: our code must not log a
    secret at all. Third-party DEBUG records are grepped as the task log would show them,
    through Airflow's secrets masker: botocore at DEBUG prints the signed request, session
    token included, and only the masker (which knows connection secrets) stands in its way.
    """

    def __init__(self, monkeypatch):
        self.records: list[tuple[str, str]] = []
        self.formatter = logging.Formatter("%(name)s %(levelname)s %(message)s")
        handle, enabled = logging.Logger.handle, logging.Logger.isEnabledFor

        def capture(logger, record):
            try:
                self.records.append((record.name, self.formatter.format(record)))
            except Exception as exc:  # a record that cannot format is still evidence
                self.records.append((record.name, f"{record.msg!r} {record.args!r} {exc}"))
            if record.levelno >= logger.getEffectiveLevel():  # what would have been emitted
                handle(logger, record)

        def debug_enabled(logger, level):
            return enabled(logger, level) if logger.name.startswith("sqlalchemy") else True

        monkeypatch.setattr(logging.Logger, "handle", capture)
        monkeypatch.setattr(logging.Logger, "isEnabledFor", debug_enabled)
        self._capture_structlog(monkeypatch)

    def _capture_structlog(self, monkeypatch) -> None:
        """Airflow's own loggers, and every `self.log` of a trigger or operator, are structlog
        loggers that never reach logging.Logger.handle: their events are taken where a bound
        logger processes them, and those below its level where the level filter drops them."""
        import traceback

        from airflow._shared.logging.structlog import LEVEL_TO_FILTERING_LOGGER
        from structlog._base import BoundLoggerBase
        from structlog._log_levels import NAME_TO_LEVEL

        def record(bound, level: str, event, args, kw) -> None:
            name = getattr(bound._logger, "name", None) or bound._context.get("logger_name") or ""
            try:
                text = str(event) % args if args else str(event)
            except (TypeError, ValueError):
                text = f"{event!r} {args!r}"
            extra = {**bound._context, **{k: v for k, v in kw.items() if k != "exc_info"}}
            trace = traceback.format_exc() if kw.get("exc_info") else ""
            self.records.append((name, f"{name} {level} {text} {extra} {trace}".rstrip()))

        process = BoundLoggerBase._process_event

        def process_event(bound, method_name, event, event_kw):
            record(bound, method_name, event, (), event_kw)
            return process(bound, method_name, event, event_kw)

        def dropped(level: str):
            def method(bound, event=None, *args, **kw):
                record(bound, level, event, args, kw)
            return method

        monkeypatch.setattr(BoundLoggerBase, "_process_event", process_event)
        for min_level, cls in list(LEVEL_TO_FILTERING_LOGGER.items()):
            for level, value in NAME_TO_LEVEL.items():
                if value < min_level and hasattr(cls, level):
                    monkeypatch.setattr(cls, level, dropped(level))

    @property
    def ours(self) -> str:
        return "\n".join(text for name, text in self.records if "batchvec" in name)

    @property
    def others_masked(self) -> str:
        from airflow.sdk._shared.secrets_masker import redact

        return "\n".join(str(redact(text)) for name, text in self.records if "batchvec" not in name)

    def places(self) -> dict[str, str]:
        return {"our logging (DEBUG, raw)": self.ours,
                "third-party logging (DEBUG, as masked by Airflow)": self.others_masked}


class DevstackLogs:
    """What the OpenSearch node (its own log files and stdout) and the devstack's HTTPS front
    write from now on: ML Commons logs remote errors verbatim there."""

    def __init__(self, devstack):
        from devstack import opensearch_node

        state = Path(devstack.state_dir)
        self.files = [state / "logs" / "opensearch_front.log", state / "logs" / "opensearch_node.log",
                      *sorted((opensearch_node.node_dir(state) / "logs").glob("*.log"))]
        self.start = {f: f.stat().st_size if f.exists() else 0 for f in self.files}

    def places(self) -> dict[str, str]:
        out = {}
        for f in self.files:
            if f.exists():
                with open(f, "rb") as fh:
                    fh.seek(self.start.get(f, 0))
                    out[f"devstack log {f.name}"] = fh.read().decode(errors="replace")
        return out


def _node(devstack) -> requests.Session:
    session = requests.Session()
    session.trust_env = False
    return session


def ml_model_places(devstack, os_session: requests.Session) -> tuple[dict[str, str], dict]:
    """Every ML Commons model as the node gives it back, through the front (GET with its
    internal connector, `_search`) and straight from the node (the `.plugins-ml-model`
    document), with what each holds as the connector's `credential`: absent from both API
    answers, encrypted in the stored document (asserted here, so a change in ML Commons shows)."""
    base, node = devstack.endpoints["opensearch"], devstack.endpoints["opensearch_node"]
    found = os_session.post(base + "/_plugins/_ml/models/_search", timeout=30,
                            json={"query": {"match_all": {}}, "size": 1000}).json()
    places, seen = {"ml models _search": json.dumps(found)}, {}
    for hit in found["hits"]["hits"]:
        if "connector" not in hit["_source"]:
            continue  # a model with a standalone connector (none any more) or a chunk
        model_id = hit["_id"]
        got = os_session.get(base + f"/_plugins/_ml/models/{model_id}", timeout=30).json()
        stored = _node(devstack).get(node + f"/.plugins-ml-model/_doc/{model_id}", timeout=30).json()
        places[f"ml model {model_id} (GET)"] = json.dumps(got)
        places[f"ml model {model_id} (stored)"] = json.dumps(stored)
        cred = stored["_source"]["connector"].get("credential") or {}
        seen[model_id] = {"GET": got["connector"].get("credential", "absent"),
                          "_search": hit["_source"]["connector"].get("credential", "absent"),
                          "stored": {k: v[:4] + "..." for k, v in cred.items()}}
        assert seen[model_id]["GET"] == seen[model_id]["_search"] == "absent", seen[model_id]
        assert {"access_key", "secret_key"} <= set(cred) and all(
            v.startswith("AgV4") for v in cred.values()), seen[model_id]  # encrypted at rest
    groups = os_session.post(base + "/_plugins/_ml/model_groups/_search", timeout=30,
                             json={"query": {"match_all": {}}, "size": 1000})
    places["ml model groups _search"] = groups.text
    return places, seen


def db_places(dag_id: str, run_id: str, batch_predict_ran: bool = True) -> dict[str, str]:
    """XComs, rendered fields, trigger rows and the trigger events handed back to the task
    (`next_kwargs`, stored in the task instance row)."""
    from airflow.models.renderedtifields import RenderedTaskInstanceFields
    from airflow.models.taskinstance import TaskInstance
    from airflow.models.trigger import Trigger
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        xcoms = session.scalars(select(XComModel).where(
            XComModel.dag_id == dag_id, XComModel.run_id == run_id)).all()
        rtif = session.scalars(select(RenderedTaskInstanceFields).where(
            RenderedTaskInstanceFields.dag_id == dag_id,
            RenderedTaskInstanceFields.run_id == run_id)).all()
        tis = session.scalars(select(TaskInstance).where(
            TaskInstance.dag_id == dag_id, TaskInstance.run_id == run_id)).all()
        triggers = session.scalars(select(Trigger)).all()
        places = {f"xcom {x.task_id}[{x.map_index}].{x.key}": json.dumps(x.value, default=str)
                  for x in xcoms}
        places |= {f"rendered fields {r.task_id}[{r.map_index}]": json.dumps(r.rendered_fields, default=str)
                   for r in rtif}
        places |= {f"task instance {t.task_id}[{t.map_index}] next_kwargs":
                   json.dumps(t.next_kwargs, default=str) for t in tis if t.next_kwargs}
        places |= {f"trigger {t.id}": json.dumps(t.kwargs, default=str) for t in triggers}
    assert any(p.startswith("xcom plan") for p in places), sorted(places)
    if batch_predict_ran:
        assert any(p.startswith("rendered fields batch_predict") for p in places), sorted(places)
    return places


def s3_places(devstack, prefix: str) -> dict[str, str]:
    """Every object under the prefix (staged input, outputs, report, DLQ, settings), whole."""
    s3 = devstack.s3.client()
    places = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=devstack.s3.bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            body = s3.get_object(Bucket=devstack.s3.bucket, Key=obj["Key"])["Body"].read()
            places[f"s3 {obj['Key']}"] = body.decode(errors="replace")
    return places


def log_file_places() -> dict[str, str]:
    logs = Path(os.environ["AIRFLOW_HOME"]) / "logs"
    return {f"log file {p}": p.read_text(errors="replace")
            for p in logs.rglob("*") if p.is_file()} if logs.exists() else {}
