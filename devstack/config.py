"""Where the devstack keeps its state, which ports it binds and which credentials it enforces.

Credentials are generated on first start and kept in the state dir (git-ignored), so nothing
secret is committed and every machine gets its own.
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import asdict, dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_STATE_DIR = REPO_ROOT / ".devstack"
DEFAULT_BUCKET = "batchvec"

# Defaults stay clear of the well-known ports (8333, 9200, 8080) so a real S3/OpenSearch/
# Airflow on the same laptop does not collide. Each can be overridden by env.
DEFAULT_PORTS = {
    "s3": 18333,
    "sagemaker": 18090,
    "opensearch": 19200,  # the HTTPS front (devstack.opensearch_front)
    "opensearch_node": 19201,  # the real node's plain HTTP, loopback only, no auth
    "opensearch_transport": 19300,  # the node's transport port (single node, never joined)
    # weed mini opens these too (+10000 for each gRPC port); pinned so they never collide.
    "weed_master": 19333,
    "weed_volume": 19340,
    "weed_filer": 18888,
    "weed_admin": 23700,
}


# ML Commons 3.6 refuses batch-task status refreshes and cancels to a private or loopback
# address whatever `plugins.ml_commons.connector.private_ip_enabled` says (its
# GetTaskTransportAction builds the connector executor without that setting). So the
# devstack's SageMaker listens on an address from TEST-NET-2 (RFC 5737: for documentation,
# never routed) that the launcher adds to the loopback interface; it is reached only from
# this machine, like 127.0.0.1.
SAGEMAKER_HOST = os.environ.get("DEVSTACK_SAGEMAKER_HOST", "198.51.100.1")


def port(name: str) -> int:
    return int(os.environ.get(f"DEVSTACK_{name.upper()}_PORT", DEFAULT_PORTS[name]))


def state_dir() -> Path:
    return Path(os.environ.get("DEVSTACK_DIR", DEFAULT_STATE_DIR)).resolve()


@dataclass(frozen=True)
class Credentials:
    region: str
    aws_access_key_id: str
    aws_secret_access_key: str
    opensearch_user: str
    opensearch_password: str


def load_or_create_credentials(directory: Path) -> Credentials:
    path = directory / "credentials.json"
    if path.exists():
        return Credentials(**json.loads(path.read_text()))
    directory.mkdir(parents=True, exist_ok=True)
    creds = Credentials(
        region=os.environ.get("DEVSTACK_REGION", "us-east-1"),
        aws_access_key_id="DEVSTACK" + secrets.token_hex(6).upper(),
        aws_secret_access_key=secrets.token_urlsafe(30),
        opensearch_user="admin",
        opensearch_password=secrets.token_urlsafe(18),
    )
    path.write_text(json.dumps(asdict(creds), indent=2))
    path.chmod(0o600)
    return creds


def endpoints_path(directory: Path | None = None) -> Path:
    return (directory or state_dir()) / "endpoints.json"


def load_endpoints(directory: Path | None = None) -> dict:
    """The running devstack's endpoints.json; raises a clear error when it is not up."""
    path = endpoints_path(directory)
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: start the devstack first (make devstack)")
    return json.loads(path.read_text())
