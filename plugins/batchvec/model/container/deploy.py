"""Find-or-create what a SageMaker embedding model needs: the package in S3, the model
(DLC image + ModelDataUrl + execution role + environment), and optionally a real-time
endpoint (endpoint config + endpoint) for neural queries.

Idempotent: the S3 key holds the package's sha256, so the same package is never uploaded
twice; a model whose definition is unchanged is reused, a changed one is replaced (SageMaker
models are immutable; jobs already running keep the definition they copied); endpoint
configs are named by a hash of what they serve, and an endpoint is updated only when its
config changes. `dry_run` makes only Describe/Head calls and says what it would do.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from botocore.exceptions import BotoCoreError, ClientError

from batchvec.model.container.package import Package

MIB = 1 << 20


@dataclass(frozen=True)
class ModelSpec:
    name: str
    bucket: str
    prefix: str
    image: str
    role_arn: str
    environment: dict[str, str]
    endpoint: str | None = None
    endpoint_instance_type: str = "ml.m5.large"
    endpoint_instance_count: int = 1
    tags: dict[str, str] = field(default_factory=dict)

    def key(self, package: Package) -> str:
        return "/".join(p for p in (self.prefix.strip("/"), self.name, package.short,
                                    "model.tar.gz") if p)


def model_environment(workers: int = 1, timeout_s: int = 600, max_response_mb: int = 100,
                      batch_size: int = 32, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The container environment batch transform and endpoints need.

    SAGEMAKER_MODEL_SERVER_TIMEOUT: the server's own response timeout (toolkit default 60 s)
    must not cut a large MultiRecord request short of InvocationsTimeoutInSeconds.
    MMS_MAX_RESPONSE_SIZE: the server drops answers over 6,553,500 bytes by default ("Worker
    died."); 384 floats are ~4.5 KB a record, so a MultiRecord request of short texts passes it.
    """
    env = {
        "SAGEMAKER_PROGRAM": "inference.py",
        "SAGEMAKER_MODEL_SERVER_WORKERS": str(workers),
        "SAGEMAKER_MODEL_SERVER_TIMEOUT": str(timeout_s),
        "MMS_MAX_RESPONSE_SIZE": str(max_response_mb * MIB),
        "BATCHVEC_BATCH_SIZE": str(batch_size),
    }
    env.update(extra or {})
    too_long = [k for k, v in env.items() if len(v.encode()) > 1024]
    if too_long or len(env) > 100:
        raise SystemExit(f"environment values must be <= 1024 bytes: {too_long}")
    return env


def _tags(tags: dict[str, str]) -> list[dict]:
    return [{"Key": k, "Value": v} for k, v in sorted(tags.items())]


def _short_hash(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:8]


@dataclass
class Deployer:
    s3: object
    sagemaker: object
    say: Callable[[str], None] = print
    poll_s: float = 2.0
    actions: list[dict] = field(default_factory=list)
    dry_run: bool = False

    def _do(self, dry_run: bool, action: str, what: str, call: Callable[[], object] | None = None,
            request: dict | None = None):
        self.actions.append({"action": action, "what": what, **({"request": request} if request else {})})
        verb = f"would {action}" if dry_run and call else action
        self.say(f"{verb}: {what}" + (f"\n  {json.dumps(request, indent=2, default=str)}"
                                      if request and dry_run else ""))
        return None if dry_run or call is None else call()

    def run(self, spec: ModelSpec, package: Package, dry_run: bool = False,
            wait: bool = True) -> dict:
        self.dry_run = dry_run
        key = spec.key(package)
        url = f"s3://{spec.bucket}/{key}"
        self._upload(spec, package, key, url, dry_run)
        container = {"Image": spec.image, "ModelDataUrl": url, "Environment": spec.environment}
        self._model(spec, container, dry_run)
        result = {"model_name": spec.name, "model_data_url": url, "sha256": package.sha256,
                  "image": spec.image, "dry_run": dry_run, "actions": self.actions}
        if spec.endpoint:
            result["endpoint_name"] = spec.endpoint
            self._endpoint(spec, container, dry_run, wait)
        return result

    def _upload(self, spec: ModelSpec, package: Package, key: str, url: str, dry_run: bool):
        try:
            head = self.s3.head_object(Bucket=spec.bucket, Key=key)
            if head.get("Metadata", {}).get("sha256") == package.sha256:
                return self._do(dry_run, "reuse", f"{url} ({len(package.data) / MIB:.1f} MiB, "
                                f"sha256 {package.short})")
        except (ClientError, BotoCoreError):
            pass
        return self._do(dry_run, "upload", f"{url} ({len(package.data) / MIB:.1f} MiB, sha256 "
                        f"{package.short}, {len(package.members)} files)", lambda: self.s3.put_object(
                            Bucket=spec.bucket, Key=key, Body=package.data,
                            ContentType="application/gzip", Metadata={"sha256": package.sha256}))

    def _describe(self, call: Callable[[], dict]) -> dict | None:
        try:
            return call()
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            message = exc.response.get("Error", {}).get("Message", "")
            if code in ("ValidationException", "ResourceNotFound") and "ould not find" in message:
                return None
            if not self.dry_run:
                raise
            self.say(f"(cannot read the current state: {exc}; assuming it does not exist)")
        except BotoCoreError as exc:  # no credentials or no network: a dry run still plans
            if not self.dry_run:
                raise
            self.say(f"(cannot read the current state: {exc}; assuming it does not exist)")
        return None

    def _model(self, spec: ModelSpec, container: dict, dry_run: bool):
        request = {"ModelName": spec.name, "PrimaryContainer": container,
                   "ExecutionRoleArn": spec.role_arn}
        if spec.tags:
            request["Tags"] = _tags(spec.tags)
        existing = self._describe(lambda: self.sagemaker.describe_model(ModelName=spec.name))
        if existing is not None:
            have = existing.get("PrimaryContainer") or {}
            same = all(have.get(k) == container[k] for k in ("Image", "ModelDataUrl")) and (
                (have.get("Environment") or {}) == container["Environment"]
                and existing.get("ExecutionRoleArn") == spec.role_arn)
            if same:
                return self._do(dry_run, "reuse", f"model {spec.name} (definition unchanged)")
            self._do(dry_run, "replace", f"model {spec.name} (its definition changed: "
                     "DeleteModel, then CreateModel)",
                     lambda: self.sagemaker.delete_model(ModelName=spec.name))
        return self._do(dry_run, "create", f"model {spec.name}",
                        lambda: self.sagemaker.create_model(**request), request)

    def _endpoint(self, spec: ModelSpec, container: dict, dry_run: bool, wait: bool):
        variant = {"VariantName": "AllTraffic", "ModelName": spec.name,
                   "InitialInstanceCount": spec.endpoint_instance_count,
                   "InstanceType": spec.endpoint_instance_type}
        config = f"{spec.endpoint}-{_short_hash([container, variant])}"[:63]
        if self._describe(lambda: self.sagemaker.describe_endpoint_config(
                EndpointConfigName=config)) is None:
            request = {"EndpointConfigName": config, "ProductionVariants": [variant]}
            if spec.tags:
                request["Tags"] = _tags(spec.tags)
            self._do(dry_run, "create", f"endpoint config {config}",
                     lambda: self.sagemaker.create_endpoint_config(**request), request)
        else:
            self._do(dry_run, "reuse", f"endpoint config {config}")
        existing = self._describe(lambda: self.sagemaker.describe_endpoint(
            EndpointName=spec.endpoint))
        if existing is None:
            request = {"EndpointName": spec.endpoint, "EndpointConfigName": config}
            self._do(dry_run, "create", f"endpoint {spec.endpoint}",
                     lambda: self.sagemaker.create_endpoint(**request), request)
        elif existing.get("EndpointConfigName") != config:
            self._do(dry_run, "update", f"endpoint {spec.endpoint} to {config}",
                     lambda: self.sagemaker.update_endpoint(EndpointName=spec.endpoint,
                                                            EndpointConfigName=config))
        elif existing.get("EndpointStatus") == "InService":
            return self._do(dry_run, "reuse", f"endpoint {spec.endpoint} (InService)")
        if not dry_run and wait:
            self._wait_in_service(spec.endpoint)

    def _wait_in_service(self, name: str, timeout: float = 1800.0) -> None:
        deadline, started, last = time.monotonic() + timeout, time.monotonic(), None
        while True:
            desc = self.sagemaker.describe_endpoint(EndpointName=name)
            status = desc["EndpointStatus"]
            if status != last:
                self.say(f"endpoint {name}: {status} after {time.monotonic() - started:.0f}s")
                last = status
            if status == "InService":
                return
            if status == "Failed":
                raise SystemExit(f"endpoint {name} Failed: {desc.get('FailureReason')}")
            if time.monotonic() > deadline:
                raise SystemExit(f"endpoint {name} still {status} after {timeout:.0f}s")
            time.sleep(self.poll_s)
