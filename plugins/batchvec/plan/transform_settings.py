"""The batch transform settings a run can choose (ContentType/Accept, BatchStrategy,
MaxPayloadInMB, MaxConcurrentTransforms, ModelClientConfig, Tags), and the combinations
SageMaker or the model server would refuse, caught in `plan` with the fix named instead of
hours later in a Failed job.

The response-size check: with MultiRecord, SageMaker packs as many records as fit in
MaxPayloadInMB into one request, and the answer holds one vector per record: ~12 bytes a
value (float32 written shortest, plus the comma), so a 1 MiB request of 60-byte texts asks
for ~70 MB back at 384-d. The model server drops answers over its limit (multi-model-server:
6,553,500 bytes unless MMS_MAX_RESPONSE_SIZE raises it; `python -m batchvec.model.container`
sets 100 MiB). The check assumes texts of at least `min_text_bytes`.
"""

from __future__ import annotations

import re

CONTENT_TYPES = ("application/jsonlines", "application/json")
BATCH_STRATEGIES = ("MultiRecord", "SingleRecord")
BYTES_PER_VALUE = 12
MIB = 1 << 20
# AWS tag characters, ASCII only: none of " \ { } $ can reach the connector's templates.
_TAG_KEY = re.compile(r"[A-Za-z0-9 _.:/=+@-]{1,128}", re.ASCII)
_TAG_VALUE = re.compile(r"[A-Za-z0-9 _.:/=+@-]{0,256}", re.ASCII)


def schema() -> dict[str, dict]:
    return {
        "content_type": {"default": "application/jsonlines", "enum": list(CONTENT_TYPES),
                         "description": "TransformInput.ContentType sent with every request"},
        "accept": {"default": "application/jsonlines", "enum": list(CONTENT_TYPES),
                   "description": "TransformOutput.Accept (must equal content_type: the "
                   "output is joined to the input)"},
        "batch_strategy": {"default": "MultiRecord", "enum": list(BATCH_STRATEGIES)},
        "max_payload_mb": {"default": 1, "type": "integer", "minimum": 1, "maximum": 100,
                           "description": "MaxPayloadInMB: request size (MiB) MultiRecord packs "
                           "records up to"},
        "max_concurrent_transforms": {"default": 2, "type": "integer", "minimum": 1,
                                      "maximum": 100, "description": "parallel requests per "
                                      "instance; at least the model's server workers"},
        "invocations_timeout_s": {"default": 600, "type": "integer", "minimum": 1,
                                  "maximum": 3600},
        "invocations_max_retries": {"default": 3, "type": "integer", "minimum": 0, "maximum": 3},
        "tags": {"default": {}, "type": "object", "description": "tags for the transform job"},
        "dimension": {"default": 384, "type": "integer", "minimum": 0, "maximum": 16000,
                      "description": "vector size the model must return (0: any)"},
        "model_max_response_mb": {"default": 100, "type": "integer", "minimum": 1,
                                  "maximum": 2000, "description": "the model server's response "
                                  "limit (MMS_MAX_RESPONSE_SIZE of the SageMaker model, MiB)"},
        "min_text_bytes": {"default": 64, "type": "integer", "minimum": 1,
                           "description": "shortest text the response-size check assumes"},
    }


def _int(p: dict, name: str, errors: list[str]) -> int:
    spec = schema()[name]
    value = p.get(name, spec["default"])
    low, high = spec.get("minimum"), spec.get("maximum")
    if (isinstance(value, bool) or not isinstance(value, int) or value < low
            or (high is not None and value > high)):
        within = f"in {low}..{high}" if high is not None else f">= {low}"
        errors.append(f"{name}: must be an integer {within}, got {value!r}")
        return spec["default"]
    return value


def resolve(p: dict) -> tuple[dict, list[str]]:
    """(ModelSpec fields + content types, errors) from the run's params."""
    errors: list[str] = []
    out = {name: _int(p, name, errors) for name in (
        "max_payload_mb", "max_concurrent_transforms", "invocations_timeout_s",
        "invocations_max_retries", "dimension", "model_max_response_mb", "min_text_bytes")}
    for name, allowed in (("content_type", CONTENT_TYPES), ("accept", CONTENT_TYPES),
                          ("batch_strategy", BATCH_STRATEGIES)):
        value = p.get(name, schema()[name]["default"])
        if value not in allowed:
            errors.append(f"{name}: {value!r} not one of {allowed}")
            value = schema()[name]["default"]
        out[name] = value
    if out["accept"] != out["content_type"]:
        errors.append(f"accept: {out['accept']!r} must equal content_type "
                      f"{out['content_type']!r}: SageMaker joins the output to the input "
                      "(JoinSource Input) only when they match")
    out["tags"] = _tags(p.get("tags", {}), errors)
    errors.extend(_limits(out))
    return out, errors


def _tags(tags, errors: list[str]) -> list[dict]:
    if not isinstance(tags, dict) or len(tags) > 50:
        errors.append(f"tags: must be an object of at most 50 string pairs, got {tags!r:.80}")
        return []
    bad = [k for k, v in tags.items() if not isinstance(k, str) or not isinstance(v, str)
           or not _TAG_KEY.fullmatch(k) or not _TAG_VALUE.fullmatch(v) or k.startswith("aws:")]
    if bad:
        errors.append(f"tags: {bad[0]!r}: keys 1-128 and values 0-256 of letters, digits, "
                      f"spaces and _.:/=+-@ (pattern {_TAG_KEY.pattern}), no aws: prefix")
        return []
    return [{"Key": k, "Value": v} for k, v in sorted(tags.items())]


def _limits(s: dict) -> list[str]:
    errors = []
    product = s["max_concurrent_transforms"] * s["max_payload_mb"]
    if product > 100:
        most = max(1, 100 // s["max_payload_mb"])
        errors.append(
            f"max_concurrent_transforms x max_payload_mb = {s['max_concurrent_transforms']} x "
            f"{s['max_payload_mb']} = {product} MB: SageMaker refuses more than 100; lower "
            f"max_concurrent_transforms to {most} or max_payload_mb to "
            f"{max(1, 100 // s['max_concurrent_transforms'])}")
    if s["batch_strategy"] == "MultiRecord" and s["dimension"]:
        per_record = s["dimension"] * BYTES_PER_VALUE + 3
        records = s["max_payload_mb"] * MIB // (s["min_text_bytes"] + 3)
        answer = records * per_record
        limit = s["model_max_response_mb"] * MIB
        if answer > limit:
            fits = limit * (s["min_text_bytes"] + 3) // per_record // MIB
            fix = f"lower max_payload_mb to {fits}, " if fits >= 1 else ""
            errors.append(
                f"max_payload_mb: a {s['max_payload_mb']} MiB MultiRecord request of "
                f"{s['min_text_bytes']}-byte texts holds ~{records:,} records, whose "
                f"{s['dimension']}-d vectors come to ~{answer / MIB:.0f} MiB, over the model "
                f"server's {s['model_max_response_mb']} MiB response limit "
                f"(model_max_response_mb): {fix}raise MMS_MAX_RESPONSE_SIZE on the model "
                "(python -m batchvec.model.container "
                "--max-response-mb N) and model_max_response_mb with it, or use batch_strategy "
                "SingleRecord")
    return errors
