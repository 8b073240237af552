"""Names for everything a run creates outside Airflow, and validation of user-given names.

A run key is derived only from ``dag_id`` + ``run_id``, so every try of a task (and a retry of
the whole run) computes the same staging prefix, job name and report key and finds what an
earlier try created. Pure functions: no I/O.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re

__all__ = [
    "MAX_RUN_KEY_LEN",
    "join_key",
    "join_s3",
    "parse_s3_uri",
    "run_key",
    "transform_job_name",
    "validate_bucket_name",
    "validate_index_name",
    "validate_job_name",
    "validate_key_prefix",
    "validate_request_s3_uri",
]

MAX_RUN_KEY_LEN = 40
_HASH_LEN = 10  # 40 bits of sha1: collisions among one account's runs are not a concern
# Names that reach ML Commons request templates are matched whole (fullmatch: a `$` anchor
# lets a trailing newline through) against ASCII allow-lists with no `"`, `\`, `{`, `}`, `$`.
# SageMaker names (jobs, models, endpoints): 1-63 alphanumerics, single or repeated dashes inside.
SAGEMAKER_NAME = re.compile(r"[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}", re.ASCII)
_KEY_PREFIX_RE = re.compile(r"(?:[A-Za-z0-9_.=-]+/)*[A-Za-z0-9_.=-]+/?", re.ASCII)
MAX_KEY_PREFIX_LEN = 200
_NON_SLUG = re.compile(r"[^a-z0-9]+")
_DIGIT_DASH_DIGIT = re.compile(r"(?<=\d)-(?=\d)")
# Airflow run types, shortened so the date part of a run id survives the length cut.
_RUN_TYPES = {
    "scheduled": "sch",
    "manual": "man",
    "backfill": "bf",
    "asset-triggered": "ast",
    "dataset-triggered": "ast",
}
_INDEX_FORBIDDEN = set('\\/*?"<>| ,#:')
_BUCKET_RE = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", re.ASCII)
_BUCKET_BAD_PREFIXES = ("xn--", "sthree-", "amzn-s3-demo-")
_BUCKET_BAD_SUFFIXES = ("-s3alias", "--ol-s3", ".mrap", "--x-s3", "--table-s3")


def _slug(text: str) -> str:
    return _NON_SLUG.sub("-", text.lower()).strip("-")


def _run_slug(run_id: str) -> str:
    """``scheduled__2024-01-02T00:00:00+00:00`` -> ``sch-20240102t000000000``."""
    kind, sep, rest = run_id.partition("__")
    short = _RUN_TYPES.get(_slug(kind)) if sep else None
    body = _slug(rest) if short else _slug(run_id)
    body = _DIGIT_DASH_DIGIT.sub("", body)  # dates and times read fine without their dashes
    return f"{short}-{body}".strip("-") if short else body


def run_key(dag_id: str, run_id: str) -> str:
    """Deterministic ``[a-z0-9-]`` key, at most 40 chars: a readable slug + a sha1 of both ids.

    The slug is cut to fit, so the hash (of the exact ids) is what makes keys unique.
    """
    digest = hashlib.sha1(f"{dag_id}\x00{run_id}".encode()).hexdigest()[:_HASH_LEN]
    room = MAX_RUN_KEY_LEN - _HASH_LEN - 1
    dag = _slug(dag_id)[:12].strip("-")
    slug = "-".join(p for p in (dag, _run_slug(run_id)) if p)[:room].strip("-")
    return f"{slug}-{digest}" if slug else f"run-{digest}"


def transform_job_name(run_key: str, attempt: int = 1) -> str:
    """SageMaker job name for a run: the run key, plus ``-r<n>`` for attempt n > 1.

    Job names are unique forever in an account+region, so resubmitting after a Failed job
    needs a new name; deriving it from the attempt keeps it findable by a later retry.
    """
    if isinstance(attempt, bool) or not isinstance(attempt, int) or attempt < 1:
        raise ValueError(f"attempt must be an integer >= 1, got {attempt!r}")
    name = run_key if attempt == 1 else f"{run_key}-r{attempt}"
    return validate_job_name(name)


def validate_job_name(name: str) -> str:
    """Return ``name`` if SageMaker accepts it as a transform job name, else raise ValueError."""
    if not isinstance(name, str) or not SAGEMAKER_NAME.fullmatch(name):
        raise ValueError(
            f"invalid SageMaker job name {name!r}: 1-63 chars of letters, digits and hyphens, "
            "starting and ending with a letter or digit"
        )
    return name


def validate_index_name(name: str) -> str:
    """Return ``name`` if OpenSearch accepts it as an index name, else raise ValueError."""
    if not isinstance(name, str) or not name:
        raise ValueError("index name must be a non-empty string")
    problem = None
    if name in (".", ".."):
        problem = "must not be '.' or '..'"
    elif name != name.lower():
        problem = "must be lowercase"
    elif name[0] in "_-+":
        problem = "must not start with '_', '-' or '+'"
    elif bad := sorted(_INDEX_FORBIDDEN.intersection(name)):
        problem = f"must not contain {' '.join(repr(c) for c in bad)}"
    elif len(name.encode("utf-8")) > 255:
        problem = "must be at most 255 bytes"
    if problem:
        raise ValueError(f"invalid index name {name!r}: {problem}")
    return name


def validate_bucket_name(bucket: str) -> str:
    """Return ``bucket`` if it follows S3's general-purpose bucket naming rules."""
    problem = None
    if not isinstance(bucket, str) or not _BUCKET_RE.fullmatch(bucket):
        problem = "3-63 chars of lowercase letters, digits, '.' and '-', starting and ending with a letter or digit"
    elif ".." in bucket or ".-" in bucket or "-." in bucket:
        problem = "no '..', '.-' or '-.'"
    elif _is_ip(bucket):
        problem = "must not look like an IP address"
    elif bucket.startswith(_BUCKET_BAD_PREFIXES) or bucket.endswith(_BUCKET_BAD_SUFFIXES):
        problem = "uses a prefix or suffix that S3 reserves"
    if problem:
        raise ValueError(f"invalid S3 bucket name {bucket!r}: {problem}")
    return bucket


def _is_ip(text: str) -> bool:
    try:
        ipaddress.IPv4Address(text)
    except ValueError:
        return False
    return True


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/some/key`` -> ``("bucket", "some/key")``; the key may be empty."""
    if not isinstance(uri, str) or not uri.startswith("s3://"):
        raise ValueError(f"not an S3 URI (expected s3://bucket/key): {uri!r}")
    bucket, _, key = uri[len("s3://"):].partition("/")
    if not bucket:
        raise ValueError(f"S3 URI has no bucket: {uri!r}")
    try:
        validate_bucket_name(bucket)
    except ValueError as exc:
        raise ValueError(f"bad S3 URI {uri!r}: {exc}") from None
    if len(key.encode("utf-8")) > 1024:
        raise ValueError(f"bad S3 URI {uri!r}: key longer than 1024 bytes")
    return bucket, key


def validate_key_prefix(prefix: str) -> str:
    """Return ``prefix`` if it is a safe S3 key prefix: '/'-separated segments of letters,
    digits and ``_ . = -`` (no ``.``/``..`` segment, no empty one), at most 200 chars; ''
    is allowed. It ends up inside the S3 URIs of the ``_batch_predict`` request, where ML
    Commons substitutes ``${parameters.X}`` recursively: no quote, brace or ``$`` may pass."""
    if not isinstance(prefix, str):
        raise ValueError(f"key prefix must be a string, got {prefix!r}")
    if prefix == "":
        return prefix
    segments = prefix.rstrip("/").split("/")
    if (len(prefix) > MAX_KEY_PREFIX_LEN or not _KEY_PREFIX_RE.fullmatch(prefix)
            or any(s in (".", "..") for s in segments)):
        raise ValueError(
            f"invalid key prefix {prefix!r}: '/'-separated segments of letters, digits and "
            f"'_.=-', no '.' or '..' segment, at most {MAX_KEY_PREFIX_LEN} chars "
            f"(pattern {_KEY_PREFIX_RE.pattern})")
    return prefix


def validate_request_s3_uri(uri: str) -> str:
    """Return ``uri`` if it is ``s3://<bucket>/<safe key>``, safe to put in an ML Commons
    request (see validate_key_prefix); else raise ValueError."""
    _, key = parse_s3_uri(uri)
    try:
        validate_key_prefix(key)
    except ValueError as exc:
        raise ValueError(f"S3 URI {uri!r} cannot go into a request: {exc}") from None
    return uri


def join_key(*parts: str) -> str:
    """Join key parts with single slashes; empty parts are skipped, a final '/' is kept."""
    cleaned = [p.strip("/") for p in parts if p and p.strip("/")]
    key = "/".join(cleaned)
    if key and parts and parts[-1].endswith("/"):
        key += "/"
    return key


def join_s3(bucket: str, *parts: str) -> str:
    """``join_s3("b", "runs/", "/k1", "input/")`` -> ``"s3://b/runs/k1/input/"``."""
    return f"s3://{validate_bucket_name(bucket)}/{join_key(*parts)}"
