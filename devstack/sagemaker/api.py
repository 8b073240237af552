"""The SageMaker control-plane operations: validation as AWS does it, and the response shapes
of botocore's sagemaker service model (2017-07-24).

Field checks answer in the service framework's words ("1 validation error detected: Value
'x' at 'transformJobName' failed to satisfy constraint: ..."); rules of the service itself
(model must exist, names unique forever, payload limits) in SageMaker's.
"""

from __future__ import annotations

import base64
import logging
import re
from collections.abc import Callable

from devstack import faults
from devstack.sagemaker import dataprocessing
from devstack.sagemaker.store import Store

log = logging.getLogger("devstack.sagemaker")

ACCOUNT = "000000000000"
JOB_NAME_RE = r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$"
MODEL_NAME_RE = r"^[a-zA-Z0-9]([\-a-zA-Z0-9]*[a-zA-Z0-9])?$"
S3_URI_RE = r"^(https|s3)://([^/]+)/?(.*)$"
DEFAULT_MAX_PAYLOAD_MB = 6


class ApiError(Exception):
    """An AWS JSON-protocol error: `{"__type": code, "message": ...}` with this status."""

    def __init__(self, code: str, message: str, status: int = 400, member: str = "message"):
        super().__init__(message)
        self.code, self.message, self.status, self.member = code, message, status, member

    def body(self) -> dict:
        return {"__type": self.code, self.member: self.message}


def _not_found(message: str) -> ApiError:
    # The modelled ResourceNotFound shape carries `Message` (capitalised), as botocore expects.
    return ApiError("ResourceNotFound", message, member="Message")


def _duplicate(arn: str) -> ApiError:
    return ApiError("ValidationException",
                    "Job name must be unique within an AWS account and region, and a job with "
                    f"this name already exists ({arn})")


class _Checks:
    """Collects field-constraint violations and raises them as one ValidationException."""

    def __init__(self):
        self.errors: list[str] = []

    def field(self, path: str, value, *, required=False, kind: type | None = str,
              max_len: int | None = None, min_len: int | None = None, pattern: str | None = None,
              enum: tuple[str, ...] | None = None, minimum: int | None = None,
              maximum: int | None = None) -> None:
        if value is None:
            if required:
                self.errors.append(f"Value null at '{path}' failed to satisfy constraint: "
                                   "Member must not be null")
            return
        if kind is not None and (not isinstance(value, kind) or isinstance(value, bool) and kind is int):
            raise ApiError("SerializationException",
                           f"Value at '{path}' is not a valid {kind.__name__}")
        shown = f"'{value}'" if isinstance(value, str) else str(value)
        fail = f"Value {shown} at '{path}' failed to satisfy constraint: Member must "
        if max_len is not None and len(value) > max_len:
            self.errors.append(fail + f"have length less than or equal to {max_len}")
        elif min_len is not None and len(value) < min_len:
            self.errors.append(fail + f"have length greater than or equal to {min_len}")
        elif pattern is not None and not re.match(pattern, value):
            self.errors.append(fail + f"satisfy regular expression pattern: {pattern}")
        elif enum is not None and value not in enum:
            self.errors.append(fail + f"satisfy enum value set: [{', '.join(enum)}]")
        elif minimum is not None and value < minimum:
            self.errors.append(fail + f"have value greater than or equal to {minimum}")
        elif maximum is not None and value > maximum:
            self.errors.append(fail + f"have value less than or equal to {maximum}")

    def raise_if_any(self) -> None:
        if self.errors:
            n = len(self.errors)
            raise ApiError("ValidationException",
                           f"{n} validation error{'s' if n > 1 else ''} detected: "
                           + "; ".join(self.errors))


def _obj(body: dict, key: str) -> dict:
    value = body.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ApiError("SerializationException", f"Value at '{key}' is not a structure")
    return value


class ControlPlane:
    def __init__(self, store: Store, region: str, on_job_change: Callable[[], None] = lambda: None,
                 extra_ops: dict[str, Callable[[dict], dict]] | None = None):
        self.store, self.region, self.on_job_change = store, region, on_job_change
        self.ops: dict[str, Callable[[dict], dict]] = {
            "CreateTransformJob": self.create_transform_job,
            "DescribeTransformJob": self.describe_transform_job,
            "StopTransformJob": self.stop_transform_job,
            "ListTransformJobs": self.list_transform_jobs,
            "ListTags": self.list_tags,
            "CreateModel": self.create_model,
            "DescribeModel": self.describe_model,
            "DeleteModel": self.delete_model,
            **(extra_ops or {}),
        }

    def call(self, op: str, body) -> dict:
        handler = self.ops.get(op)
        if handler is None:
            raise ApiError("UnknownOperationException", f"Unknown operation {op}", 400)
        if body is None:
            body = {}
        if not isinstance(body, dict):
            raise ApiError("SerializationException", "Start of structure or map expected")
        return handler(body)

    def job_arn(self, name: str) -> str:
        return f"arn:aws:sagemaker:{self.region}:{ACCOUNT}:transform-job/{name.lower()}"

    def model_arn(self, name: str) -> str:
        return f"arn:aws:sagemaker:{self.region}:{ACCOUNT}:model/{name.lower()}"

    # transform jobs -------------------------------------------------------------------------
    def create_transform_job(self, body: dict) -> dict:
        if faults.take("sagemaker_throttle"):
            raise ApiError("ThrottlingException", "Rate exceeded")
        name = body.get("TransformJobName")
        model_name = body.get("ModelName")
        t_in, t_out = _obj(body, "TransformInput"), _obj(body, "TransformOutput")
        res, proc = _obj(body, "TransformResources"), _obj(body, "DataProcessing")
        source = _obj(_obj(t_in, "DataSource"), "S3DataSource")
        c = _Checks()
        c.field("transformJobName", name, required=True, max_len=63, pattern=JOB_NAME_RE)
        c.field("modelName", model_name, required=True, max_len=63, pattern=MODEL_NAME_RE)
        c.field("maxConcurrentTransforms", body.get("MaxConcurrentTransforms"), kind=int, minimum=0)
        c.field("maxPayloadInMB", body.get("MaxPayloadInMB"), kind=int, minimum=0)
        c.field("batchStrategy", body.get("BatchStrategy"), enum=("MultiRecord", "SingleRecord"))
        c.field("transformInput", body.get("TransformInput"), required=True, kind=dict)
        if t_in:
            c.field("transformInput.dataSource", t_in.get("DataSource"), required=True, kind=dict)
            c.field("transformInput.splitType", t_in.get("SplitType"),
                    enum=("None", "Line", "RecordIO", "TFRecord"))
            c.field("transformInput.compressionType", t_in.get("CompressionType"),
                    enum=("None", "Gzip"))
        if t_in.get("DataSource"):
            c.field("transformInput.dataSource.s3DataSource", t_in["DataSource"].get("S3DataSource"),
                    required=True, kind=dict)
        if isinstance(t_in.get("DataSource"), dict) and "S3DataSource" in t_in["DataSource"]:
            # Checked even when S3DataSource is {}: AWS names each missing member.
            c.field("transformInput.dataSource.s3DataSource.s3DataType", source.get("S3DataType"),
                    required=True, enum=("ManifestFile", "S3Prefix", "AugmentedManifestFile"))
            c.field("transformInput.dataSource.s3DataSource.s3Uri", source.get("S3Uri"),
                    required=True, max_len=1024, pattern=S3_URI_RE)
        c.field("transformOutput", body.get("TransformOutput"), required=True, kind=dict)
        if t_out:
            c.field("transformOutput.s3OutputPath", t_out.get("S3OutputPath"), required=True,
                    max_len=1024, pattern=S3_URI_RE)
            c.field("transformOutput.assembleWith", t_out.get("AssembleWith"), enum=("None", "Line"))
        c.field("transformResources", body.get("TransformResources"), required=True, kind=dict)
        if res:
            c.field("transformResources.instanceType", res.get("InstanceType"), required=True,
                    pattern=r"^ml\.[a-z0-9]+\.[a-z0-9]+$")
            c.field("transformResources.instanceCount", res.get("InstanceCount"), required=True,
                    kind=int, minimum=1)
        c.field("dataProcessing.inputFilter", proc.get("InputFilter"), max_len=63)
        c.field("dataProcessing.outputFilter", proc.get("OutputFilter"), max_len=63)
        c.field("dataProcessing.joinSource", proc.get("JoinSource"), enum=("Input", "None"))
        client = _obj(body, "ModelClientConfig")
        c.field("modelClientConfig.invocationsTimeoutInSeconds",
                client.get("InvocationsTimeoutInSeconds"), kind=int, minimum=1, maximum=3600)
        c.field("modelClientConfig.invocationsMaxRetries", client.get("InvocationsMaxRetries"),
                kind=int, minimum=0, maximum=3)
        tags = _tags(body.get("Tags"), c)
        c.raise_if_any()
        if proc.get("JoinSource") == "Input":
            _check_join(t_in, t_out)

        for key in ("InputFilter", "OutputFilter"):
            try:
                dataprocessing.parse(proc.get(key))
            except ValueError as exc:
                raise ApiError("ValidationException", f"Invalid {key}: {exc}") from None
        if source["S3DataType"] == "AugmentedManifestFile":
            raise ApiError("ValidationException",
                           "S3DataType AugmentedManifestFile is not supported by the devstack")
        if t_in.get("SplitType") in ("RecordIO", "TFRecord"):
            raise ApiError("ValidationException",
                           f"SplitType {t_in['SplitType']} is not supported by the devstack")
        if not source["S3Uri"].startswith("s3://") or not t_out["S3OutputPath"].startswith("s3://"):
            raise ApiError("ValidationException", "S3 URIs must start with s3://")
        payload = body.get("MaxPayloadInMB", DEFAULT_MAX_PAYLOAD_MB)
        concurrent = body.get("MaxConcurrentTransforms") or 1
        if payload > 100:
            raise ApiError("ValidationException",
                           f"MaxPayloadInMB ({payload}) must be less than or equal to 100 MB.")
        if concurrent * payload > 100:
            raise ApiError(
                "ValidationException",
                f"The product of MaxConcurrentTransforms ({concurrent}) and MaxPayloadInMB "
                f"({payload}) must be less than or equal to 100 MB.")

        model = self.store.model(model_name)
        if model is None:
            raise ApiError("ValidationException",
                           f'Could not find model "{self.model_arn(model_name)}".')
        arn = self.job_arn(name)
        if (existing := self.store.job(name)) is not None:  # checked before faults fire
            raise _duplicate(existing["arn"])
        fired = {}
        if (spec := faults.take("fail_job", name)) is not None:
            fired["fail"] = spec.get("reason") or "AlgorithmError: injected failure (devstack)"
        if faults.take("stall_job", name) is not None:
            fired["stall"] = True
        if (spec := faults.take("hold_job", name)) is not None:
            fired["hold_after_files"] = int(spec.get("after_files") or 0)
        if faults.take("drop_output", name) is not None:
            fired["drop_output"] = True
        known = {k: body[k] for k in _JOB_FIELDS if k in body}
        if tags:  # kept for ListTags; DescribeTransformJob does not show them (as in AWS)
            known["Tags"] = tags
        if not self.store.add_job(name, arn, known, container_of(model["request"]), fired):
            raise _duplicate(self.store.job(name)["arn"])
        log.info("created transform job %s (model %s)%s", name, model_name,
                 f" with faults {fired}" if fired else "")
        self.on_job_change()
        return {"TransformJobArn": arn}

    def _job(self, body: dict) -> dict:
        name = body.get("TransformJobName")
        c = _Checks()
        c.field("transformJobName", name, required=True, max_len=63, pattern=JOB_NAME_RE)
        c.raise_if_any()
        job = self.store.job(name)
        if job is None:
            raise _not_found(f"Could not find transform job '{self.job_arn(name)}'.")
        return job

    def describe_transform_job(self, body: dict) -> dict:
        return describe_job(self._job(body))

    def stop_transform_job(self, body: dict) -> dict:
        job = self._job(body)
        if job["status"] == "InProgress":
            self.store.set_status(job["name"], "Stopping", only_from=("InProgress",))
            log.info("stop requested for transform job %s", job["name"])
            self.on_job_change()
        elif job["status"] != "Stopping":
            raise ApiError("ValidationException", "The request was rejected because the transform "
                           f"job is in status {job['status']}.")
        return {}

    def list_transform_jobs(self, body: dict) -> dict:
        c = _Checks()
        c.field("maxResults", body.get("MaxResults"), kind=int, minimum=1, maximum=100)
        c.field("sortBy", body.get("SortBy"), enum=("Name", "CreationTime", "Status"))
        c.field("sortOrder", body.get("SortOrder"), enum=("Ascending", "Descending"))
        c.field("statusEquals", body.get("StatusEquals"),
                enum=("InProgress", "Completed", "Failed", "Stopping", "Stopped"))
        c.raise_if_any()
        jobs = self.store.jobs(body.get("StatusEquals"))
        if body.get("NameContains"):
            jobs = [j for j in jobs if body["NameContains"].lower() in j["name"].lower()]
        for key, col, op in (("CreationTimeAfter", "creation_time", float.__gt__),
                             ("CreationTimeBefore", "creation_time", float.__lt__),
                             ("LastModifiedTimeAfter", "last_modified", float.__gt__),
                             ("LastModifiedTimeBefore", "last_modified", float.__lt__)):
            if body.get(key) is not None:
                jobs = [j for j in jobs if op(float(j[col]), float(body[key]))]
        sort_key = {"Name": lambda j: j["name"].lower(), "Status": lambda j: j["status"],
                    "CreationTime": lambda j: j["creation_time"]}[body.get("SortBy") or "CreationTime"]
        jobs.sort(key=sort_key, reverse=(body.get("SortOrder") or "Descending") == "Descending")
        try:
            start = int(base64.b64decode(body["NextToken"]).decode()) if body.get("NextToken") else 0
        except ValueError:
            raise ApiError("ValidationException", "Invalid NextToken") from None
        limit = body.get("MaxResults") or 10
        page = jobs[start:start + limit]
        out: dict = {"TransformJobSummaries": [_summary(j) for j in page]}
        if start + limit < len(jobs):
            out["NextToken"] = base64.b64encode(str(start + limit).encode()).decode()
        return out

    def list_tags(self, body: dict) -> dict:  # of transform jobs: the pipeline tags nothing else
        arn = body.get("ResourceArn")
        job = next((j for j in self.store.jobs() if j["arn"] == arn), None)
        if job is None:
            raise ApiError("ValidationException", f"Resource {arn} not found.")
        return {"Tags": job["request"].get("Tags", [])}

    # models ---------------------------------------------------------------------------------
    def create_model(self, body: dict) -> dict:
        name = body.get("ModelName")
        c = _Checks()
        c.field("modelName", name, required=True, max_len=63, pattern=MODEL_NAME_RE)
        c.field("primaryContainer", body.get("PrimaryContainer"), kind=dict)
        c.field("containers", body.get("Containers"), kind=list)
        c.field("executionRoleArn", body.get("ExecutionRoleArn"), min_len=20, max_len=2048,
                pattern=r"^arn:aws[a-z\-]*:iam::\d{12}:role/?[a-zA-Z_0-9+=,.@\-_/]+$")
        c.raise_if_any()
        if not body.get("PrimaryContainer") and not body.get("Containers"):
            raise ApiError("ValidationException",
                           "Either PrimaryContainer or Containers must be specified.")
        arn = self.model_arn(name)
        known = {k: body[k] for k in _MODEL_FIELDS if k in body}
        if not self.store.add_model(name, arn, known):
            raise ApiError("ValidationException", f'Cannot create already existing model "{arn}".')
        log.info("created model %s", name)
        return {"ModelArn": arn}

    def _model(self, body: dict) -> dict:
        name = body.get("ModelName")
        c = _Checks()
        c.field("modelName", name, required=True, max_len=63, pattern=MODEL_NAME_RE)
        c.raise_if_any()
        model = self.store.model(name)
        if model is None:
            raise ApiError("ValidationException", f'Could not find model "{self.model_arn(name)}".')
        return model

    def describe_model(self, body: dict) -> dict:
        model = self._model(body)
        return {"EnableNetworkIsolation": False, **model["request"], "ModelName": model["name"],
                "ModelArn": model["arn"], "CreationTime": model["creation_time"]}

    def delete_model(self, body: dict) -> dict:
        model = self._model(body)
        # As in AWS, jobs already created keep running: they copied the container definition.
        self.store.delete_model(model["name"])
        log.info("deleted model %s", model["name"])
        return {}


def _tags(tags, c: _Checks) -> list[dict]:
    """CreateTransformJob's Tags as AWS checks them: at most 50 {Key, Value} pairs."""
    c.field("tags", tags, kind=list, max_len=50)
    for i, tag in enumerate(tags or [], 1):
        tag = _obj({"tags": tag}, "tags")
        c.field(f"tags.{i}.member.key", tag.get("Key"), required=True, min_len=1, max_len=128)
        c.field(f"tags.{i}.member.value", tag.get("Value"), required=True, max_len=256)
    return tags or []


def _check_join(t_in: dict, t_out: dict) -> None:
    """SageMaker joins only what it can parse, and line by line."""
    content, accept = t_in.get("ContentType"), t_out.get("Accept")
    for name, value in (("ContentType", content), ("Accept", accept)):
        if value is not None and value not in JOIN_TYPES:
            raise ApiError("ValidationException", f"{name} {value!r} cannot be used with "
                           f"JoinSource Input: use one of {', '.join(JOIN_TYPES)}")
    if content is not None and accept is not None and content != accept:
        raise ApiError("ValidationException", f"With JoinSource Input, Accept ({accept}) must "
                       f"equal the input ContentType ({content}).")
    if (t_out.get("AssembleWith") or "None") != (t_in.get("SplitType") or "None"):
        raise ApiError("ValidationException", "With JoinSource Input, AssembleWith must equal "
                       "SplitType.")


JOIN_TYPES = ("text/csv", "application/json", "application/jsonlines")
_JOB_FIELDS = (
    "TransformJobName", "ModelName", "MaxConcurrentTransforms", "ModelClientConfig",
    "MaxPayloadInMB", "BatchStrategy", "Environment", "TransformInput", "TransformOutput",
    "DataCaptureConfig", "TransformResources", "DataProcessing", "ExperimentConfig",
)
_MODEL_FIELDS = ("PrimaryContainer", "Containers", "InferenceExecutionConfig", "ExecutionRoleArn",
                 "VpcConfig", "EnableNetworkIsolation")


def container_of(model_request: dict) -> dict | None:
    return model_request.get("PrimaryContainer") or next(iter(model_request.get("Containers") or []), None)


def describe_job(job: dict) -> dict:
    """DescribeTransformJobResponse, with the defaults AWS fills in shown explicitly."""
    req = job["request"]
    out = {k: req[k] for k in _JOB_FIELDS if k in req}
    out["TransformJobName"] = job["name"]
    out["TransformJobArn"] = job["arn"]
    out["TransformJobStatus"] = job["status"]
    if job["failure_reason"]:
        out["FailureReason"] = job["failure_reason"]
    out.setdefault("MaxPayloadInMB", DEFAULT_MAX_PAYLOAD_MB)
    out.setdefault("MaxConcurrentTransforms", 1)
    out["TransformInput"] = {"CompressionType": "None", "SplitType": "None", **req["TransformInput"]}
    out["TransformOutput"] = {"AssembleWith": "None", **req["TransformOutput"]}
    out["DataProcessing"] = {"InputFilter": "$", "OutputFilter": "$", "JoinSource": "None",
                             **req.get("DataProcessing", {})}
    out["CreationTime"] = job["creation_time"]
    for key, col in (("TransformStartTime", "start_time"), ("TransformEndTime", "end_time")):
        if job[col] is not None:
            out[key] = job[col]
    return out


def _summary(job: dict) -> dict:
    out = {"TransformJobName": job["name"], "TransformJobArn": job["arn"],
           "CreationTime": job["creation_time"], "LastModifiedTime": job["last_modified"],
           "TransformJobStatus": job["status"]}
    if job["end_time"] is not None:
        out["TransformEndTime"] = job["end_time"]
    if job["failure_reason"]:
        out["FailureReason"] = job["failure_reason"]
    return out
