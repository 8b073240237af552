"""The devstack's real OpenSearch node: one per devstack state dir, bound to 127.0.0.1 with
plain HTTP and no security plugin (TLS and authentication are done by
`devstack.opensearch_front`, in front of it), run from the install of
`devstack.opensearch_install`.

  <node>/config, data, logs      the node of one state dir: <state>/opensearch/

As root the node runs as the system user (OpenSearch refuses root), which must reach these dirs
by path. pytest's temp dirs live in /tmp/pytest-of-root (0700, and pytest strips group/other
bits from it again at each session start, so opening it up with o+x would not last and would
open a private dir). So when the state dir is not traversable by the system user we change no
permission: the node's dirs go to <node root>/nodes/<hash of the state dir path>/ (with an
`owner` file naming the state dir; nodes whose state dir is gone are removed at the next start).
Keyed by the state dir's path, the data survives restarts just the same.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import requests

from devstack.opensearch_install import (
    VERSION,
    Progress,
    _say,
    base_env,
    install,
    node_root,
    run_user,
    traversable,
)

HEAP = os.environ.get("BATCHVEC_OPENSEARCH_HEAP", "1g")

# ML Commons 3.6's default trusted endpoints (setting the regex replaces the whole list), plus
# plain http on loopback for the devstack's SageMaker.
TRUSTED_ENDPOINTS = [
    r"^http://127\.0\.0\.1:[0-9]+/.*$",
    r"^http://198\.51\.100\.1:[0-9]+/.*$",  # config.SAGEMAKER_HOST (why: see there)
    r"^https://runtime\.sagemaker\..*[a-z0-9-]\.amazonaws\.com/.*$",
    r"^https://api\.sagemaker\..*[a-z0-9-]\.amazonaws\.com/.*$",
    r"^https://api\.openai\.com/.*$",
    r"^https://api\.cohere\.ai/.*$",
    r"^https://api\.deepseek\.com/.*$",
    r"^https://generativelanguage\.googleapis\.com/.*$",
    r"^https://bedrock-runtime\..*[a-z0-9-]\.amazonaws\.com/.*$",
    r"^https://bedrock-agent-runtime\..*[a-z0-9-]\.amazonaws\.com/.*$",
    r"^https://bedrock\..*[a-z0-9-]\.amazonaws\.com/.*$",
    r"^https://textract\..*[a-z0-9-]\.amazonaws\.com$",
    r"^https://comprehend\..*[a-z0-9-]\.amazonaws\.com$",
    r"^https://rekognition(-fips)?\..*[a-z0-9-]\.amazonaws\.com$",
]


def node_dir(state: Path) -> Path:
    """Where the node of `state` keeps its config, data and logs (see the module doc)."""
    state = Path(state).resolve()
    if traversable(state, run_user()):
        return state / "opensearch"
    return node_root() / "nodes" / hashlib.sha256(str(state).encode()).hexdigest()[:16]


def configure(state: Path, http_port: int, transport_port: int, home: Path) -> Path:
    """Write the node's config dir (every start: ports may change); data and logs are kept."""
    state = Path(state).resolve()
    node, user = node_dir(state), run_user()
    conf, data, logs = node / "config", node / "data", node / "logs"
    for d in (conf, data, logs):
        d.mkdir(parents=True, exist_ok=True)
    if node.parent.name == "nodes":
        (node / "owner").write_text(str(state))
        _remove_orphans(node.parent)
    for item in (home / "config").iterdir():  # log4j2.properties, plugin config dirs
        if item.is_dir():
            shutil.copytree(item, conf / item.name, dirs_exist_ok=True)
        elif item.name not in ("opensearch.yml", "jvm.options"):
            shutil.copy2(item, conf / item.name)
    (conf / "jvm.options.d").mkdir(exist_ok=True)
    (conf / "opensearch.yml").write_text(_yml(http_port, transport_port, data, logs))
    (conf / "jvm.options").write_text(_jvm_options((home / "config" / "jvm.options").read_text(), logs))
    if user:
        for d in (conf, data, logs):
            os.chown(d, *user)
        for root, dirs, files in os.walk(conf):
            for name in dirs + files:
                os.chown(os.path.join(root, name), *user)
    return conf


def _yml(http_port: int, transport_port: int, data: Path, logs: Path) -> str:
    settings = {
        "cluster.name": "batchvec-devstack",
        "node.name": "devstack-node",
        "path.data": str(data),
        "path.logs": str(logs),
        "network.host": "127.0.0.1",
        "http.port": http_port,
        "transport.port": transport_port,
        "discovery.type": "single-node",
        "cluster.routing.allocation.disk.threshold_enabled": False,
        "plugins.ml_commons.only_run_on_ml_node": False,
        "plugins.ml_commons.connector.private_ip_enabled": True,
        "plugins.ml_commons.trusted_connector_endpoints_regex": TRUSTED_ENDPOINTS,
        # ML Commons refuses work above these (memory 90%, free disk below 5 GB): off here.
        "plugins.ml_commons.native_memory_threshold": 100,
        "plugins.ml_commons.jvm_heap_memory_threshold": 100,
        "plugins.ml_commons.disk_free_space_threshold": "0b",
    }
    return "# written by devstack.opensearch_node at every start\n" + "".join(
        f"{k}: {json.dumps(v)}\n" for k, v in settings.items())


def _jvm_options(original: str, logs: Path) -> str:
    """The distribution's jvm.options with our heap, and the paths it gives relative to the
    install dir (not writable by the node) moved into the node's logs dir."""
    text = re.sub(r"^-Xms\S+$", f"-Xms{HEAP}", original, flags=re.M)
    text = re.sub(r"^-Xmx\S+$", f"-Xmx{HEAP}", text, flags=re.M)
    text = text.replace("-XX:HeapDumpPath=data", f"-XX:HeapDumpPath={logs}")
    text = text.replace("logs/hs_err_pid", f"{logs}/hs_err_pid")
    text = text.replace("file=logs/gc.log", f"file={logs}/gc.log")
    return text.replace("filecount=32,filesize=64m", "filecount=4,filesize=16m")


def _remove_orphans(nodes: Path) -> None:
    """Node dirs whose state dir was deleted (old pytest temp dirs) and that no process uses."""
    busy = "\n".join(_cmdlines())
    for node in nodes.iterdir():
        owner = node / "owner"
        if owner.exists() and not Path(owner.read_text()).exists() and str(node) not in busy:
            shutil.rmtree(node, ignore_errors=True)


def _cmdlines() -> list[str]:
    out = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                out.append((proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))
            except OSError:
                pass
    return out


def command(state: Path, home: Path) -> list[str]:
    """The node's command line; path.data on it marks the process as this state dir's node."""
    return [str(home / "bin" / "opensearch"), f"-Epath.data={node_dir(state) / 'data'}"]


def is_node(cmdline: str, state: Path) -> bool:
    return "opensearch" in cmdline and f"-Epath.data={node_dir(state) / 'data'}" in cmdline


def start(state: Path, http_port: int, transport_port: int, log_path: Path,
          say: Progress = _say) -> subprocess.Popen:
    """Install if needed, configure, and start the node (not waiting for it). The pid is the
    JVM's (bin/opensearch execs java); stdout/stderr go to log_path."""
    home = install(VERSION, say)
    conf = configure(state, http_port, transport_port, home)
    user = run_user()
    env = {**base_env(), "OPENSEARCH_PATH_CONF": str(conf), "HOME": str(node_dir(state))}
    extra = {"user": user[0], "group": user[1], "extra_groups": []} if user else {}
    with open(log_path, "ab") as log:
        return subprocess.Popen(command(state, home), cwd=home, env=env, stdin=subprocess.DEVNULL,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True, **extra)


def has_native_knn(home: Path) -> bool:
    """Whether the k-NN plugin carries its faiss/nmslib JNI libraries (the Maven zip does not)."""
    return any((home / "plugins" / "opensearch-knn").rglob("libopensearchknn_*.so"))


def health(url: str, timeout: float = 2.0) -> str | None:
    """The cluster's health status (green/yellow/red), None when the node does not answer."""
    try:
        resp = requests.get(url + "/_cluster/health", timeout=timeout)
        return resp.json().get("status") if resp.status_code in (200, 408) else None
    except (requests.RequestException, ValueError):
        return None


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


