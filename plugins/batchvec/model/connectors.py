"""Find-or-create the ML Commons remote model (with its connector) from a packaged blueprint.

The model is named by a content hash of its connector's definition: an unchanged definition
reuses what an earlier run created; any change (endpoint, instance type, model, role,
credential mode) creates a new model and leaves the old one for runs still using it.

The connector's credential depends on where OpenSearch runs (`credentials`):
- ``aws_keys`` (self-managed clusters, the open-source plugin): the Airflow AWS connection's
  keys (``access_key``, ``secret_key``, ``session_token``). Open-source ML Commons refuses an
  ``aws_sigv4`` connector without them ("Missing credential") and never refreshes them, so
  the pipeline puts fresh keys on the model before each submit and while it waits.
- ``role_arn`` (Amazon OpenSearch Service): ``{"roleArn": connector_role_arn}``; the service
  assumes the role itself.
The connector lives inside the model (an "internal" connector): ML Commons refuses to update
a standalone connector while a model using it is deployed ("models are still using this
connector, please undeploy the models first"), and batch predict deploys the model, whereas
a deployed model's own connector takes new keys at once (`PUT /_plugins/_ml/models/<id>`).
Secrets never enter the definition hash, names, logs or what the task returns.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import logging
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import orjson

from batchvec.hooks import aws, mlcommons
from batchvec.hooks.opensearch import OpenSearchDomainHook
from batchvec.plan.naming import SAGEMAKER_NAME

log = logging.getLogger(__name__)

# Package data (model/blueprints/*.json), found through the package, not the repository layout.
BLUEPRINTS = importlib.resources.files("batchvec.model") / "blueprints"
DEFAULT_BLUEPRINT = "sagemaker_batch_embedding.json"
MODEL_GROUP = "batchvec"

# Allow-lists for every value that reaches the connector body and, through ML Commons'
# `${parameters.X}` substitution, its request templates: none of them admits `"`, `\`, `{`,
# `}`, `$` or a control character, so a value cannot close the JSON string it lands in, add
# keys, or smuggle a placeholder in. ASCII only; checked with fullmatch (a `$` anchor would
# let a trailing newline through).
_INSTANCE_TYPE = re.compile(r"ml\.[a-z0-9]+\.[a-z0-9]+", re.ASCII)
_ROLE_ARN = re.compile(r"arn:aws[a-z-]*:iam::\d{12}:role/[\w+=,.@/-]{1,512}", re.ASCII)
_HTTP_URL = re.compile(r"https?://[A-Za-z0-9.\-]+(:\d+)?", re.ASCII)
_REGION = re.compile(r"[a-z]{2}(-[a-z]+)+-\d", re.ASCII)

# field -> (what the user sets it as, what it should look like, pattern)
_CHECKS = {
    "role_arn": ("connector_role_arn", "an IAM role ARN", _ROLE_ARN),
    "region": ("region (the aws connection's region_name)", "an AWS region such as us-east-1",
               _REGION),
    "model_name": ("sagemaker_model_name", "a SageMaker model name", SAGEMAKER_NAME),
    "endpoint_name": ("sagemaker_endpoint_name", "a SageMaker endpoint name", SAGEMAKER_NAME),
    "instance_type": ("instance_type", "like ml.m5.xlarge", _INSTANCE_TYPE),
    "sagemaker_api_url": ("sagemaker_api_url (the aws connection's "
                          "service_config.sagemaker.endpoint_url)", "scheme://host[:port]",
                          _HTTP_URL),
    "sagemaker_runtime_url": ("sagemaker_runtime_url (the aws connection's "
                              "service_config.sagemaker-runtime.endpoint_url)",
                              "scheme://host[:port]", _HTTP_URL),
}


CREDENTIAL_MODES = ("aws_keys", "role_arn")


@dataclass(frozen=True)
class ModelSpec:
    """What the connector and model depend on; every field is validated before it reaches a
    request template, so a user value can never break out of the JSON."""

    role_arn: str
    region: str
    model_name: str  # the SageMaker model the transform job runs
    endpoint_name: str  # the SageMaker real-time endpoint for neural queries
    instance_type: str = "ml.m5.xlarge"
    instance_count: int = 1
    sagemaker_api_url: str = ""  # default: https://api.sagemaker.<region>.amazonaws.com
    sagemaker_runtime_url: str = ""
    blueprint: str = DEFAULT_BLUEPRINT
    credentials: str = "aws_keys"  # CREDENTIAL_MODES: what the connector signs with
    # CreateTransformJob settings (batchvec.plan.transform_settings checks them).
    batch_strategy: str = "MultiRecord"
    max_payload_mb: int = 1
    max_concurrent_transforms: int = 2
    invocations_timeout_s: int = 600
    invocations_max_retries: int = 3
    tags: tuple = ()  # [{"Key", "Value"}, ...]

    TRANSFORM_FIELDS = ("batch_strategy", "max_payload_mb", "max_concurrent_transforms",
                        "invocations_timeout_s", "invocations_max_retries", "tags")

    def with_default_urls(self) -> ModelSpec:
        """The AWS endpoints of the region where no URL is given; not validated."""
        api = self.sagemaker_api_url or f"https://api.sagemaker.{self.region}.amazonaws.com"
        rt = self.sagemaker_runtime_url or f"https://runtime.sagemaker.{self.region}.amazonaws.com"
        return ModelSpec(**{**asdict(self), "sagemaker_api_url": str(api).rstrip("/"),
                            "sagemaker_runtime_url": str(rt).rstrip("/")})

    def resolved(self) -> ModelSpec:
        spec = self.with_default_urls()
        spec.validate()
        return spec

    def problems(self) -> list[str]:
        """Every invalid field, each naming the param it comes from and the allowed pattern."""
        found = []
        if self.credentials not in CREDENTIAL_MODES:
            found.append(f"connector_credentials: {self.credentials!r} is not one of "
                         f"{', '.join(CREDENTIAL_MODES)}")
        for name, (param, what, pattern) in _CHECKS.items():
            if name == "role_arn" and self.credentials != "role_arn":
                continue  # the connector signs with the AWS connection's keys instead
            value = getattr(self, name)
            if not isinstance(value, str) or not pattern.fullmatch(value):
                found.append(f"{param}: {value!r} is not valid: expected {what} "
                             f"(pattern {pattern.pattern})")
        count = self.instance_count
        if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= 100:
            found.append(f"instance_count: {count!r} must be an integer 1..100")
        from batchvec.plan import (
            transform_settings,  # the same checks plan runs, for direct callers
        )

        _, problems = transform_settings.resolve({
            "batch_strategy": self.batch_strategy, "max_payload_mb": self.max_payload_mb,
            "max_concurrent_transforms": self.max_concurrent_transforms,
            "invocations_timeout_s": self.invocations_timeout_s,
            "invocations_max_retries": self.invocations_max_retries,
            "tags": {t.get("Key"): t.get("Value") for t in self.tags if isinstance(t, dict)}
            if isinstance(self.tags, list | tuple) else self.tags, "dimension": 0})
        found.extend(problems)
        if (not isinstance(self.blueprint, str) or "/" in self.blueprint or "\\" in self.blueprint
                or not (BLUEPRINTS / self.blueprint).is_file()):
            found.append(f"blueprint: {self.blueprint!r} not found in {BLUEPRINTS}")
        return found

    def validate(self) -> None:
        problems = self.problems()
        if problems:
            raise ValueError("; ".join(problems))


_PLACEHOLDER = re.compile(r"\$\{(?!parameters\.)([a-z_]+)\}")


def render_blueprint(template, values: dict):
    """Fill `${name}` placeholders (not ML Commons' `${parameters.X}`), structurally.

    A string that is exactly one placeholder takes the value with its type (so InstanceCount
    stays an integer); placeholders inside longer strings are replaced as text.
    """
    if isinstance(template, dict):
        return {k: render_blueprint(v, values) for k, v in template.items()}
    if isinstance(template, list):
        return [render_blueprint(v, values) for v in template]
    if isinstance(template, str):
        whole = _PLACEHOLDER.fullmatch(template)
        if whole:
            return values[whole.group(1)]
        return _PLACEHOLDER.sub(lambda m: str(values[m.group(1)]), template)
    return template


def definition_hash(definition: dict) -> str:
    return hashlib.sha256(orjson.dumps(definition, option=orjson.OPT_SORT_KEYS)).hexdigest()[:12]


def _credential_identity(spec: ModelSpec, temporary_keys: bool) -> dict:
    """What the definition (and so its hash and name) says about the credential: the role,
    or only that the keys come from the AWS connection, and whether they carry a session
    token; never a secret. Temporary and lasting keys make two models: a model update is a
    partial document update, so a session token once stored could never be taken away again
    and would be signed with lasting keys it does not belong to."""
    if spec.credentials == "role_arn":
        return {"roleArn": spec.role_arn}
    source = "<from the Airflow AWS connection>"
    identity = {"access_key": source, "secret_key": source}
    return {**identity, "session_token": source} if temporary_keys else identity


def connector_definition(spec: ModelSpec, temporary_keys: bool = False) -> dict:
    """The connector as it identifies the model: no secrets (see live_credential)."""
    spec = spec.resolved()
    template = orjson.loads((BLUEPRINTS / spec.blueprint).read_bytes())
    body = render_blueprint(template, {**asdict(spec),
                                       "credential": _credential_identity(spec, temporary_keys)})
    return {"name": f"batchvec-{Path(spec.blueprint).stem}-{definition_hash(body)}".replace("_", "-"),
            **body}


def live_credential(spec: ModelSpec, keys: dict | None) -> dict:
    """The credential the connector really gets: the role, or the AWS connection's keys."""
    if spec.credentials == "role_arn":
        return {"roleArn": spec.role_arn}
    if not keys or not keys.get("access_key") or not keys.get("secret_key"):
        raise ValueError("connector_credentials aws_keys: the AWS connection has no access "
                         "key and secret key to give ML Commons")
    return keys


def aws_connection_keys(aws_conn_id: str) -> dict:
    """The AWS connection's current keys in ML Commons' credential shape, registered with
    Airflow's secrets masker. Temporary keys carry their session token."""
    return keys_of(aws.credentials(aws_conn_id))


class KeyRefresher:
    """Keeps a model's connector keys (``aws_keys``) as fresh as the AWS connection's.

    One botocore session for the whole wait, so assumed-role or instance credentials are
    refreshed by botocore when they near expiry (not on every poll); whenever the frozen
    keys differ from those last put on the model, they are put again, before ML Commons
    signs its next status refresh with them. Use the connection ensure_model took the keys
    from: temporary and lasting keys belong to different models (see _credential_identity).
    """

    def __init__(self, aws_conn_id: str, opensearch_conn_id: str, model_id: str):
        self.aws_conn_id, self.opensearch_conn_id, self.model_id = aws_conn_id, opensearch_conn_id, model_id
        self.pushes = 0
        self._session = None
        self._pushed = None

    def push_if_changed(self) -> bool:
        if self._session is None:
            self._session = aws.session(self.aws_conn_id)
        frozen = self._session.get_credentials().get_frozen_credentials()
        if frozen == self._pushed:
            return False
        mlcommons.update_model_credential(OpenSearchDomainHook(self.opensearch_conn_id, max_retries=2),
                                          self.model_id, keys_of(frozen))
        self._pushed = frozen
        self.pushes += 1
        return True


def keys_of(frozen) -> dict:
    from batchvec.util.redact import mask_secrets

    mask_secrets(frozen.secret_key, frozen.token)
    keys = {"access_key": frozen.access_key, "secret_key": frozen.secret_key}
    if frozen.token:
        keys["session_token"] = frozen.token
    return keys


def ensure_model(hook: OpenSearchDomainHook, spec: ModelSpec, keys: dict | None = None) -> dict:
    """The remote model for `spec`, reused when unchanged, deployed. With ``aws_keys`` an
    existing model gets `keys` (fresh from the AWS connection) on its connector. Returns ids
    and names, never the credential."""
    credential = live_credential(spec, keys)
    definition = connector_definition(spec, temporary_keys="session_token" in credential)
    name = definition["name"]
    model_id = mlcommons.find_model(hook, name)
    created = model_id is None
    if created:
        group = mlcommons.find_or_create_model_group(
            hook, MODEL_GROUP, "Remote embedding models created by batchvec pipelines")
        model_id = mlcommons.register_model(
            hook, name=name, connector={**definition, "credential": credential},
            model_group_id=group,
            description=f"SageMaker model {spec.model_name} ({spec.credentials})")
        log.info("registered model %s (%s)", name, model_id)
    else:
        log.info("reusing model %s (%s): definition unchanged", name, model_id)
        if spec.credentials == "aws_keys":
            mlcommons.update_model_credential(hook, model_id, credential)
    # Batch predict deploys on its own; neural queries' _predict need it deployed. Waits for
    # DEPLOYED: 3.6 refuses the key updates that follow while it is DEPLOYING.
    mlcommons.deploy_model(hook, model_id)
    return {"model_id": model_id, "model_name": name, "model_created": created,
            "credentials": spec.credentials}
