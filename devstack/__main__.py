"""`python -m devstack up|down|status|endpoints|env|seed`: the devstack from the command line."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

from devstack import config, launcher


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devstack", description=__doc__)
    parser.add_argument("command", choices=["up", "down", "status", "endpoints", "env", "seed"])
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
        print(f"  {'':<11} (CA {ep['opensearch_ca']}; node {ep['opensearch_node']}, no auth)")
        print(f"  endpoints and credentials: {config.endpoints_path(state)}")
    elif args.command == "down":
        stopped = launcher.down(state)
        print("devstack stopped: " + (", ".join(stopped) or "nothing was running"))
    elif args.command == "status":
        for name, pid in launcher.status(state).items():
            print(f"  {name:<16} {'running pid ' + str(pid) if pid else 'stopped'}")
    elif args.command == "env":  # for `eval "$(make -s devstack-env)"`: plain boto3/curl use
        ep = config.load_endpoints(state)
        for name, value in (("AWS_ACCESS_KEY_ID", ep["aws_access_key_id"]),
                            ("AWS_SECRET_ACCESS_KEY", ep["aws_secret_access_key"]),
                            ("AWS_DEFAULT_REGION", ep["region"]),
                            ("OS_USER", ep["opensearch_user"]), ("OS_PASS", ep["opensearch_password"]),
                            ("S3_URL", ep["s3"]), ("SAGEMAKER_URL", ep["sagemaker"]),
                            ("OPENSEARCH_URL", ep["opensearch"]), ("OS_CA", ep["opensearch_ca"])):
            print(f"export {name}={shlex.quote(value)}")
    elif args.command == "seed":  # what a default run of the DAG needs (make airflow)
        from devstack import seed

        ep = config.load_endpoints(state)
        print(f"devstack: SageMaker model {seed.ensure_sagemaker_model(ep)} ready")
        days = seed.default_partition_days()
        for uri in seed.stage_sample_partitions(ep, days):
            print(f"devstack: sample documents staged at {uri}")
        print(f"devstack: default input partitions ready for ds={', '.join(days)}")
    else:
        print(json.dumps(config.load_endpoints(state), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
