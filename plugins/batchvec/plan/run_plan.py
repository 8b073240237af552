"""The DAG's params: their JSON-schema form, and their resolution into a validated run plan.

Everything a run creates outside Airflow is named from the plan's run key, so any retry of
any task computes the same S3 prefixes, job name and report key.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from jinja2.sandbox import SandboxedEnvironment

from batchvec.batch import job_groups
from batchvec.ingest.records import RESERVED_FIELDS, RecordSpec
from batchvec.ingest.sources import FORMATS as INPUT_FORMATS
from batchvec.ingest.staging import MAX_SHARDS
from batchvec.ingest.staging_groups import MAX_STAGING_TASKS
from batchvec.model.connectors import ModelSpec
from batchvec.plan import estimates, naming, transform_settings
from batchvec.util.redact import scrub

SPACE_TYPES = ("cosinesimil", "l2", "innerproduct")
KNN_ENGINES = ("faiss", "lucene")
# Scheduled runs and backfills read their own day's partition.
DEFAULT_INPUT_URI = "s3://{{ params.bucket }}/input/ds={{ ds }}/"
# What max_reject_ratio bounds; the README's params table says the same words.
REJECT_RATIO_MEANING = ("rejected / records_in above this fails the run (bad input only: "
                        "any failed record fails the run on its own)")
# Why OpenSearch Serverless cannot be a target (the `service` of a sigv4 connection).
AOSS_REFUSED = (
    "OpenSearch Serverless (service 'aoss') cannot run this pipeline: it has no ML Commons "
    "batch predict (no _batch_predict, connectors or ML tasks), and its vector collections "
    "refuse custom document ids, on which the pipeline's retry safety rests (a retried "
    "shard overwrites its documents by _id instead of adding copies). Use an Amazon "
    "OpenSearch Service domain (service 'es') or a self-managed cluster")


REEMBED_MODES = ("changed", "all")
SYNC_MODES = ("upsert", "full")
DELETE_RATIO_MEANING = ("a full sync that would delete more than this share of the index's "
                        "documents fails before deleting any (raise it to allow that)")


def param_schema() -> dict[str, dict]:
    """Param name -> (default, JSON schema) for the trigger form. Kept as data for tests."""
    return {
        "input_uri": {"default": DEFAULT_INPUT_URI, "type": "string", "minLength": 1,
                      "description": "s3:// prefix or object, or a local file/directory path. "
                      "Jinja: {{ ds }} is the run's date, so scheduled runs read their own day."},
        "input_format": {"default": "auto", "enum": list(INPUT_FORMATS),
                         "description": "auto decides by file extension"},
        "id_field": {"default": "id", "type": "string", "minLength": 1},
        "text_field": {"default": "text", "type": "string", "minLength": 1},
        "metadata_fields": {"default": [], "type": "array", "items": {"type": "string"},
                            "description": "input fields copied into each document"},
        "index_name": {"default": "batch-embeddings", "type": "string", "minLength": 1},
        "vector_field": {"default": "embedding", "type": "string", "minLength": 1},
        "space_type": {"default": "cosinesimil", "enum": list(SPACE_TYPES)},
        "bucket": {"default": os.environ.get("BATCHVEC_BUCKET", "batchvec"), "type": "string",
                   "description": "S3 bucket for staging, outputs, rejects, DLQ and reports"},
        "staging_prefix": {"default": "runs", "type": "string",
                           "description": "key prefix under the bucket: '/'-separated letters, "
                           "digits and _ . = -"},
        # No production default points anywhere: empty unless the deployment sets the
        # BATCHVEC_* variable (the devstack does), and `plan` says what is missing.
        "sagemaker_model_name": {"default": os.environ.get("BATCHVEC_SAGEMAKER_MODEL", ""),
                                 "type": "string",
                                 "description": "the SageMaker model the transform job runs "
                                 "(required; default $BATCHVEC_SAGEMAKER_MODEL)"},
        "sagemaker_endpoint_name": {"default": os.environ.get("BATCHVEC_SAGEMAKER_ENDPOINT", ""),
                                    "type": "string",
                                    "description": "real-time endpoint for neural queries "
                                    "(required; default $BATCHVEC_SAGEMAKER_ENDPOINT)"},
        "instance_type": {"default": "ml.m5.xlarge", "type": "string"},
        "instance_count": {"default": 1, "type": "integer", "minimum": 1, "maximum": 100},
        "connector_role_arn": {"default": os.environ.get("BATCHVEC_CONNECTOR_ROLE_ARN", ""),
                               "type": "string",
                               "description": "role Amazon OpenSearch Service assumes to call "
                               "SageMaker (required there; self-managed clusters sign with the "
                               "AWS connection's keys instead; default "
                               "$BATCHVEC_CONNECTOR_ROLE_ARN)"},
        "knn_engine": {"default": os.environ.get("BATCHVEC_KNN_ENGINE", "faiss"),
                       "enum": list(KNN_ENGINES),
                       "description": "k-NN engine of a new index: faiss (native, the "
                       "default), or lucene (pure Java: where the native libraries are "
                       "missing)"},
        "shards": {"default": 0, "type": "integer", "minimum": 0, "maximum": MAX_SHARDS,
                   "description": "input shards; 0 = 2 x instance_count (at least 2)"},
        # Staging in parallel (README: Staging at scale).
        "staging_group_mb": {"default": 1024, "type": "number", "exclusiveMinimum": 0,
                             "description": "input MB (as stored) per staging task; the files "
                             "are grouped in listing order"},
        "max_staging_tasks": {"default": 32, "type": "integer", "minimum": 1,
                              "maximum": MAX_STAGING_TASKS,
                              "description": "at most this many staging groups (larger groups "
                              "past it)"},
        "staging_commit_mb": {"default": 64, "type": "number", "minimum": 0,
                              "description": "a staging task commits at the first file boundary "
                              "past this many input MB, so its retry skips what it committed "
                              "(0: after every file)"},
        "wait_timeout": {"default": 6 * 3600, "type": "integer", "minimum": 1,
                         "description": "seconds to wait for the transform job before cancelling it"},
        "max_reject_ratio": {"default": 0.01, "type": "number", "minimum": 0, "maximum": 1,
                             "description": REJECT_RATIO_MEANING},
        "keep_staging": {"default": False, "type": "boolean",
                         "description": "keep the staged input shards after a good run"},
        "keep_outputs": {"default": True, "type": "boolean",
                         "description": "keep the transform job's outputs after a good run, so "
                         "a rerun re-indexes without re-embedding (or expire them with an S3 "
                         "lifecycle rule on <staging_prefix>/*/output/)"},
        "bulk_concurrency": {"default": 4, "type": "integer", "minimum": 1, "maximum": 64},
        # Incremental runs (README: Incremental runs, deletions and model switches).
        "reembed": {"default": "changed", "enum": list(REEMBED_MODES),
                    "description": "changed: send the model only documents that are new or "
                    "whose text, metadata or model changed; all: every record"},
        "sync_mode": {"default": "upsert", "enum": list(SYNC_MODES),
                      "description": "upsert: add and replace; full: the input is a complete "
                      "snapshot of its source, whose documents missing from it are deleted"},
        "source_id": {"default": "", "type": "string",
                      "description": "names this input's source in each document; a full sync "
                      "deletes only its own source's documents. Empty: input_uri as written, "
                      "before {{ ds }} is filled in (so every day of a schedule is one source)"},
        "max_delete_ratio": {"default": 0.05, "type": "number", "minimum": 0, "maximum": 1,
                             "description": DELETE_RATIO_MEANING},
        "version_field": {"default": "", "type": "string",
                          "description": "input field holding each record's version (integer, "
                          "or ISO date/time); empty: the run's logical date. The newest "
                          "version of a document wins, whatever order runs finish in"},
        "keep_previous_index": {"default": 7, "type": "number", "minimum": 0,
                                "description": "days the index a model switch replaced is kept "
                                "for a rollback (python -m batchvec.index.aliases rollback)"},
        **transform_settings.schema(),
        **job_groups.schema(),  # README: Jobs per shard group
        **estimates.schema(),  # dry_run and the preview's rates
    }


@dataclass(frozen=True)
class Plan:
    dag_id: str
    run_id: str
    run_key: str
    ds: str
    input_uri: str
    input_format: str
    id_field: str
    text_field: str
    metadata_fields: list[str]
    index_name: str
    vector_field: str
    space_type: str
    knn_engine: str
    bucket: str
    run_prefix: str  # key prefix of everything this run writes
    shards: int
    wait_timeout: int
    max_reject_ratio: float
    keep_staging: bool
    keep_outputs: bool
    bulk_concurrency: int
    content_type: str = "application/jsonlines"  # TransformInput.ContentType
    accept: str = "application/jsonlines"  # TransformOutput.Accept
    dimension: int = 384  # what every output vector must have (0: any)
    model: dict = field(default_factory=dict)  # ModelSpec fields
    reembed: str = "changed"
    sync_mode: str = "upsert"
    source_id: str = ""
    max_delete_ratio: float = 0.05
    version_field: str = ""
    keep_previous_index: float = 7.0
    staging_group_mb: float = 1024.0
    max_staging_tasks: int = 32
    staging_commit_mb: float = 64.0
    max_records_per_job: int = 5_000_000  # job_groups
    max_jobs: int = 64
    max_parallel_jobs: int = 4
    version: int = 0  # external version of this run's writes (its logical date, epoch s)
    model_identity: str = ""  # what the vectors depend on; names the physical index
    dry_run: bool = False  # plan task previews the run and stops it (batchvec.plan.preview)
    embed_docs_per_s_per_instance: float = 0.0  # the preview's rates (batchvec.plan.estimates)
    index_docs_per_s: float = estimates.INDEX_DOCS_PER_S
    stage_mb_per_s: float = estimates.STAGE_MB_PER_S

    def key(self, *parts: str) -> str:
        return naming.join_key(self.run_prefix, *parts)

    def uri(self, *parts: str) -> str:
        return naming.join_s3(self.bucket, self.run_prefix, *parts)

    @property
    def record_spec(self) -> RecordSpec:
        """The one description of a record that reading and staging both follow."""
        return RecordSpec(self.id_field, self.text_field, tuple(self.metadata_fields))

    @property
    def model_spec(self) -> ModelSpec:
        return ModelSpec(**self.model)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Plan:
        return cls(**data)


def _render(value: str, context: dict) -> str:
    return SandboxedEnvironment().from_string(value).render(**context)


_REQUIRED = {  # param -> the environment variable a deployment may preset it with
    "sagemaker_model_name": "BATCHVEC_SAGEMAKER_MODEL",
    "sagemaker_endpoint_name": "BATCHVEC_SAGEMAKER_ENDPOINT",
    "connector_role_arn": "BATCHVEC_CONNECTOR_ROLE_ARN",
}


def resolve_plan(params: dict, *, dag_id: str, run_id: str, ds: str, region: str,
                 sagemaker_api_url: str = "", sagemaker_runtime_url: str = "",
                 opensearch_service: str | None = None,
                 connector_credentials: str = "aws_keys", version: int = 0) -> Plan:
    """Validate params and build the plan; raise ValueError naming every bad param at once.

    ``opensearch_service`` is the SigV4 service of the OpenSearch connection (None for basic
    auth): Serverless ('aoss') is refused here, before anything is created.
    ``connector_credentials`` (from the connection, see OpenSearchDomainHook.target) says whether
    the connector signs with the AWS connection's keys or a role (`connector_role_arn`).
    """
    errors: list[str] = []
    if opensearch_service == "aoss":
        errors.append(f"opensearch connection: {AOSS_REFUSED}")
    schema = param_schema()
    p = {name: params.get(name, spec["default"]) for name, spec in schema.items()}
    # Wrong JSON types first (conf from the CLI or API skips the form): a later check must
    # never crash on them, and "false" must not become True.
    for name, spec in schema.items():
        want = {"string": str, "boolean": bool, "array": list, "object": dict}.get(spec.get("type"))
        if want is not None and not isinstance(p[name], want):
            errors.append(f"{name}: must be a {spec['type']}, got {p[name]!r}")
            p[name] = spec["default"]
    input_uri = _render(str(p["input_uri"]), {"ds": ds, "params": p, "run_id": run_id})
    if input_uri.startswith("s3://"):
        try:
            naming.parse_s3_uri(input_uri)
        except ValueError as exc:
            errors.append(f"input_uri: {exc}")
    elif "://" in input_uri:
        # a URL pasted with user:password@ in it is not repeated into the log
        errors.append(f"input_uri: {scrub(input_uri)!r} is neither s3:// nor a local path")
    elif not Path(input_uri).exists():
        errors.append(f"input_uri: local path {input_uri!r} does not exist on this worker")
    if p["input_format"] not in INPUT_FORMATS:
        errors.append(f"input_format: {p['input_format']!r} not one of {INPUT_FORMATS}")
    try:
        naming.validate_index_name(p["index_name"])
    except ValueError as exc:
        errors.append(f"index_name: {exc}")
    try:
        naming.validate_bucket_name(p["bucket"])
    except ValueError as exc:
        errors.append(f"bucket: {exc}")
    try:  # it becomes part of the S3 URIs in the _batch_predict request
        naming.validate_key_prefix(p["staging_prefix"])
    except ValueError as exc:
        errors.append(f"staging_prefix: {exc}")
    if p["knn_engine"] not in KNN_ENGINES:
        errors.append(f"knn_engine: {p['knn_engine']!r} not one of {KNN_ENGINES}")
    if p["space_type"] not in SPACE_TYPES:
        errors.append(f"space_type: {p['space_type']!r} not one of {SPACE_TYPES}")
    for name, low, high in (("shards", 0, MAX_SHARDS), ("instance_count", 1, 100),
                            ("wait_timeout", 1, None), ("bulk_concurrency", 1, 64),
                            ("max_staging_tasks", 1, MAX_STAGING_TASKS)):
        value = p[name]
        if (not isinstance(value, int) or isinstance(value, bool) or value < low
                or (high is not None and value > high)):
            within = f"in {low}..{high}" if high is not None else f">= {low}"
            errors.append(f"{name}: must be an integer {within}, got {value!r}")
            p[name] = schema[name]["default"]  # so the model checks below do not repeat it
    for name in ("max_reject_ratio", "max_delete_ratio"):
        ratio = p[name]
        if isinstance(ratio, bool) or not isinstance(ratio, int | float) or not 0 <= ratio <= 1:
            errors.append(f"{name}: must be a number between 0 and 1, got {ratio!r}")
            p[name] = schema[name]["default"]
    for name, low in (("staging_group_mb", 1e-6), ("staging_commit_mb", 0)):
        mb = p[name]
        if isinstance(mb, bool) or not isinstance(mb, int | float) or mb < low:
            errors.append(f"{name}: must be a number of MB >= {low:g}, got {mb!r}")
            p[name] = schema[name]["default"]
    keep = p["keep_previous_index"]
    if isinstance(keep, bool) or not isinstance(keep, int | float) or keep < 0:
        errors.append(f"keep_previous_index: must be a number of days >= 0, got {keep!r}")
        p["keep_previous_index"] = schema["keep_previous_index"]["default"]
    for name, allowed in (("reembed", REEMBED_MODES), ("sync_mode", SYNC_MODES)):
        if p[name] not in allowed:
            errors.append(f"{name}: {p[name]!r} not one of {allowed}")
    if p["version_field"] and p["version_field"] in (p["id_field"], p["text_field"]):
        errors.append(f"version_field: {p['version_field']!r} is the id or text field")
    try:
        RecordSpec(p["id_field"], p["text_field"])
    except ValueError as exc:
        errors.append(f"id_field/text_field: {exc}")
    if not p["vector_field"] or p["vector_field"] in ("_id", "text"):
        errors.append(f"vector_field: {p['vector_field']!r} is empty or a field every document "
                      "already has (_id, text)")
    reserved = {*RESERVED_FIELDS, p["vector_field"]}
    metadata = list(p["metadata_fields"])
    if any(not isinstance(m, str) or not m or m in reserved for m in metadata):
        errors.append(f"metadata_fields: names must be non-empty strings other than {sorted(reserved)}")
    elif len(set(metadata)) < len(metadata):
        errors.append(f"metadata_fields: a name is listed twice in {metadata}")
    required = [n for n in _REQUIRED if n != "connector_role_arn" or connector_credentials == "role_arn"]
    missing = [name for name in required if isinstance(p[name], str) and not p[name].strip()]
    for name in missing:
        errors.append(f"{name}: not set: pass it in the run's params or set "
                      f"{_REQUIRED[name]} for the workers")
    transform, problems = transform_settings.resolve(p)
    errors.extend(problems)
    rates, problems = estimates.resolve(p)
    errors.extend(problems)
    jobs, problems = job_groups.resolve(p)
    errors.extend(problems)
    spec = ModelSpec(role_arn=p["connector_role_arn"], region=region,
                     model_name=p["sagemaker_model_name"], endpoint_name=p["sagemaker_endpoint_name"],
                     instance_type=p["instance_type"], instance_count=p["instance_count"],
                     sagemaker_api_url=sagemaker_api_url, sagemaker_runtime_url=sagemaker_runtime_url,
                     credentials=connector_credentials,
                     **{k: transform[k] for k in ModelSpec.TRANSFORM_FIELDS})
    spec = spec.with_default_urls()
    # With the others, one message names every bad param (a missing one only once; the
    # transform checks run for plan and again in ModelSpec: each said once).
    errors.extend(e for e in spec.problems() if not e.startswith(tuple(missing)))
    if errors:
        raise ValueError("invalid params:\n  " + "\n  ".join(dict.fromkeys(errors)))
    key = naming.run_key(dag_id, run_id)
    shards = p["shards"] or max(2, 2 * p["instance_count"])
    # As written, before rendering: the days of one schedule are one source.
    source_id = p["source_id"].strip() or str(params.get("input_uri", DEFAULT_INPUT_URI))
    return Plan(
        dag_id=dag_id, run_id=run_id, run_key=key, ds=ds, input_uri=input_uri,
        input_format=p["input_format"], id_field=p["id_field"], text_field=p["text_field"],
        metadata_fields=metadata, index_name=p["index_name"], vector_field=p["vector_field"],
        space_type=p["space_type"], knn_engine=p["knn_engine"], bucket=p["bucket"],
        run_prefix=naming.join_key(p["staging_prefix"], key), shards=shards,
        wait_timeout=p["wait_timeout"], max_reject_ratio=float(p["max_reject_ratio"]),
        keep_staging=bool(p["keep_staging"]), keep_outputs=bool(p["keep_outputs"]),
        dry_run=bool(p["dry_run"]), **rates,
        bulk_concurrency=p["bulk_concurrency"], content_type=transform["content_type"],
        accept=transform["accept"], dimension=transform["dimension"],
        model=asdict(spec), reembed=p["reembed"], sync_mode=p["sync_mode"],
        source_id=source_id, max_delete_ratio=float(p["max_delete_ratio"]),
        version_field=p["version_field"], keep_previous_index=float(p["keep_previous_index"]),
        version=int(version), model_identity=model_identity(spec, transform),
        staging_group_mb=float(p["staging_group_mb"]), max_staging_tasks=p["max_staging_tasks"],
        staging_commit_mb=float(p["staging_commit_mb"]), **jobs,
    )


def model_identity(spec: ModelSpec, transform: dict) -> str:
    """What a document's vector depends on besides its text: the SageMaker model, the
    connector blueprint, the wire format and the dimension. Another identity means another
    physical index (index.aliases). The endpoint is for queries and not part of it."""
    import hashlib
    import json

    what = {"model_name": spec.model_name, "blueprint": spec.blueprint,
            "content_type": transform["content_type"], "accept": transform["accept"],
            "dimension": transform["dimension"]}
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:12]
