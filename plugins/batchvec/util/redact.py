"""Scrub credentials from text we log or raise: remote error messages and client errors.

Airflow's secrets masker hides the connection secrets it knows of in task logs, but not in
exception texts stored elsewhere, and not values it was never told about (a session token
from an instance profile or an assumed role). AWS answers a bad signature with the canonical
request it expected, signed `x-amz-security-token` header included, and connection errors may
echo URLs with `user:password@`. Everything from outside that we pass on goes through scrub().
"""

from __future__ import annotations

import re

MASK = "***"

_PATTERNS = [
    # user:password@ in any URL
    (re.compile(r"(?P<keep>[a-zA-Z][a-zA-Z0-9+.-]*://)[^/@\s'\"]+@"), r"\g<keep>" + MASK + "@"),
    # signed headers as AWS echoes them ("x-amz-security-token:VALUE") or as sent
    # ("X-Amz-Security-Token: VALUE"); query-string form ("X-Amz-Security-Token=VALUE")
    (re.compile(r"(?i)(?P<keep>x-amz-security-token\s*[:=]\s*)[^\s&'\",;]+"), r"\g<keep>" + MASK),
    # Authorization header values: Basic base64(user:password), Bearer tokens, SigV4
    (re.compile(r"(?i)(?P<keep>authorization['\"]?\s*[:=]\s*['\"]?)(basic|bearer)\s+[^\s'\",]+"),
     r"\g<keep>\2 " + MASK),
    (re.compile(r"(?i)(?P<keep>\bbasic\s+)[A-Za-z0-9+/]{12,}={0,2}"), r"\g<keep>" + MASK),
    (re.compile(r"(?i)(?P<keep>signature=)[0-9a-f]{64}"), r"\g<keep>" + MASK),
    # key/value pairs that name a secret (password=..., "secret_key": "...", token: ...)
    (re.compile(r"(?i)(?P<keep>\b(?:aws_)?(?:password|passwd|secret[_-]?(?:access[_-]?)?key"
                r"|session[_-]?token)['\"]?\s*[:=]\s*['\"]?)[^\s'\",&}]+"), r"\g<keep>" + MASK),
]


def scrub(text: object) -> str:
    """`str(text)` with credentials replaced by `***`; everything else kept for diagnosis."""
    out = str(text)
    for pattern, replacement in _PATTERNS:
        out = pattern.sub(replacement, out)
    return out


def mask_secrets(*values: str | None) -> None:
    """Tell Airflow's log masker about credentials it never saw in a connection: those that
    botocore fetched or refreshed itself (assumed role, instance profile, SSO)."""
    from airflow.sdk.log import mask_secret

    for value in values:
        if value:
            mask_secret(value)
