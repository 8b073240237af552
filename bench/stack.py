"""Processes the benchmarks talk to: the null `_bulk` server and an isolated devstack (the
real OpenSearch node behind its HTTPS front, SageMaker with model containers, S3).

Like tests/conftest.py, a devstack here lives in its own temp dir on random free ports, so
a developer's running devstack (or another benchmark) is never touched.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import requests

from bench.common import REPO


def python_env(**extra: str) -> dict[str, str]:
    """The environment a child Python needs to import the library, the devstack and bench."""
    env = dict(os.environ)
    paths = [str(REPO / p) for p in ("plugins", "tools", "dags")] + [str(REPO)]
    env["PYTHONPATH"] = os.pathsep.join(paths + [env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TRANSFORMERS_OFFLINE", "1")
    env.update(extra)
    return env


class NullBulk:
    """Handle on a running null bulk server: its URL and its counters."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"

    def stats(self) -> dict:
        return requests.get(self.url + "/_bench/stats", timeout=30).json()

    def reset(self) -> None:
        requests.post(self.url + "/_bench/reset", timeout=30).raise_for_status()

    def connection(self) -> dict:
        """An Airflow connection (JSON form) for OpenSearchDomainHook pointing here."""
        return {"conn_type": "generic", "host": "127.0.0.1", "port": self.port,
                "schema": "http", "extra": {"auth": "none"}}


@contextlib.contextmanager
def null_bulk(light: bool = False) -> Iterator[NullBulk]:
    cmd = [sys.executable, "-m", "bench.nullbulk"] + (["--light"] if light else [])
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, env=python_env(), cwd=REPO)
    try:
        port = int(proc.stdout.readline())
        yield NullBulk(port)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def devstack(services: tuple[str, ...] = ("s3",), keep: bool = False) -> Iterator[tuple[Path, dict]]:
    """(state dir, endpoints) of a fresh devstack; stopped and removed afterwards."""
    from devstack import launcher

    state = Path(tempfile.mkdtemp(prefix="batchvec-bench-"))
    try:
        endpoints = launcher.up(state, ports=launcher.random_ports(), services=services)
        yield state, endpoints
    finally:
        launcher.down(state, services=services)
        if not keep:
            shutil.rmtree(state, ignore_errors=True)


def opensearch_connection(endpoints: dict) -> dict:
    """An Airflow connection (JSON form) for OpenSearchDomainHook to the devstack's HTTPS front, as
    the pipeline's: basic auth, TLS verified with the devstack CA."""
    host, port = endpoints["opensearch"].split("://", 1)[1].rsplit(":", 1)
    return {"conn_type": "generic", "host": host, "port": int(port), "schema": "https",
            "login": endpoints["opensearch_user"], "password": endpoints["opensearch_password"],
            "extra": {"auth": "basic", "ca_certs": endpoints["opensearch_ca"]}}


def opensearch_session(endpoints: dict) -> requests.Session:
    """requests to the front as its admin; the devstack CA, not REQUESTS_CA_BUNDLE's."""
    session = requests.Session()
    session.auth = (endpoints["opensearch_user"], endpoints["opensearch_password"])
    session.verify, session.trust_env = endpoints["opensearch_ca"], False
    return session


def s3_client(endpoints: dict):
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3", endpoint_url=endpoints["s3"], region_name=endpoints["region"],
        aws_access_key_id=endpoints["aws_access_key_id"],
        aws_secret_access_key=endpoints["aws_secret_access_key"],
        config=Config(s3={"addressing_style": "path"}, max_pool_connections=16),
    )


def run_child(args: list[str], env: dict[str, str] | None = None, timeout: float = 3600) -> dict:
    """Run ``python -m <args>`` and return the JSON object it prints last."""
    proc = subprocess.run([sys.executable, "-m", *args], env=env or python_env(), cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} exited {proc.returncode}: {proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])
