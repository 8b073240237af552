"""Calling the model container the way batch transform does: one POST /invocations per
mini-batch (records joined by newlines) with the job's Content-Type and Accept, the
InvocationsTimeoutInSeconds and InvocationsMaxRetries of ModelClientConfig, and one answer
line per record expected back.

What is retried ([U] in AWS's docs; chosen here): timeouts, connection errors and 5xx.
A 4xx is the container refusing the data: retrying cannot help, the file fails at once.
"""

from __future__ import annotations

import logging
import subprocess
from dataclasses import dataclass

import requests

from devstack.container.process import Container
from devstack.sagemaker import dataprocessing as dp
from devstack.sagemaker.transform import ModelFailed, Record

log = logging.getLogger("devstack.sagemaker.invoke")

DEFAULT_TIMEOUT_S = 600
DEFAULT_RETRIES = 3
MAX_MESSAGE = 600  # of the container's answer, in a FailureReason


def execution_parameters(container: Container) -> dict:
    """GET /execution-parameters; {} when the container has none (MMS answers 404)."""
    try:
        resp = container.session.get(container.url + "/execution-parameters", timeout=5)
        if resp.status_code == 200 and isinstance(resp.json(), dict):
            return resp.json()
    except (requests.RequestException, ValueError):
        pass
    return {}


def _lines(batch: list[Record]) -> str:
    first, last = batch[0].line, batch[-1].line
    return f"line {first}" if first == last else f"lines {first}-{last} ({len(batch)} records)"


@dataclass
class ContainerPredict:
    container: Container
    content_type: str
    accept: str
    timeout: float = DEFAULT_TIMEOUT_S
    retries: int = DEFAULT_RETRIES
    troubled: bool = False  # timed out, lost the connection or answered 5xx at least once

    def __call__(self, batch: list[Record]) -> list:
        body = b"\n".join(rec.payload for rec in batch)
        where = _lines(batch)
        for attempt in range(self.retries + 1):
            retry = f" (after {attempt} retries)" if attempt else ""
            try:
                status, data, _ = self.container.invoke(body, self.content_type, self.accept,
                                                        self.timeout)
            except requests.Timeout:
                self.troubled = True
                failure = ModelFailed("ClientError", f"{where}: Model server did not respond to "
                                      f"/invocations request within {self.timeout:g} seconds{retry}")
            except requests.ConnectionError as exc:
                self.troubled = True
                if self._exited():
                    raise ModelFailed(
                        "AlgorithmError", f"{where}: the model container exited (code "
                        f"{self.container.proc.returncode}) during the request; its log ends: "
                        f"{self.container.log_tail(600)}", fatal=True) from None
                failure = ModelFailed("ClientError", f"{where}: Unable to get response from "
                                      f"algorithm: {exc}{retry}")
            else:
                if status == 200:
                    return self._answers(data, batch, where)
                message = data.decode("utf-8", "replace").strip()[:MAX_MESSAGE]
                failure = ModelFailed("ClientError", f"{where}: Received {status} from the model "
                                      f"container{retry}. Message: {message}")
                if status < 500:
                    raise failure
                self.troubled = True
            if attempt < self.retries:
                log.warning("retrying /invocations (%s): %s", attempt + 1, failure)
        raise failure

    def _exited(self) -> bool:
        """A dropped connection from a dying container comes a moment before its exit."""
        try:
            self.container.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            return False
        return True

    def _answers(self, data: bytes, batch: list[Record], where: str) -> list:
        # [U] whether a trailing newline may follow the last answer: accepted.
        lines = data.removesuffix(b"\n").split(b"\n") if data else []
        if len(lines) != len(batch):
            raise ModelFailed(
                "ClientError", f"{where}: the model container answered {len(lines)} lines for "
                f"{len(batch)} records; it must return one line per record (newline-separated, "
                f"in order). Answer starts: {data[:200].decode('utf-8', 'replace')}")
        answers = []
        for i, line in enumerate(lines):
            try:
                answers.append(dp.loads(line))
            except dp.FilterError as exc:
                raise ModelFailed("ClientError", f"{where}: answer line {i + 1} is not JSON "
                                  f"({exc}): {line[:200].decode('utf-8', 'replace')}") from None
        return answers
