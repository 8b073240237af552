#!/usr/bin/env bash
# Creates .venv when missing and installs both requirement files, skipping the install when
# a stamp shows they (and the Python used) are unchanged since the last successful install.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=.venv
STAMP=$VENV/.requirements.sha256

if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
  echo "bootstrap: Python 3.11 is required (found: $("$PYTHON" --version 2>&1)); set PYTHON=..." >&2
  exit 1
fi
# redis-server: the Celery broker of the CeleryExecutor test and `make chaos --executor
# celery`, started privately by tools/chaos/celery_stack.py, never as the system service.
if ! command -v redis-server >/dev/null 2>&1 && [ ! -x /usr/bin/redis-server ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "bootstrap: installing redis-server (apt-get)"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends redis-server >/dev/null
  else
    echo "bootstrap: redis-server missing (apt-get install redis-server); the Celery tests need it" >&2
  fi
fi
want=$( (cat requirements.txt requirements-dev.txt devstack/requirements.txt 2>/dev/null; "$PYTHON" --version) | sha256sum | cut -d' ' -f1)
if [ -x "$VENV/bin/python" ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ]; then
  exit 0
fi
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
echo "bootstrap: installing requirements into $VENV (first time takes a few minutes)"
"$VENV/bin/python" -m pip install --quiet --upgrade pip
"$VENV/bin/python" -m pip install --quiet -r requirements-dev.txt
echo "$want" > "$STAMP"
echo "bootstrap: done"
