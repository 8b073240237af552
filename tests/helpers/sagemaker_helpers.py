"""Helpers for the devstack SageMaker tests: the service as a child process, job requests,
and S3/job polling."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import boto3
import pytest
import requests
from botocore.config import Config

from devstack import launcher
from tests.helpers.paths import REPO

MODEL = "minilm-test"
CONTAINER = {"Image": "763104351884.dkr.ecr.us-east-1.amazonaws.com/huggingface-pytorch-inference:2.1",
             "Environment": {"HF_MODEL_ID": "sentence-transformers/all-MiniLM-L6-v2",
                             "HF_TASK": "feature-extraction"}}


class Service:
    """The SageMaker service as a child process on a free port (restartable, killable)."""

    def __init__(self, state: Path, s3):
        self.state, self.s3 = state, s3
        self.port = launcher.free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        env = dict(os.environ, AWS_ACCESS_KEY_ID=self.s3.access_key,
                   AWS_SECRET_ACCESS_KEY=self.s3.secret_key, DEVSTACK_REGION=self.s3.region,
                   HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO))
        env.pop("AWS_SESSION_TOKEN", None)
        log = open(self.state / "service.log", "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "devstack.sagemaker", "--host", "127.0.0.1", "--port",
             str(self.port), "--state-dir", str(self.state), "--s3-endpoint", self.s3.endpoint],
            stdout=log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log_tail()
            try:
                if requests.get(self.url + "/ping", timeout=1).status_code == 200:
                    return
            except requests.ConnectionError:
                pass
            time.sleep(0.1)
        raise AssertionError("service did not answer /ping within 30 s\n" + self.log_tail())

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()

    def log_tail(self) -> str:
        return (self.state / "service.log").read_text(errors="replace")[-3000:]

    def client(self, name: str = "sagemaker", secret: str | None = None, key: str | None = None,
               attempts: int = 3):
        return boto3.client(
            name, endpoint_url=self.url, region_name=self.s3.region,
            aws_access_key_id=key or self.s3.access_key,
            aws_secret_access_key=secret or self.s3.secret_key,
            config=Config(retries={"mode": "standard", "total_max_attempts": attempts}))


def unique_name(prefix: str = "job") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def put_jsonl(s3, bucket: str, key: str, records: list) -> None:
    body = "".join(json.dumps(r) + "\n" for r in records)
    s3.put_object(Bucket=bucket, Key=key, Body=body.encode())


def job_request(name: str, bucket: str, *, input_prefix="in/", output="out/",
                data_type="S3Prefix", split="Line", join="Input", input_filter="$.text",
                assemble="Line", **extra) -> dict:
    """A CreateTransformJob request in the shape the pipeline sends."""
    return {
        "TransformJobName": name, "ModelName": MODEL, "BatchStrategy": "MultiRecord",
        "MaxPayloadInMB": 6, "MaxConcurrentTransforms": 1,
        "TransformInput": {"DataSource": {"S3DataSource": {
            "S3DataType": data_type, "S3Uri": f"s3://{bucket}/{input_prefix}"}},
            "ContentType": "application/jsonlines", "SplitType": split},
        "TransformOutput": {"S3OutputPath": f"s3://{bucket}/{output}", "AssembleWith": assemble,
                            "Accept": "application/jsonlines"},
        "TransformResources": {"InstanceType": "ml.m5.xlarge", "InstanceCount": 1},
        "DataProcessing": {"InputFilter": input_filter, "OutputFilter": "$", "JoinSource": join},
        **extra,
    }


def wait(sm, name: str, statuses=("Completed", "Failed", "Stopped"), timeout=90.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        desc = sm.describe_transform_job(TransformJobName=name)
        if desc["TransformJobStatus"] in statuses or time.monotonic() > deadline:
            assert desc["TransformJobStatus"] in statuses, desc
            return desc
        time.sleep(0.2)


def keys(s3, bucket: str, prefix: str) -> list[str]:
    return sorted(o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", []))


def read_lines(s3, bucket: str, key: str) -> list[dict]:
    body = s3.get_object(Bucket=bucket, Key=key)["Body"].read().decode()
    assert body.endswith("\n")
    return [json.loads(line) for line in body.splitlines()]


def error_of(exc: pytest.ExceptionInfo) -> tuple[str, str, int]:
    err = exc.value.response
    return err["Error"]["Code"], err["Error"]["Message"], err["ResponseMetadata"]["HTTPStatusCode"]
