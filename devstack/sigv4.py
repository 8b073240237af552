"""Checks AWS Signature Version 4 on incoming requests, as AWS services do.

Written from the SigV4 spec so the devstack accepts exactly what botocore and
requests-aws4auth send with the right key, and refuses a wrong key, a wrong service or a
stale date.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from datetime import UTC, datetime, timedelta
from urllib.parse import quote

_AUTH_RE = re.compile(
    r"AWS4-HMAC-SHA256\s+Credential=(?P<key>[^/]+)/(?P<date>\d{8})/(?P<region>[^/]+)/"
    r"(?P<service>[^/]+)/aws4_request,\s*SignedHeaders=(?P<signed>[^,]+),\s*Signature=(?P<sig>[0-9a-f]{64})"
)
MAX_SKEW = timedelta(minutes=15)


def credential_key(headers: dict[str, str]) -> str | None:
    """The access key a request claims to be signed with."""
    m = _AUTH_RE.match(headers.get("authorization", ""))
    return m["key"] if m else None


class SignatureError(Exception):
    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def _hmac(key: bytes, msg: str) -> bytes:
    return hmac.new(key, msg.encode(), hashlib.sha256).digest()


def signing_key(secret: str, date: str, region: str, service: str) -> bytes:
    k = _hmac(("AWS4" + secret).encode(), date)
    k = _hmac(k, region)
    k = _hmac(k, service)
    return _hmac(k, "aws4_request")


def _canonical_query(query: list[tuple[str, str]]) -> str:
    enc = [(quote(k, safe="-_.~"), quote(v, safe="-_.~")) for k, v in query]
    return "&".join(f"{k}={v}" for k, v in sorted(enc))


def _canonical_paths(raw_path: str, service: str) -> list[str]:
    # S3 signs the path as sent; other services encode each segment once more. Clients differ
    # in how they pre-encode, so accept either spelling of the same path.
    once = quote(raw_path or "/", safe="/~")
    return [raw_path or "/"] if service == "s3" else list(dict.fromkeys([once, raw_path or "/"]))


def verify(
    *,
    method: str,
    raw_path: str,
    query: list[tuple[str, str]],
    headers: dict[str, str],
    body: bytes,
    access_key: str,
    secret_key: str,
    service: str,
    now: datetime | None = None,
) -> None:
    """Raise SignatureError unless the request carries a valid signature by this key."""
    auth = headers.get("authorization", "")
    m = _AUTH_RE.match(auth)
    if not m:
        raise SignatureError(403, "MissingAuthenticationToken", "Missing or malformed SigV4 Authorization")
    if m["key"] != access_key:
        raise SignatureError(403, "UnrecognizedClientException", "The security token included in the request is invalid.")
    if m["service"] != service:
        raise SignatureError(403, "InvalidSignatureException", f"Credential should be scoped to correct service: '{service}'.")
    amz_date = headers.get("x-amz-date", "")
    try:
        signed_at = datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    except ValueError:
        raise SignatureError(403, "IncompleteSignatureException", "Missing or invalid X-Amz-Date") from None
    if abs((now or datetime.now(UTC)) - signed_at) > MAX_SKEW:
        raise SignatureError(403, "InvalidSignatureException", "Signature expired")
    signed = m["signed"].split(";")
    canonical_headers = "".join(
        f"{h}:{' '.join(headers.get(h, '').split())}\n" for h in signed
    )
    payload_hash = headers.get("x-amz-content-sha256") or hashlib.sha256(body).hexdigest()
    if payload_hash not in ("UNSIGNED-PAYLOAD",) and not payload_hash.startswith("STREAMING-"):
        if payload_hash != hashlib.sha256(body).hexdigest():
            raise SignatureError(400, "XAmzContentSHA256Mismatch", "The provided payload hash does not match")
    scope = f"{m['date']}/{m['region']}/{m['service']}/aws4_request"
    key = signing_key(secret_key, m["date"], m["region"], m["service"])
    for path in _canonical_paths(raw_path, service):
        canonical = "\n".join(
            [method, path, _canonical_query(query), canonical_headers, m["signed"], payload_hash]
        )
        to_sign = "\n".join(
            ["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()]
        )
        if hmac.compare_digest(hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest(), m["sig"]):
            return
    # AWS echoes what it expected, signed headers (x-amz-security-token included) and all:
    # clients must not pass this message on verbatim, so the stand-in does the same.
    raise SignatureError(
        403,
        "InvalidSignatureException",
        "The request signature we calculated does not match the signature you provided. Check "
        "your AWS Secret Access Key and signing method. Consult the service documentation for "
        f"details.\n\nThe Canonical String for this request should have been\n'{canonical}'\n\n"
        f"The String-to-Sign should have been\n'{to_sign}'\n",
    )


def sign_headers(
    *, method: str, url: str, body: bytes, headers: dict[str, str], access_key: str,
    secret_key: str, region: str, service: str, session_token: str | None = None,
) -> dict[str, str]:
    """Headers for an outgoing signed call (ML Commons signing its connector requests)."""
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    request = AWSRequest(method=method, url=url, data=body, headers=headers)
    SigV4Auth(Credentials(access_key, secret_key, session_token), service, region).add_auth(request)
    return dict(request.headers.items())
