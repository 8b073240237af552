"""`python -m devstack.sagemaker`: serve the local SageMaker until SIGTERM/SIGINT.

Credentials come from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY: the key incoming SigV4 must
be signed with, and the key used for S3. Models with a ModelDataUrl run in model containers
started on demand (their venv is built first if missing: `python -m devstack.container.venv`);
the in-process embedder loads on first use, or at start with DEVSTACK_PRELOAD_INPROCESS=1.
On shutdown every container this service started is stopped.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path

from devstack import config, faults, model
from devstack.httpbase import serve
from devstack.sagemaker.api import ControlPlane
from devstack.sagemaker.containers import Pool
from devstack.sagemaker.endpoints import Endpoints
from devstack.sagemaker.jobs import Worker
from devstack.sagemaker.server import build_app, model_preloading
from devstack.sagemaker.store import Store

log = logging.getLogger("devstack.sagemaker")


def _s3_client(endpoint: str, region: str, access_key: str, secret_key: str):
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3", endpoint_url=endpoint, region_name=region, aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
        config=Config(s3={"addressing_style": "path"}, retries={"mode": "standard", "max_attempts": 5},
                      max_pool_connections=20),
    )


def _preload() -> None:
    try:
        model.preload(None)
    except Exception:  # jobs retry the load and fail with the reason if it persists
        log.exception("loading the default model failed")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devstack.sagemaker", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=config.port("sagemaker"))
    parser.add_argument("--state-dir", type=Path, default=Path(os.environ.get(
        "DEVSTACK_SAGEMAKER_DIR", ".")))
    parser.add_argument("--s3-endpoint", default=os.environ.get(
        "DEVSTACK_S3_ENDPOINT", f"http://127.0.0.1:{config.port('s3')}"))
    parser.add_argument("--max-jobs", type=int, default=2, help="transform jobs run at once")
    args = parser.parse_args(argv)

    logging.basicConfig(level=os.environ.get("DEVSTACK_LOG_LEVEL", "INFO"), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    access_key = os.environ.get("AWS_ACCESS_KEY_ID")
    secret_key = os.environ.get("AWS_SECRET_ACCESS_KEY")
    if not access_key or not secret_key:
        log.error("set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (the key SigV4 is checked against)")
        return 2
    region = (os.environ.get("DEVSTACK_REGION") or os.environ.get("AWS_REGION")
              or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

    state_dir = args.state_dir.resolve()
    state_dir.mkdir(parents=True, exist_ok=True)
    faults.init(state_dir)
    if model_preloading():
        threading.Thread(target=_preload, name="model-load", daemon=True).start()

    store = Store(state_dir)
    s3 = _s3_client(args.s3_endpoint, region, access_key, secret_key)
    pool = Pool(s3, state_dir)
    worker = Worker(store, s3, state_dir / "tmp", max_jobs=args.max_jobs, pool=pool)
    endpoints = Endpoints(store, region, pool)
    control = ControlPlane(store, region, on_job_change=worker.wake, extra_ops=endpoints.ops)
    server = serve(build_app(store, control, access_key, secret_key, endpoints), args.host,
                   args.port)
    worker.start()
    log.info("SageMaker devstack on http://%s:%d (region %s, state %s, S3 %s)", args.host,
             args.port, region, state_dir, args.s3_endpoint)

    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    while not done.wait(3600):
        pass
    log.info("shutting down; running jobs stay InProgress and resume at the next start")
    worker.shutdown()
    server.shutdown()
    endpoints.shutdown()
    pool.shutdown()
    time.sleep(0.2)  # let job threads see the flag before the interpreter tears down
    logging.shutdown()
    # Daemon threads may sit in a torch call: exit without waiting for them.
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
