"""OpenSearch for the devstack, fetched once with `mvn` and installed once per machine: the
distribution (integ-test zip, no bundled JDK) with job-scheduler, ML Commons, k-NN and
neural-search, in that order (each needs the ones before).

  <cache>/opensearch-<v>/*.zip   the downloads; <cache> = $BATCHVEC_CACHE or ~/.cache/batchvec,
                                 outside the clone, so a fresh clone or `make clean` does not
                                 download again
  <home>                         the distribution with the plugins installed (marker file
                                 `.batchvec-installed`): <cache>/opensearch-<v>/home

OpenSearch refuses to run as root. As root it runs as a system user (`osrun`, created if
missing), which must reach every file of the install by path; /root is 0700, so when the cache is
not traversable by that user the install goes to $BATCHVEC_NODE_ROOT (default /var/lib/batchvec)
instead. No permission of an existing directory is changed.

`python -m devstack.opensearch_install [fetch|install]` prepares a machine ahead of time.
"""

from __future__ import annotations

import fcntl
import json
import os
import pwd
import re
import shutil
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

VERSION = os.environ.get("BATCHVEC_OPENSEARCH_VERSION", "3.6.0")
RUN_USER = os.environ.get("BATCHVEC_OPENSEARCH_USER", "osrun")
MAVEN_COPY = "org.apache.maven.plugins:maven-dependency-plugin:3.8.1:copy"

Progress = Callable[[str], None]


def _say(msg: str) -> None:
    print(f"devstack: {msg}", file=sys.stderr, flush=True)


class InstallError(RuntimeError):
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
        raise InstallError("OpenSearch 3.x needs Java 21+: set OPENSEARCH_JAVA_HOME")
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
                raise InstallError(f"{target} is missing and `mvn` is not installed (apt-get install maven)")
            coord = f"{art.group}:{art.name}:{art.version}:zip"
            say(f"fetching {coord} with mvn ...")
            started, partial = time.monotonic(), cache / ".partial"
            shutil.rmtree(partial, ignore_errors=True)
            done = subprocess.run(["mvn", "-B", "-q", MAVEN_COPY, f"-Dartifact={coord}",
                                   f"-DoutputDirectory={partial}"], capture_output=True, text=True)
            if done.returncode != 0 or not (partial / art.file).exists():
                raise InstallError(f"mvn could not fetch {coord}:\n{(done.stdout + done.stderr)[-3000:]}")
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
        env = {**base_env(), "OPENSEARCH_PATH_CONF": str(partial / "config")}
        for art in artifacts(version)[1:]:
            t0 = time.monotonic()
            done = subprocess.run([str(partial / "bin" / "opensearch-plugin"), "install", "--batch",
                                   zips[art.name].as_uri()], env=env, capture_output=True, text=True)
            if done.returncode != 0:
                raise InstallError(f"installing {art.plugin} failed:\n{(done.stdout + done.stderr)[-3000:]}")
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


def base_env() -> dict[str, str]:
    # The node gets a small environment of its own: none of the devstack's keys or passwords.
    return {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8",
            "OPENSEARCH_JAVA_HOME": java_home()}


def main(argv: list[str] | None = None) -> int:
    """`python -m devstack.opensearch_install [fetch|install]`."""
    what = (argv if argv is not None else sys.argv[1:]) or ["install"]
    if what[0] == "fetch":
        for name, path in fetch().items():
            print(f"{name}: {path} ({path.stat().st_size / 2**20:.1f} MiB)")
    else:
        print(install())
    return 0



if __name__ == "__main__":
    sys.exit(main())
