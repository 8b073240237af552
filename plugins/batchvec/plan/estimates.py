"""The rates a plan preview (``dry_run``, ``python -m batchvec.plan.preview``) turns sizes into time
with, and the estimate math: pure functions, no I/O.

The defaults are figures measured by ``make bench`` on this project's 2-core VM (README:
Benchmarks); every one can be replaced by a param or a CLI flag with the user's own.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

# P6: passages/s of the model container (our inference.py under the real toolkit and MMS,
# MultiRecord requests of <= 1 MiB, ~300-char passages, CPU) on 2 cores: 75.6.
EMBED_DOCS_PER_S_PER_VCPU = 75.6 / 2
# P3n: BulkWriter into the real OpenSearch node (k-NN lucene, 384-d, via the HTTPS front).
INDEX_DOCS_PER_S = 3252.0
# P2: staging (validate + shard + upload to S3) of JSONL, one task, MB/s of input read.
STAGE_MB_PER_S = 43.3
SOURCES = {
    "embed_docs_per_s_per_instance": "bench P6: 75.6 passages/s of ~300 chars on 2 CPU cores, "
                                     "scaled by the instance type's vCPUs",
    "index_docs_per_s": "bench P3n: 3,252 docs/s into one OpenSearch node (2 cores)",
    "stage_mb_per_s": "bench P2: 43.3 MB/s per staging task (2 cores)",
}
RATE_PARAMS = tuple(SOURCES)
# ml.<family>.<size>: vCPUs by size, as in the SageMaker instance tables (xlarge = 4).
_SIZE_VCPUS = {"medium": 1, "large": 2, "xlarge": 4}
_GPU_FAMILIES = ("g4dn", "g5", "g6", "p3", "p4d", "p5", "inf", "trn")


def schema() -> dict[str, dict]:
    """The preview's params for the trigger form (plan.param_schema includes them)."""
    return {
        "dry_run": {"default": False, "type": "boolean",
                    "description": "only preview the run: list the input, estimate records, "
                    "staging groups, shards, instance-hours and indexing time, log it and stop "
                    "(nothing written to S3 or OpenSearch, no model or job created)"},
        "embed_docs_per_s_per_instance": {
            "default": 0, "type": "number", "minimum": 0,
            "description": "preview rate: documents embedded per second per transform instance; "
            "0 = measured CPU rate x the instance type's vCPUs (README: Preview a run)"},
        "index_docs_per_s": {"default": INDEX_DOCS_PER_S, "type": "number", "exclusiveMinimum": 0,
                             "description": "preview rate: bulk-indexed documents per second"},
        "stage_mb_per_s": {"default": STAGE_MB_PER_S, "type": "number", "exclusiveMinimum": 0,
                           "description": "preview rate: input MB staged per second per staging "
                           "task"},
    }


def resolve(p: dict) -> tuple[dict, list[str]]:
    """The rate params as floats, and a message per bad one (for plan.resolve_plan)."""
    rates, problems = {}, []
    for name in RATE_PARAMS:
        value, low_ok = p.get(name, schema()[name]["default"]), name.startswith("embed")
        if (isinstance(value, bool) or not isinstance(value, int | float)
                or not math.isfinite(value) or value < 0 or (value == 0 and not low_ok)):
            problems.append(f"{name}: must be a number {'>= 0' if low_ok else '> 0'}, "
                            f"got {value!r}")
            value = schema()[name]["default"]
        rates[name] = float(value)
    return rates, problems


def vcpus(instance_type: str) -> int | None:
    """vCPUs of ``ml.<family>.<size>`` from its size (``2xlarge`` = 8), None if unknown."""
    m = re.fullmatch(r"ml\.[a-z0-9-]+\.(\d*)(medium|large|xlarge)", instance_type)
    if not m:
        return None
    return (int(m.group(1)) if m.group(1) else 1) * _SIZE_VCPUS[m.group(2)]


def embed_rate(instance_type: str, override: float = 0.0) -> tuple[float, str]:
    """Docs/s per instance and where the number came from."""
    if override > 0:
        return override, "given"
    cores = vcpus(instance_type) or 4
    basis = f"measured CPU rate x {cores} vCPUs ({SOURCES['embed_docs_per_s_per_instance']})"
    if vcpus(instance_type) is None:
        basis += f"; {instance_type}'s vCPUs unknown: 4 assumed"
    family = instance_type.split(".")[1] if instance_type.count(".") >= 2 else ""
    if family.startswith(_GPU_FAMILIES):
        basis += "; a GPU instance is faster than this: set embed_docs_per_s_per_instance"
    return EMBED_DOCS_PER_S_PER_VCPU * cores, basis


@dataclass
class Sample:
    """What was read of one file: ``stored`` bytes of it stand for ``records`` records;
    ``exact`` when that is the whole file (or a Parquet footer). ``inflated``: decoded bytes
    (gzip) those ``stored`` bytes came to. ``overhead``: bytes of no record (a CSV header)."""
    size: int
    stored: int
    records: int
    exact: bool
    inflated: int = 0
    overhead: int = 0


def estimate_records(sizes: list[int], samples: dict[int, Sample]) -> dict:
    """Records in files of one format: exact for the files sampled whole (or by footer), the
    others at the sampled bytes per record. ``samples`` maps file index -> Sample."""
    exact = sum(s.records for s in samples.values() if s.exact)
    stored = sum(s.stored - s.overhead for s in samples.values())
    counted = sum(s.records for s in samples.values())
    overhead = (sum(s.overhead for s in samples.values()) / len(samples)) if samples else 0
    per_record = stored / counted if counted else None
    rest = [size for i, size in enumerate(sizes) if i not in samples or not samples[i].exact]
    guessed = sum(max(0.0, size - overhead) for size in rest) / per_record if per_record else 0
    inflated = sum(s.inflated for s in samples.values())
    ratio = inflated / sum(s.stored for s in samples.values()) if inflated else 1.0
    return {"files": len(sizes), "bytes": sum(sizes), "sampled_files": len(samples),
            "records": int(round(exact + guessed)), "exact": not rest,
            "bytes_per_record": round(per_record, 1) if per_record else None,
            "inflate_ratio": round(ratio, 2)}


def transform_estimate(records: int, shards: int, instances: int, rate: float,
                       max_records_per_job: int = 0, max_jobs: int = 1,
                       parallel: int = 1) -> dict:
    """The transform jobs per group of shards (job_groups, shards of equal records). A job
    hands whole input files (shards) to its instances, so its busiest instance has
    ceil(shards / instances) of them, and all of them are billed until it ends; `parallel`
    jobs run at once, each next one as soon as one ends (start-up, minutes on SageMaker, not
    included)."""
    from batchvec.batch import job_groups

    per_shard = records / shards if shards else 0
    groups = job_groups.group_shards([(str(i), per_shard) for i in range(shards)],
                                     max_records_per_job or max(1, records), max_jobs)
    walls = [math.ceil(len(g) / instances) * per_shard / rate for g in groups]
    lanes = [0.0] * max(1, min(parallel, len(walls)))
    for wall in walls:
        lanes[lanes.index(min(lanes))] += wall
    return {"jobs": len(groups), "parallel": len(lanes), "instances": instances,
            "busy_instances": min(instances, max((len(g) for g in groups), default=0)),
            "wall_s": round(max(lanes), 1),
            "instance_hours": round(sum(walls) * instances / 3600, 3)}


def staging_estimate(group_bytes: list[float], rate_mb_s: float) -> dict:
    """Seconds to stage: every group on its own worker (the largest group) and all on one."""
    mb = [b / 1e6 for b in group_bytes]
    return {"parallel_s": round(max(mb, default=0) / rate_mb_s, 1),
            "serial_s": round(sum(mb) / rate_mb_s, 1)}


def index_estimate(records: int, rate: float) -> dict:
    return {"wall_s": round(records / rate, 1)}


def hms(seconds: float) -> str:
    """``1h 02m``, ``3m 20s``, ``12.5s``: how long, at a glance."""
    if seconds < 60:
        return f"{seconds:.1f}s"
    m, s = divmod(int(round(seconds)), 60)
    h, m = divmod(m, 60)
    return f"{h}h {m:02d}m" if h else f"{m}m {s:02d}s"
