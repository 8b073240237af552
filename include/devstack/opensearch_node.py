"""A real OpenSearch node for the devstack: the OpenSearch distribution with ML Commons, k-NN,
neural-search and job-scheduler, fetched once with `mvn`, installed once, one node per
devstack state dir, bound to 127.0.0.1 with plain HTTP and no security plugin (TLS and
authentication are done by `devstack.opensearch_front`, in front of it).

Where things live:
  <cache>/opensearch-<v>/*.zip   the downloads; <cache> = $BATCHVEC_CACHE or ~/.cache/batchvec,
                                 outside the clone, so a fresh clone or `make clean` does not
                                 download again
  <home>                         the distribution with the plugins installed (marker file
                                 `.batchvec-installed`); <cache>/opensearch-<v>/home
  <node>/config, data, logs      the node of one state dir: <state>/opensearch/

OpenSearch refuses to run as root. As root we run it as a system user (`osrun`, created if
missing) and that user must be able to reach every file of the node by path. /root is 0700,
and pytest's temp dirs live in /tmp/pytest-of-root (0700, and pytest strips group/other bits
from it again at each session start, so opening it up with o+x would not last and would open a
private dir). So when the cache or the state dir is not traversable by the system user we do not
change any permission: the install goes to $BATCHVEC_NODE_ROOT (default /var/lib/batchvec)
instead, and the node's dirs to <node root>/nodes/<hash of the state dir path>/ (with an `owner`
file naming the state dir; nodes whose state dir is gone are removed on the next start). Keyed by
the state dir's path, the data survives restarts just the same.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import pwd
import re
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import requests

VERSION = os.environ.get("BATCHVEC_OPENSEARCH_VERSION", "3.6.0")
RUN_USER = os.environ.get("BATCHVEC_OPENSEARCH_USER", "osrun")
HEAP = os.environ.get("BATCHVEC_OPENSEARCH_HEAP", "1g")
MAVEN_COPY = "org.apache.maven.plugins:maven-dependency-plugin:3.8.1:copy"
# ML Commons 3.6's default trusted endpoints (setting the regex replaces the whole list), plus
# plain http on loopback for the devstack's SageMaker.
TRUSTED_ENDPOINTS = [
    r"^http://127\.0\.0\.1:[0-9]+/.*$",
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

Progress = Callable[[str], None]


def _say(msg: str) -> None:
    print(f"devstack: {msg}", file=sys.stderr, flush=True)


class NodeError(RuntimeError):
    pass


@dataclass(frozen=True)
class Artifact:
    group: str
    name: str
    version: str
    plugin: str | None  # the installed plugin's name; None for the distribution

    @property
    def file(self) -> str:
        return f"{self.name}-{self.version}.zip"


def artifacts(version: str = VERSION) -> list[Artifact]:
    """The distribution, then the plugins in install order (each depends on the ones before)."""
    p = version + ".0"
    return [
        Artifact("org.opensearch.distribution.integ-test-zip", "opensearch", version, None),
        Artifact("org.opensearch.plugin", "opensearch-job-scheduler", p, "opensearch-job-scheduler"),
        Artifact("org.opensearch.plugin", "opensearch-ml-plugin", p, "opensearch-ml"),
        Artifact("org.opensearch.plugin", "opensearch-knn", p, "opensearch-knn"),
        Artifact("org.opensearch.plugin", "neural-search", p, "opensearch-neural-search"),
    ]


# --- where -------------------------------------------------------------------------------

def cache_dir(version: str = VERSION) -> Path:
    root = Path(os.environ.get("BATCHVEC_CACHE") or Path.home() / ".cache" / "batchvec")
    return root.expanduser().resolve() / f"opensearch-{version}"


def node_root() -> Path:
    return Path(os.environ.get("BATCHVEC_NODE_ROOT", "/var/lib/batchvec"))


def run_user() -> tuple[int, int] | None:
    """(uid, gid) the node runs as: the system user when we are root (created if missing),
    None (ourselves) otherwise."""
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam(RUN_USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "-M", "-U", "-s", "/usr/sbin/nologin", RUN_USER],
                       check=True, capture_output=True)
        entry = pwd.getpwnam(RUN_USER)
    return entry.pw_uid, entry.pw_gid


def traversable(path: Path, user: tuple[int, int] | None) -> bool:
    """Whether `user` can reach `path` (x on every existing ancestor)."""
    if user is None:
        return True
    uid, gid = user
    for p in [path, *path.parents]:
        try:
            st = p.stat()
        except FileNotFoundError:
            continue
        bit = 0o100 if st.st_uid == uid else 0o010 if st.st_gid == gid else 0o001
        if not st.st_mode & bit:
            return False
    return True


def home_dir(version: str = VERSION) -> Path:
    cache = cache_dir(version)
    if traversable(cache, run_user()):
        return cache / "home"
    return node_root() / f"opensearch-{version}"


def node_dir(state: Path) -> Path:
    state = Path(state).resolve()
    if traversable(state, run_user()):
        return state / "opensearch"
    return node_root() / "nodes" / hashlib.sha256(str(state).encode()).hexdigest()[:16]


def java_home() -> str:
    """$OPENSEARCH_JAVA_HOME, else the newest JDK 21+ under /usr/lib/jvm (3.x needs 21+)."""
    if os.environ.get("OPENSEARCH_JAVA_HOME"):
        return os.environ["OPENSEARCH_JAVA_HOME"]
    found = []
    for release in Path("/usr/lib/jvm").glob("*/release"):
        m = re.search(r'^JAVA_VERSION="(\d+)', release.read_text(errors="replace"), re.M)
        if m and int(m[1]) >= 21 and (release.parent / "bin" / "java").exists():
            found.append((int(m[1]), str(release.parent)))
    if not found:
        raise NodeError("OpenSearch 3.x needs Java 21+: set OPENSEARCH_JAVA_HOME")
    return max(found)[1]


@contextmanager
def _lock(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


# --- fetch and install (once per machine) ---------------------------------------------------

def fetch(version: str = VERSION, say: Progress = _say) -> dict[str, Path]:
    """Every zip into the cache with `mvn` (skipped when already there)."""
    cache = cache_dir(version)
    out = {}
    for art in artifacts(version):
        target = cache / art.file
        if not target.exists():
            if not shutil.which("mvn"):
                raise NodeError(f"{target} is missing and `mvn` is not installed (apt-get install maven)")
            coord = f"{art.group}:{art.name}:{art.version}:zip"
            say(f"fetching {coord} with mvn ...")
            started, partial = time.monotonic(), cache / ".partial"
            shutil.rmtree(partial, ignore_errors=True)
            done = subprocess.run(["mvn", "-B", "-q", MAVEN_COPY, f"-Dartifact={coord}",
                                   f"-DoutputDirectory={partial}"], capture_output=True, text=True)
            if done.returncode != 0 or not (partial / art.file).exists():
                raise NodeError(f"mvn could not fetch {coord}:\n{(done.stdout + done.stderr)[-3000:]}")
            os.replace(partial / art.file, target)
            shutil.rmtree(partial, ignore_errors=True)
            say(f"  {art.file}: {target.stat().st_size / 2**20:.1f} MiB in {time.monotonic() - started:.0f}s")
        out[art.name] = target
    return out


def install(version: str = VERSION, say: Progress = _say) -> Path:
    """Unpack the distribution and install the plugins in order; once (marker file)."""
    home = home_dir(version)
    marker = home / ".batchvec-installed"
    if marker.exists():
        return home
    with _lock(cache_dir(version) / ".lock"):
        if marker.exists():
            return home
        zips = fetch(version, say)
        started, partial = time.monotonic(), home.with_name(home.name + ".partial")
        say(f"installing OpenSearch {version} into {home} ...")
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        _unzip(zips["opensearch"], partial)
        for script in (partial / "bin").iterdir():
            script.chmod(script.stat().st_mode | 0o111)
        env = {**_base_env(), "OPENSEARCH_PATH_CONF": str(partial / "config")}
        for art in artifacts(version)[1:]:
            t0 = time.monotonic()
            done = subprocess.run([str(partial / "bin" / "opensearch-plugin"), "install", "--batch",
                                   zips[art.name].as_uri()], env=env, capture_output=True, text=True)
            if done.returncode != 0:
                raise NodeError(f"installing {art.plugin} failed:\n{(done.stdout + done.stderr)[-3000:]}")
            say(f"  plugin {art.plugin} installed in {time.monotonic() - t0:.0f}s")
        for root, dirs, files in os.walk(partial):  # readable for the system user, never writable
            for d in dirs:
                os.chmod(os.path.join(root, d), 0o755)
            for f in files:
                p = os.path.join(root, f)
                os.chmod(p, 0o755 if os.stat(p).st_mode & 0o100 else 0o644)
        seconds = round(time.monotonic() - started, 1)
        (partial / marker.name).write_text(json.dumps(
            {"version": version, "plugins": [a.plugin for a in artifacts(version)[1:]],
             "seconds": seconds}))
        shutil.rmtree(home, ignore_errors=True)
        os.replace(partial, home)
        say(f"OpenSearch {version} installed in {seconds:.0f}s")
    return home


def _unzip(path: Path, dest: Path) -> None:
    """Extract, dropping the archive's top folder and keeping the exec bits."""
    with zipfile.ZipFile(path) as zf:
        for info in zf.infolist():
            rel = info.filename.split("/", 1)[1] if "/" in info.filename else ""
            if not rel or ".." in Path(rel).parts:
                continue
            target = dest / rel
            if info.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
            if (info.external_attr >> 16) & 0o111:
                target.chmod(0o755)


def _base_env() -> dict[str, str]:
    # The node gets a small environment of its own: none of the devstack's keys or passwords.
    return {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8",
            "OPENSEARCH_JAVA_HOME": java_home()}


# --- one node per state dir -----------------------------------------------------------------

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
    env = {**_base_env(), "OPENSEARCH_PATH_CONF": str(conf), "HOME": str(node_dir(state))}
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


def wait_ready(url: str, alive: Callable[[], bool], timeout: float, log_path: Path,
               say: Progress = _say) -> float:
    """Wait for health green or yellow, saying how it goes every 10 s; the seconds it took."""
    started = last = time.monotonic()
    while True:
        status = health(url)
        waited = time.monotonic() - started
        if status in ("green", "yellow"):
            say(f"opensearch node {status} after {waited:.0f}s")
            return waited
        if not alive():
            raise NodeError(f"the opensearch node exited during start; log tail:\n{_tail(log_path)}")
        if waited > timeout:
            raise NodeError(f"the opensearch node was not ready after {timeout:.0f}s; log tail:\n"
                            f"{_tail(log_path)}")
        if time.monotonic() - last >= 10:
            last = time.monotonic()
            say(f"waiting for the opensearch node ({waited:.0f}s, health: {status or 'no answer'})")
        time.sleep(0.5)


def _tail(path: Path, n: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return "(no log)"


def stop(pid: int, still_ours: Callable[[], bool], grace: float = 40.0) -> None:
    """SIGTERM (OpenSearch flushes and exits in a few seconds), SIGKILL after `grace`."""
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and still_ours():
        time.sleep(0.2)
    if still_ours():
        os.kill(pid, signal.SIGKILL)


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m devstack.opensearch_node [fetch|install]`: prepare the cache ahead of time."""
    what = (argv if argv is not None else sys.argv[1:]) or ["install"]
    if what[0] == "fetch":
        for name, path in fetch().items():
            print(f"{name}: {path} ({path.stat().st_size / 2**20:.1f} MiB)")
    else:
        print(install())
    return 0


if __name__ == "__main__":
    sys.exit(main())
