"""`python -m devstack up|down|status|endpoints`: the devstack from the command line."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from devstack import config, launcher


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devstack", description=__doc__)
    parser.add_argument("command", choices=["up", "down", "status", "endpoints"])
    parser.add_argument("--dir", type=Path, default=None, help="state dir (default .devstack/)")
    args = parser.parse_args(argv)
    state = args.dir or config.state_dir()
    if args.command == "up":
        started = time.monotonic()
        try:
            ep = launcher.up(state)
        except launcher.DevstackError as exc:
            print(f"devstack: {exc}", file=sys.stderr)
            return 1
        print(f"devstack up in {time.monotonic() - started:.1f}s (state in {state})")
        for name in ("s3", "sagemaker", "opensearch"):
            print(f"  {name:<11} {ep[name]}")
        print(f"  endpoints and credentials: {config.endpoints_path(state)}")
    elif args.command == "down":
        stopped = launcher.down(state)
        print("devstack stopped: " + (", ".join(stopped) or "nothing was running"))
    elif args.command == "status":
        for name, pid in launcher.status(state).items():
            print(f"  {name:<11} {'running pid ' + str(pid) if pid else 'stopped'}")
    else:
        print(json.dumps(config.load_endpoints(state), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
