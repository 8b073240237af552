"""STS AssumeRole for the devstack: temporary credentials that really expire.

Served by the SageMaker stand-in (AWS's Query protocol: a form-encoded `POST /` with
`Action=AssumeRole`), so an Airflow AWS connection with a `role_arn` and
`service_config.sts.endpoint_url` gets refreshable credentials, and SageMaker refuses them
once expired (`ExpiredTokenException`), as AWS does. The `sts_lifetime {seconds, count}`
fault makes the next credentials last only that long (clients cannot ask for less than
900 s), so tests can watch credentials expire during a wait.
"""

from __future__ import annotations

import secrets
import threading
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qsl
from xml.sax.saxutils import escape

from devstack import faults
from devstack.sigv4 import SignatureError

ACCOUNT = "000000000000"
DEFAULT_DURATION = 3600
KEEP_EXPIRED = timedelta(minutes=15)
MAX_DURATION = 43200


class StsError(Exception):
    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message

    def xml(self) -> bytes:
        return (f'<ErrorResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><Error>'
                f"<Type>Sender</Type><Code>{self.code}</Code><Message>{escape(self.message)}"
                f"</Message></Error><RequestId>{uuid.uuid4()}</RequestId></ErrorResponse>").encode()


@dataclass(frozen=True)
class TempCredentials:
    access_key: str
    secret_key: str
    token: str
    expires: datetime


def is_sts_request(content_type: str, body: bytes) -> bool:
    return content_type.startswith("application/x-www-form-urlencoded") and b"Action=" in body


class Sts:
    """Issued temporary credentials, in memory: a restart revokes them, as a rotation would."""

    def __init__(self):
        self._issued: dict[str, TempCredentials] = {}
        self._lock = threading.Lock()
        self.assume_role_calls = 0

    def handle(self, body: bytes, now: datetime | None = None) -> bytes:
        form = dict(parse_qsl(body.decode("utf-8", "replace")))
        if form.get("Action") != "AssumeRole":
            raise StsError(400, "InvalidAction", f"Could not find operation {form.get('Action')}")
        role, session = form.get("RoleArn", ""), form.get("RoleSessionName", "")
        if not role.startswith("arn:aws:iam::") or ":role/" not in role:
            raise StsError(400, "ValidationError", f"{role!r} is not a valid role ARN")
        if not session:
            raise StsError(400, "ValidationError", "RoleSessionName is required")
        try:
            duration = int(form.get("DurationSeconds", DEFAULT_DURATION))
        except ValueError:
            raise StsError(400, "ValidationError", "DurationSeconds must be an integer") from None
        if not 900 <= duration <= MAX_DURATION:
            raise StsError(400, "ValidationError", f"DurationSeconds must be 900..{MAX_DURATION}")
        if short := faults.take("sts_lifetime"):
            duration = float(short.get("seconds", 2))
        now = now or datetime.now(UTC)
        creds = TempCredentials("ASIA" + secrets.token_hex(8).upper(), secrets.token_urlsafe(30),
                                secrets.token_urlsafe(60), now + timedelta(seconds=duration))
        # AWS prints whole seconds; milliseconds keep a 2-second lifetime from looking expired.
        with self._lock:
            # Expired keys stay known a while: AWS answers ExpiredTokenException for them, not
            # a signature error, also after newer keys were issued.
            self._issued = {k: c for k, c in self._issued.items() if c.expires > now - KEEP_EXPIRED}
            self._issued[creds.access_key] = creds
            self.assume_role_calls += 1
        role_name = role.rsplit("/", 1)[-1]
        return (
            '<AssumeRoleResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">'
            "<AssumeRoleResult><Credentials>"
            f"<AccessKeyId>{creds.access_key}</AccessKeyId>"
            f"<SecretAccessKey>{creds.secret_key}</SecretAccessKey>"
            f"<SessionToken>{creds.token}</SessionToken>"
            f"<Expiration>{creds.expires.isoformat(timespec='milliseconds')}</Expiration>"
            "</Credentials><AssumedRoleUser>"
            f"<AssumedRoleId>AROA{secrets.token_hex(6).upper()}:{escape(session)}</AssumedRoleId>"
            f"<Arn>arn:aws:sts::{ACCOUNT}:assumed-role/{escape(role_name)}/{escape(session)}</Arn>"
            "</AssumedRoleUser></AssumeRoleResult>"
            f"<ResponseMetadata><RequestId>{uuid.uuid4()}</RequestId></ResponseMetadata>"
            "</AssumeRoleResponse>"
        ).encode()

    def secret_for(self, access_key: str, token: str | None, now: datetime | None = None) -> str | None:
        """The secret of a temporary key (None when it is not one of ours); raises when the
        token is missing, wrong or expired."""
        with self._lock:
            creds = self._issued.get(access_key)
        if creds is None:
            return None
        if token != creds.token:
            raise SignatureError(403, "UnrecognizedClientException",
                                 "The security token included in the request is invalid.")
        if (now or datetime.now(UTC)) >= creds.expires:
            raise SignatureError(400, "ExpiredTokenException",
                                 "The security token included in the request is expired")
        return creds.secret_key
