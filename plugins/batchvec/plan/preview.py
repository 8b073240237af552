"""Plan preview: what a run would do with its input, read-only (the ``dry_run`` param, and
``python -m batchvec.plan.preview``).

It lists the input (the listing staging would use), reads the first ~1 MiB of a few files
per format (Parquet: the footers, whose row counts are exact) to estimate records, groups
the files as parallel staging would (``staging_groups.listing_doc``), and turns the sizes
into time with the rates in ``estimates``. It never writes to S3 or OpenSearch, and creates
no model or job. README: Preview a run.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import zlib
from typing import Any

from batchvec.batch import job_groups
from batchvec.hooks import s3io
from batchvec.hooks.s3io import S3RangeFile
from batchvec.ingest import staging_groups
from batchvec.ingest.sources import InputSet, SourceFile
from batchvec.plan import estimates
from batchvec.plan.estimates import Sample
from batchvec.plan.naming import parse_s3_uri

log = logging.getLogger(__name__)

SAMPLE_BYTES = 1 << 20
SAMPLE_FILES = 3  # per format, spread over the listing
MAX_FOOTERS = 200  # Parquet files whose footer is read; past that, estimated from those
_INFLATE_CAP = 64 << 20  # a gzip bomb in the sample stays bounded
LARGEST = 5
MAX_GROUP_ROWS = 50

# The plan's params the preview follows (staging groups, then jobs per shard group).
_STAGING = (("staging_group_mb", float, 1024.0), ("max_staging_tasks", int, 32),
            ("staging_commit_mb", float, 64.0), ("max_records_per_job", int, 5_000_000),
            ("max_jobs", int, 64), ("max_parallel_jobs", int, 4))


def staging_defaults() -> dict:
    """The parallel-staging params' defaults from the plan's schema (their one home); the
    fallbacks only for a plan from before them. Not at import: plan imports Airflow."""
    from batchvec.plan.run_plan import param_schema

    schema = param_schema()
    return {k: kind(schema.get(k, {}).get("default", d)) for k, kind, d in _STAGING}


def format_key(f: SourceFile) -> str:
    return f.format + (".gz" if f.gzip else "")


def _head(s3: Any, f: SourceFile, n: int) -> bytes:
    if f.size == 0:  # S3 answers a range of an empty object with 416
        return b""
    if f.name.startswith("s3://"):
        bucket, key = parse_s3_uri(f.name)
        return s3io.read_head(s3, bucket, key, n)
    with open(f.name, "rb") as fh:
        return fh.read(n)


def _inflate(data: bytes) -> tuple[bytes, int, bool]:
    """(decoded bytes, stored bytes they came from, whether the stream ended there)."""
    out, used, rest = [], 0, data
    while rest:
        d = zlib.decompressobj(16 + zlib.MAX_WBITS)
        try:
            out.append(d.decompress(rest, _INFLATE_CAP))
        except zlib.error:  # damaged: staging stops there too (corrupt_gzip)
            break
        used += len(rest) - len(d.unused_data) - len(d.unconsumed_tail)
        if not d.eof:
            return b"".join(out), used, False
        rest = d.unused_data  # concatenated gzip members
    return b"".join(out), used, True


def sample_lines(s3: Any, f: SourceFile, limit: int = SAMPLE_BYTES) -> Sample:
    """JSONL or CSV (gzip'd or not): records in the first ``limit`` stored bytes; exact when
    that is the whole file. Blank lines are not records; a CSV's first line is its header."""
    data = _head(s3, f, limit)
    stored, whole = len(data), len(data) >= f.size
    inflated = 0
    if f.gzip:
        data, stored, ended = _inflate(data)
        whole, inflated = whole and ended, len(data)
    end = len(data) if whole else data.rfind(b"\n") + 1
    lines = [ln for ln in data[:end].split(b"\n") if ln.strip()]
    header = 0
    if f.format == "csv" and lines:
        header = len(lines[0]) + 1
        lines = lines[1:]
    if not whole and data:  # the stored bytes the complete lines stand for
        stored = int(stored * (end / len(data))) if f.gzip else end
    if not whole and not lines:  # one record longer than the sample: at least that big
        return Sample(f.size, max(stored, len(data)), 1, False, inflated)
    return Sample(f.size, stored, len(lines), whole, inflated,
                  0 if f.gzip else min(header, stored))


def sample_parquet(s3: Any, f: SourceFile) -> Sample:
    import pyarrow.parquet as pq

    if f.name.startswith("s3://"):
        fh = S3RangeFile(s3, *parse_s3_uri(f.name), size=f.size)  # ranged GETs: the footer
    else:
        fh = open(f.name, "rb")  # noqa: SIM115 (closed by the with-block)
    with fh:
        try:
            rows = pq.ParquetFile(fh).metadata.num_rows
        except Exception:  # not Parquet: staging rejects it whole (unreadable_file)
            rows = 0
    return Sample(f.size, f.size, rows, True)


def _spread(n: int, k: int) -> list[int]:
    if n <= k:
        return list(range(n))
    return sorted({round(i * (n - 1) / (k - 1)) for i in range(k)})


def collect(files: list[SourceFile], s3: Any) -> dict[str, dict]:
    """Per format key: its files' indexes (into ``files``) and the samples taken."""
    by_key: dict[str, list[int]] = {}
    for i, f in enumerate(files):
        by_key.setdefault(format_key(f), []).append(i)
    out = {}
    for key, idx in by_key.items():
        if key == "parquet":
            samples = {j: sample_parquet(s3, files[idx[j]]) for j in _spread(len(idx), MAX_FOOTERS)}
        else:
            samples = {j: sample_lines(s3, files[idx[j]]) for j in _spread(len(idx), SAMPLE_FILES)}
        out[key] = {"indexes": idx, "samples": samples}
    return out


def build(files: list[SourceFile], samples: dict[str, dict], settings: dict) -> dict:
    """The preview (pure): ``settings`` has shards, instance_type, instance_count, the staging
    params and the rates (``estimates.RATE_PARAMS``)."""
    settings = {**{k: d for k, _, d in _STAGING}, **settings}  # a plan from before some
    formats, records, inflate = {}, 0, [1.0] * len(files)
    for key, got in samples.items():
        idx = got["indexes"]
        est = estimates.estimate_records([files[i].size for i in idx], got["samples"])
        formats[key] = est
        records += est["records"]
        for i in idx:
            inflate[i] = est["inflate_ratio"]
    sizes = [f.size for f in files]
    mb = staging_groups.MB
    listing = staging_groups.listing_doc(
        files, int(settings["staging_group_mb"] * mb), int(settings["max_staging_tasks"]),
        int(settings["staging_commit_mb"] * mb))
    groups = [{"group": g["group"], "files": g["end"] - g["start"], "bytes": g["bytes"],
               "segments": len(g["segments"])} for g in listing["groups"]]
    # Staging reads decoded bytes: a gzip'd file costs what it inflates to.
    work = [sum(sizes[i] * inflate[i] for i in range(g["start"], g["end"]))
            for g in listing["groups"]]
    shards, count = settings["shards"], settings["instance_count"]
    embed, basis = estimates.embed_rate(settings["instance_type"],
                                        settings["embed_docs_per_s_per_instance"])
    largest = sorted(files, key=lambda f: -f.size)[:LARGEST]
    exact = all(f["exact"] for f in formats.values())
    return {
        "input": {"uri": settings.get("input_uri", ""), "files": len(files), "bytes": sum(sizes),
                  "largest": [{"name": f.name, "bytes": f.size} for f in largest]},
        "records": {"total": records, "exact": exact, "formats": formats},
        "staging": {"groups": len(groups), "segments": sum(g["segments"] for g in groups),
                    "group_mb": settings["staging_group_mb"],
                    "max_staging_tasks": settings["max_staging_tasks"],
                    "commit_mb": settings["staging_commit_mb"],
                    "rows": groups[:MAX_GROUP_ROWS], "more_rows": max(0, len(groups) - MAX_GROUP_ROWS),
                    **estimates.staging_estimate(work, settings["stage_mb_per_s"])},
        "shards": {"count": shards, "records_per_shard": round(records / shards) if shards else 0},
        "transform": {"instance_type": settings["instance_type"],
                      **estimates.transform_estimate(
                          records, shards, count, embed, settings["max_records_per_job"],
                          settings["max_jobs"], settings["max_parallel_jobs"])},
        "indexing": estimates.index_estimate(records, settings["index_docs_per_s"]),
        "rates": {"embed_docs_per_s_per_instance": round(embed, 1), "embed_basis": basis,
                  "index_docs_per_s": settings["index_docs_per_s"],
                  "stage_mb_per_s": settings["stage_mb_per_s"],
                  "sources": estimates.SOURCES},
        "notes": ["records are an upper bound for what the model is sent: reembed 'changed' "
                  "sends only new and changed ones", "SageMaker instance start-up (minutes) "
                  "is not included"],
    }


def preview(input_uri: str, fmt: str, s3: Any, settings: dict) -> dict:
    """List and sample the input (read-only), then ``build``. Raises sources.InputError."""
    files = InputSet(input_uri, fmt=fmt, s3_client=s3).files
    return build(files, collect(files, s3), {**settings, "input_uri": input_uri})


def for_plan(plan: dict, s3: Any) -> dict:
    settings = {k: plan.get(k, d) for k, d in staging_defaults().items()}
    settings.update({k: plan[k] for k in estimates.RATE_PARAMS})
    settings.update(shards=plan["shards"], instance_type=plan["model"]["instance_type"],
                    instance_count=plan["model"]["instance_count"])
    return preview(plan["input_uri"], plan["input_format"], s3, settings)


def render(p: dict) -> str:
    """The preview as a readable table."""
    i, r, st, t = p["input"], p["records"], p["staging"], p["transform"]
    rows = [("input", f"{i['uri']}: {i['files']:,} files, {i['bytes'] / 1e6:,.1f} MB")]
    rows += [("  largest", f"{f['bytes'] / 1e6:,.1f} MB  {f['name']}") for f in i["largest"]]
    rows.append(("records", f"{'' if r['exact'] else '~'}{r['total']:,}"
                 f" ({'exact' if r['exact'] else 'estimated'})"))
    for key, f in r["formats"].items():
        rows.append((f"  {key}", f"{f['files']:,} files, {f['bytes'] / 1e6:,.1f} MB, "
                     f"{'' if f['exact'] else '~'}{f['records']:,} records "
                     f"({f['sampled_files']} sampled, {f['bytes_per_record'] or '-'} B/record)"))
    rows.append(("staging groups", f"{st['groups']} (<= {st['group_mb']:g} MB each, at most "
                 f"{st['max_staging_tasks']}), {st['segments']} commit segments of "
                 f"{st['commit_mb']:g} MB"))
    rows += [(f"  group {g['group']}", f"{g['files']:,} files, {g['bytes'] / 1e6:,.1f} MB, "
              f"{g['segments']} segments") for g in st["rows"][:8]]
    if st["groups"] > 8:
        rows.append(("  ...", f"{st['groups'] - 8} more groups"))
    rows.append(("staging time", f"{estimates.hms(st['parallel_s'])} (a worker per group), "
                 f"{estimates.hms(st['serial_s'])} on one"))
    rows.append(("shards", f"{p['shards']['count']} of ~{p['shards']['records_per_shard']:,} records"))
    rows.append(("transform jobs", f"{t['jobs']} ({t['parallel']} at once), {t['instances']} x "
                 f"{t['instance_type']} each, {estimates.hms(t['wall_s'])}, "
                 f"{t['instance_hours']:,.2f} instance-hours"))
    rows.append(("indexing time", estimates.hms(p["indexing"]["wall_s"])))
    rt = p["rates"]
    rows.append(("rates", f"embed {rt['embed_docs_per_s_per_instance']:,} docs/s/instance, "
                 f"index {rt['index_docs_per_s']:,} docs/s, stage {rt['stage_mb_per_s']:,} MB/s"))
    rows.append(("  embed rate", rt["embed_basis"]))
    rows += [("note", n) for n in p["notes"]]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)


def _s3_client(args: argparse.Namespace) -> Any:
    """--endpoint-url: boto3's default credentials against that S3 (the devstack's); else
    the Airflow connection (--aws-conn-id, or aws_default when its AIRFLOW_CONN_ variable is
    set); else boto3's defaults."""
    conn_id = args.aws_conn_id or (None if args.endpoint_url else
                                   ("aws_default" if os.environ.get("AIRFLOW_CONN_AWS_DEFAULT")
                                    else None))
    from batchvec.hooks import aws

    if conn_id:
        return aws.s3_client(conn_id)
    return aws.plain_s3_client(args.endpoint_url, args.region)


def main(argv: list[str] | None = None) -> int:
    from batchvec.ingest.sources import FORMATS, InputError

    ap = argparse.ArgumentParser(prog="python -m batchvec.plan.preview", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--input", required=True, help="s3:// prefix or object, or a local path")
    ap.add_argument("--format", default="auto", choices=FORMATS)
    ap.add_argument("--shards", type=int, default=0, help="0 = 2 x instance count (at least 2)")
    ap.add_argument("--instance-type", default="ml.m5.xlarge")
    ap.add_argument("--instance-count", type=int, default=1)
    for name, kind, _ in _STAGING:
        ap.add_argument("--" + name.replace("_", "-"), type=kind, help="default: the param's")
    for name in estimates.RATE_PARAMS:
        ap.add_argument("--" + name.replace("_", "-"), type=float,
                        default=estimates.schema()[name]["default"], help=estimates.SOURCES[name])
    ap.add_argument("--endpoint-url", help="S3 endpoint (the devstack's); boto3's credentials")
    ap.add_argument("--aws-conn-id", help="read S3 with this Airflow connection")
    ap.add_argument("--region", default=os.environ.get("AWS_DEFAULT_REGION", "us-east-1"))
    ap.add_argument("--json", action="store_true", help="print the preview as JSON")
    args = ap.parse_args(argv)
    rates, problems = estimates.resolve(vars(args))
    if args.instance_count < 1 or args.shards < 0:
        problems.append("--instance-count must be >= 1 and --shards >= 0")
    given = {k: getattr(args, k) for k, _, _ in _STAGING if getattr(args, k) is not None}
    if given.get("max_staging_tasks", 1) < 1 or given.get("staging_group_mb", 1) <= 0 \
            or given.get("staging_commit_mb", 0) < 0:
        problems.append("--max-staging-tasks must be >= 1, --staging-group-mb > 0, "
                        "--staging-commit-mb >= 0")
    problems += job_groups.resolve({k: v for k, v in given.items() if k in job_groups.schema()})[1]
    if problems:
        ap.error("; ".join(problems))
    # stdout carries the preview alone: Airflow logs to fd 1 (at import too), so fd 1 goes
    # to stderr meanwhile and the preview to a copy of the real stdout.
    sys.stdout.flush()
    real_stdout = os.dup(1)
    os.dup2(2, 1)
    try:
        settings = {**staging_defaults(), **given, **rates,
                    "shards": args.shards or max(2, 2 * args.instance_count),
                    "instance_type": args.instance_type, "instance_count": args.instance_count}
        found = preview(args.input, args.format, _s3_client(args), settings)
    except InputError as exc:
        print(f"cannot read --input: {exc}", file=sys.stderr)
        return 2
    finally:
        sys.stdout.flush()
        os.dup2(real_stdout, 1)
        os.close(real_stdout)
    print(json.dumps(found, indent=2) if args.json else render(found))
    return 0


if __name__ == "__main__":
    sys.exit(main())
