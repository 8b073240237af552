"""Airflow connections (and the BATCHVEC_* presets) for the running devstack, from
.devstack/endpoints.json.

--export prints `export AIRFLOW_CONN_...=...` and `export BATCHVEC_...=...` lines for a shell;
--json prints a connections file for `dag.test(conn_file_path=...)` / `airflow connections
import`.
"""

import argparse
import json
import shlex
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from devstack import seed  # noqa: E402
from devstack.config import load_endpoints  # noqa: E402


def connections(ep: dict) -> dict[str, dict]:
    host, port = ep["opensearch"].rsplit(":", 1)
    return {
        "aws_default": {
            "conn_type": "aws",
            "login": ep["aws_access_key_id"],
            "password": ep["aws_secret_access_key"],
            "extra": {
                "region_name": ep["region"],
                "service_config": {
                    "s3": {"endpoint_url": ep["s3"]},
                    "sagemaker": {"endpoint_url": ep["sagemaker"]},
                    "sagemaker-runtime": {"endpoint_url": ep["sagemaker_runtime"]},
                },
            },
        },
        "opensearch_default": {
            "conn_type": "generic",
            "host": host.split("://", 1)[1],
            "port": int(port),
            "schema": host.split("://", 1)[0],
            "login": ep["opensearch_user"],
            "password": ep["opensearch_password"],
            "extra": {"auth": "basic", "region": ep["region"], "ca_certs": ep["opensearch_ca"]},
        },
    }


def airflow_env(ep: dict) -> dict[str, str]:
    """Environment for an Airflow that runs the DAG on the devstack: its connections as
    AIRFLOW_CONN_* and the devstack's model, endpoint and role as BATCHVEC_* defaults."""
    env = {f"AIRFLOW_CONN_{conn_id.upper()}": json.dumps(conn)
           for conn_id, conn in connections(ep).items()}
    env.update(seed.pipeline_env())
    return env


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--export", action="store_true")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--dir", type=Path, default=None)
    args = parser.parse_args()
    ep = load_endpoints(args.dir)
    if args.export:
        for name, value in airflow_env(ep).items():
            print(f"export {name}={shlex.quote(value)}")
    else:
        print(json.dumps(connections(ep), indent=2))


if __name__ == "__main__":
    main()
