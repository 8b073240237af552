"""The model container's Python environment: a venv of its own outside the clone, built once
with pip from `requirements.txt` beside this file and cached under
`~/.cache/batchvec/container-venv/<hash>/` (`$BATCHVEC_CONTAINER_VENV_DIR` moves it), keyed
by the requirement lines and the Python version, so changing a pin builds a new one and
every clone and worktree on the machine shares the same one.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

REQUIREMENTS = Path(__file__).with_name("requirements.txt")
MARKER = ".batchvec-complete"


def root() -> Path:
    return Path(os.environ.get("BATCHVEC_CONTAINER_VENV_DIR")
                or Path.home() / ".cache" / "batchvec" / "container-venv")


def requirement_lines(path: Path = REQUIREMENTS) -> list[str]:
    lines = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
    return [line for line in lines if line]


def key(python: str | None = None) -> str:
    """Comments do not count: editing one must not rebuild a 5 GB environment."""
    version = subprocess.run([python or _base_python(), "-c", "import sys; print(sys.version)"],
                             capture_output=True, text=True, check=True).stdout.strip()
    text = "\n".join(requirement_lines() + [version])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _base_python() -> str:
    # The interpreter the project venv was made from: a venv of a venv would inherit nothing,
    # but `python -m venv` from inside one works only through the base executable.
    return getattr(sys, "_base_executable", None) or sys.executable


def path() -> Path:
    return root() / key()


def python_of(venv: Path) -> Path:
    return venv / "bin" / "python"


def ready(venv: Path | None = None) -> bool:
    return ((venv or path()) / MARKER).exists()


def ensure(progress: Callable[[str], None] | None = None, timeout: float = 1800.0) -> Path:
    """The venv's path, building it first if needed (one builder at a time per machine)."""
    say = progress or (lambda msg: print(msg, file=sys.stderr, flush=True))
    venv = path()
    if ready(venv):
        return venv
    venv.parent.mkdir(parents=True, exist_ok=True)
    with _lock(venv.parent / f"{venv.name}.lock", say):
        if ready(venv):  # another process built it while we waited
            return venv
        _build(venv, say, timeout)
    return venv


@contextlib.contextmanager
def _lock(lock_path: Path, say: Callable[[str], None]):
    with open(lock_path, "w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            say(f"container venv: another process is building it; waiting ({lock_path})")
            fcntl.flock(fh, fcntl.LOCK_EX)
        yield


def _build(venv: Path, say: Callable[[str], None], timeout: float) -> None:
    started = time.monotonic()
    # Built in place (venv scripts hard-code their path); only the marker written last makes
    # it count, so an interrupted build is wiped and redone.
    shutil.rmtree(venv, ignore_errors=True)
    say(f"container venv: building {venv} from {REQUIREMENTS.name} (once per machine; a few "
        "minutes, several GB: torch, the HF inference toolkit, multi-model-server)")
    subprocess.run([_base_python(), "-m", "venv", str(venv)], check=True)
    cmd = [str(python_of(venv)), "-m", "pip", "install", "--progress-bar", "off",
           "--disable-pip-version-check", "-r", str(REQUIREMENTS)]
    log_path = venv.with_name(venv.name + ".build.log")
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + timeout
        for line in proc.stdout:  # pip's per-package lines are the progress shown
            log.write(line)
            if line.startswith(("Collecting", "Installing", "Successfully")):
                say(f"container venv: {line.strip()[:150]}")
            if time.monotonic() > deadline:
                proc.kill()
        code = proc.wait()
    if code != 0:
        shutil.rmtree(venv, ignore_errors=True)
        tail = log_path.read_text(errors="replace")[-2000:]
        raise RuntimeError(f"building the container venv failed (pip exit {code}; log "
                           f"{log_path}):\n{tail}")
    (venv / MARKER).write_text(f"built in {time.monotonic() - started:.0f}s\n")
    say(f"container venv: ready in {time.monotonic() - started:.0f}s ({_size_gb(venv):.1f} GB)")


def _size_gb(venv: Path) -> float:
    total = sum(f.stat().st_size for f in venv.rglob("*") if f.is_file() and not f.is_symlink())
    return total / 1e9


if __name__ == "__main__":  # `python -m devstack.container.venv`: build it now, print its path
    print(ensure())
