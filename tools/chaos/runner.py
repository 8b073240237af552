"""One chaos session: a private devstack + Airflow, N runs each with one kill, the checks.

Each run gets its own index (`chaos-NNN`) and its own transform-job tag, which is part of the
model's definition, so it registers its own ML Commons model (with its connector inside;
ensure_model kills land in the create path; the connector role ARN no longer would: a
self-managed cluster's connector signs with keys, and the role is not in its definition), and
its accounting is exact: the same generated input every time, N valid records and 2 bad lines.
The kill mode stage_group_mid_file reads that input split into several files (`input-files/`),
in groups of several one-file segments, so a stage_group can be caught between commits.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import requests

from chaos import checks, kills, procs
from chaos.airflow_stack import AirflowStack

LANES = 4  # bulk_concurrency (the DAG's default)
# What ML Commons must hold once per name: models (each with its connector inside) and their
# group. There are no standalone connectors any more.
ML_KINDS = ("models", "model_groups")
BAD_LINES = ['{"id": "chaos-bad-1", "text": "   "}', "not json at all"]


@dataclass
class Options:
    runs: int = 20
    seed: int | None = None
    records: int = 300
    shards: int = 2
    retries: int = 3
    bulk_max_actions: int = 10
    checkpoint_lines: int = 20  # BATCHVEC_CHECKPOINT_LINES: a shard checkpoints mid-way
    # stage_group_mid_file: the input in this many files, in this many staging groups, every
    # file its own segment (staging_commit_mb 0), so each group commits several times.
    stage_files: int = 48
    stage_groups: int = 2
    # Transform jobs per run (max_records_per_job = records / this): the batch_predict kills
    # land in one job group of several, whose retry must attach to that group's job alone.
    job_groups: int = 2
    bulk_latency_ms: int = 600
    submit_latency_ms: int = 4000
    run_timeout: float = 600.0
    modes: list[str] = field(default_factory=list)
    keep: bool = False
    executor: str = "local"  # or "celery": stack is a CeleryStack


def write_input(path: Path, records: int, sample: Path) -> set[str]:
    """`records` valid documents (texts from the sample, made unique) plus BAD_LINES."""
    texts = []
    for line in sample.read_text().splitlines():  # the sample has bad lines on purpose
        try:
            doc = json.loads(line)
        except ValueError:
            continue
        if isinstance(doc, dict) and isinstance(doc.get("text"), str) and doc["text"].strip():
            texts.append(doc)
    lines, ids = [], set()
    for i in range(records):
        src = texts[i % len(texts)]
        doc_id = f"chaos-{i:05d}"
        ids.add(doc_id)
        lines.append(json.dumps({"id": doc_id, "text": f"{src['text']} (variant {i // len(texts)})",
                                 "topic": src.get("topic", "none")}))
    lines[len(lines) // 2:len(lines) // 2] = BAD_LINES
    path.write_text("\n".join(lines) + "\n")
    return ids


def split_input(path: Path, out_dir: Path, files: int) -> list[int]:
    """`path`'s lines in `files` files of about as many lines each, in order (sorted names:
    the listing's order is the input's); returns their sizes."""
    lines = path.read_text().splitlines(keepends=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = max(1, min(files, len(lines)))
    sizes = []
    for n in range(files):
        part = lines[n * len(lines) // files:(n + 1) * len(lines) // files]
        target = out_dir / f"part-{n:04d}.jsonl"
        target.write_text("".join(part))
        sizes.append(target.stat().st_size)
    return sizes


def staging_conf(sizes: list[int], groups: int) -> dict:
    """Params that cut `sizes` (the files, in order) into about `groups` groups of whole
    files, each file its own commit segment, with the staged objects kept after the run (the
    checks read the commits back)."""
    group_mb = max(sum(sizes) / max(1, groups), 1) / 1e6
    return {"staging_group_mb": group_mb, "staging_commit_mb": 0, "keep_staging": True}


def run_conf(i: int, input_path: Path, index: str, shards: int,
             staging: dict | None = None, records_per_job: int | None = None) -> dict:
    """Run i's DAG conf: its own index, and its own tag, which is part of the model's
    definition, so the run registers a model of its own; `staging`: staging params
    (stage_group_mid_file's runs), else the defaults; `records_per_job`: cuts the shards
    into several transform jobs."""
    jobs = {"max_records_per_job": records_per_job} if records_per_job else {}
    return {"input_uri": str(input_path), "index_name": index, "metadata_fields": ["topic"],
            "shards": shards, "max_reject_ratio": 0.5, "tags": {"batchvec-chaos-run": f"{i:03d}"},
            **(staging or {}), **jobs}


class Services:
    """Read-only views of the devstack used by the checks."""

    def __init__(self, endpoints: dict):
        import boto3

        self.ep = endpoints
        self.http = requests.Session()
        self.http.auth = (endpoints["opensearch_user"], endpoints["opensearch_password"])
        self.http.verify = endpoints.get("opensearch_ca", True)  # the devstack's own CA,
        self.http.trust_env = False  # not REQUESTS_CA_BUNDLE's
        keys = {"region_name": endpoints["region"],
                "aws_access_key_id": endpoints["aws_access_key_id"],
                "aws_secret_access_key": endpoints["aws_secret_access_key"]}
        self.s3 = boto3.client("s3", endpoint_url=endpoints["s3"], **keys)
        self.sagemaker = boto3.client("sagemaker", endpoint_url=endpoints["sagemaker"], **keys)

    def _os(self, method: str, path: str, body: dict | None = None) -> dict:
        resp = self.http.request(method, self.ep["opensearch"] + path, json=body, timeout=60)
        resp.raise_for_status()
        return resp.json()

    def index_ids(self, index: str, size: int) -> tuple[list[str], int]:
        self._os("POST", f"/{index}/_refresh")
        count = self._os("GET", f"/{index}/_count")["count"]
        hits = self._os("POST", f"/{index}/_search", {"size": size, "_source": False,
                                                      "query": {"match_all": {}}})["hits"]["hits"]
        return [h["_id"] for h in hits], count

    def ml_names(self, kind: str) -> list[str]:
        resp = self._os("POST", f"/_plugins/_ml/{kind}/_search",
                        {"query": {"match_all": {}}, "size": 10000})
        return [h["_source"].get("name") for h in resp["hits"]["hits"]]

    def report(self, run_key: str) -> dict | None:
        try:
            obj = self.s3.get_object(Bucket=self.ep["bucket"], Key=f"runs/{run_key}/report.json")
        except self.s3.exceptions.NoSuchKey:
            return None
        return json.loads(obj["Body"].read())

    def checkpoints(self, run_key: str) -> int:
        """Shards of the run with a checkpoint in S3 now (not their id digest parts)."""
        resp = self.s3.list_objects_v2(Bucket=self.ep["bucket"],
                                       Prefix=f"runs/{run_key}/checkpoints/index/")
        return sum(o["Key"].endswith(".json") for o in resp.get("Contents", ()))

    def _keys(self, prefix: str) -> list[dict]:
        found, token = [], None
        while True:
            kw = {"Bucket": self.ep["bucket"], "Prefix": prefix,
                  **({"ContinuationToken": token} if token else {})}
            page = self.s3.list_objects_v2(**kw)
            found += page.get("Contents", ())
            token = page.get("NextContinuationToken")
            if not token:
                return found

    def staged_groups(self, run_key: str, segments: dict[int, int]) -> dict[int, kills.GroupStage]:
        """group -> GroupStage from `runs/<key>/staged/` now. `segments` (group -> segments in
        all) is filled from the listing (`groups.json`) once it is there; {} before."""
        prefix = f"runs/{run_key}/staged/"
        if not segments:
            try:
                obj = self.s3.get_object(Bucket=self.ep["bucket"], Key=prefix + "groups.json")
            except self.s3.exceptions.NoSuchKey:
                return {}
            listing = json.loads(obj["Body"].read())
            segments.update({g["group"]: len(g["segments"]) for g in listing["groups"]})
        committed: Counter = Counter()
        done = set()
        for o in self._keys(prefix):
            parts = o["Key"][len(prefix):].split("/")  # g00000/s00003/commit.json, g00000/group.json
            if not parts[0].startswith("g") or not parts[0][1:].isdigit():
                continue
            group = int(parts[0][1:])
            if parts[1:] == ["group.json"]:
                done.add(group)
            elif len(parts) == 3 and parts[2] == "commit.json":
                committed[group] += 1
        return {g: kills.GroupStage(committed[g], n, g in done) for g, n in segments.items()}

    def commits(self, run_key: str, group: int) -> dict[str, tuple[str, str]]:
        """The group's segment commit objects now: key -> (ETag, LastModified)."""
        prefix = f"runs/{run_key}/staged/g{group:05d}/"
        return {o["Key"]: (o["ETag"], o["LastModified"].isoformat()) for o in self._keys(prefix)
                if o["Key"].endswith("/commit.json")}

    def transform_jobs(self, run_key: str) -> list[dict]:
        jobs, token = [], None
        while True:
            kw = {"NameContains": run_key, "MaxResults": 100, **({"NextToken": token} if token else {})}
            page = self.sagemaker.list_transform_jobs(**kw)
            jobs += page["TransformJobSummaries"]
            token = page.get("NextToken")
            if not token:
                return checks.job_summaries_for_run(jobs, run_key)


@dataclass
class RunResult:
    index: int
    plan: kills.KillPlan
    kill: kills.KillRecord | None
    state: str
    seconds: float
    retried: dict[str, int]
    jobs: dict[str, int]
    check: checks.RunCheck
    note: str = ""  # celery: where the retried tries ran
    skip: checks.SegmentSkip | None = None  # stage_group_mid_file: what the retry skipped


class Session:
    def __init__(self, opts: Options, root: Path, endpoints: dict, stack: AirflowStack,
                 state_dir: Path, out=print):
        self.opts, self.root, self.stack, self.state_dir = opts, root, stack, state_dir
        self.services = Services(endpoints)
        self.out = out
        self.rng = random.Random(opts.seed)
        self.estimates = dict(kills.PRIOR_SECONDS)
        self.input = root / "input.jsonl"
        self.expected = write_input(self.input, opts.records,
                                    Path(__file__).resolve().parents[2] / "include" / "sample" / "documents.jsonl")
        self.input_files = root / "input-files"  # the same lines, for stage_group_mid_file
        self.file_sizes = split_input(self.input, self.input_files, opts.stage_files)

    # -- faults -----------------------------------------------------------------------------
    def _set_faults(self, plan: kills.KillPlan) -> None:
        from devstack import faults

        rules = [{"service": "opensearch", "path_regex": r"/_bulk$", "count": 1_000_000,
                  "latency_ms": self.opts.bulk_latency_ms}]
        if plan.mode == "batch_predict_submit":
            rules.append({"service": "opensearch", "path_regex": r"/_batch_predict$", "count": 1,
                          "latency_ms": self.opts.submit_latency_ms})
        faults.set_faults(self.state_dir, http=rules)

    def _fault_counts(self) -> tuple[int, bool]:
        """(bulk requests begun this run, whether the held _batch_predict has arrived)."""
        from devstack import faults

        rules = faults.current(self.state_dir).get("http", [])
        bulk = next((1_000_000 - r["count"] for r in rules if "_bulk" in r["path_regex"]), 0)
        submit = any("_batch_predict" in r["path_regex"] and r["count"] == 0 for r in rules)
        return bulk, submit

    # -- one run ----------------------------------------------------------------------------
    def run_one(self, i: int) -> RunResult:
        from batchvec.plan.naming import run_key as make_run_key

        opts = self.opts
        plan = kills.choose(self.rng, opts.modes, i, opts.executor)
        run_id = f"chaos-{i:03d}"
        index = f"chaos-{i:03d}"
        self._set_faults(plan)
        per_lane = math.ceil(len(self.expected) / opts.shards / LANES / opts.bulk_max_actions)
        watcher = kills.Watcher(
            plan=plan, kill_process=procs.sigkill, kill_triggerer=self._restart_triggerer,
            estimates=self.estimates,
            bulk_window=0.9 * per_lane * opts.bulk_latency_ms / 1000,
            submit_window=0.85 * opts.submit_latency_ms / 1000,
            kill_worker=self._kill_worker if opts.executor == "celery" else None)
        key = make_run_key("batch_embeddings", run_id)
        mid_group = plan.mode == "stage_group_mid_file"
        per_job = -(-opts.records // max(1, opts.job_groups))
        if mid_group:
            conf = run_conf(i, self.input_files, index, opts.shards,
                            staging_conf(self.file_sizes, opts.stage_groups), per_job)
        else:
            conf = run_conf(i, self.input, index, opts.shards, records_per_job=per_job)
        segments: dict[int, int] = {}
        before: dict[str, tuple[str, str]] | None = None  # the killed group's commits then
        started = time.monotonic()
        self.stack.trigger(run_id, conf)
        kill_key = None
        kill, state, tis, last_rest = None, "queued", {}, 0.0
        seen_tis: dict[str, dict] = {}
        lives: dict[tuple[str, int], list[float]] = {}  # (ti id, pid) -> first, last seen
        while time.monotonic() - started < opts.run_timeout:
            now = time.monotonic()
            if now - last_rest >= 0.5:
                state = self.stack.dag_run(run_id)["state"]
                tis = {t["id"]: t for t in self.stack.task_instances(run_id)}
                seen_tis.update(tis)
                last_rest = now
                if state in ("success", "failed"):
                    break
            workers = procs.task_workers(self.stack.stack_id, str(self.root))
            for ti_id, proc in workers.items():
                lives.setdefault((ti_id, proc.pid), [now, now])[1] = now
            if kill is None:
                bulk, submit = self._fault_counts()
                saved = (self.services.checkpoints(key)
                         if plan.mode == "index_shard_checkpoint" else 0)
                staged = self.services.staged_groups(key, segments) if mid_group else None
                kill = watcher.tick(tis, workers, bulk_started=bulk, submit_in_flight=submit,
                                    checkpoints=saved, staged=staged)
                if kill is not None:
                    kill_key = kill.process_key
                    if mid_group and not watcher.fallback:  # the process is dead: what it left
                        before = self.services.commits(key, seen_tis[kill_key[0]]["map_index"])
            time.sleep(0.1)
        else:
            state = f"timeout after {opts.run_timeout:.0f}s"
        seconds = time.monotonic() - started
        final = self.stack.task_instances(run_id)
        if kill is not None:
            lives.pop(kill_key, None)
        self._learn(lives, seen_tis)
        retried = {_label(t): t["try_number"] for t in final if (t["try_number"] or 0) > 1}
        note = self._celery_note(run_id, final) if opts.executor == "celery" else ""
        jobs = self.services.transform_jobs(key)
        check = self._check(index, key, jobs)
        skip = None
        if before is not None:
            skip = self._segment_skip(run_id, key, seen_tis[kill_key[0]]["map_index"],
                                      kill.try_number or 1, before)
            check = check.add(skip.check())
        if state != "success":
            check.problems.append(f"run ended {state}: " + ", ".join(
                f"{_label(t)}={t['state']}" for t in final if t["state"] != "success"))
        return RunResult(i, plan, kill, state, seconds, retried,
                         dict(Counter(j["TransformJobStatus"] for j in jobs)), check, note,
                         skip)

    def _segment_skip(self, run_id: str, key: str, group: int, killed_try: int,
                      before: dict[str, tuple[str, str]]) -> checks.SegmentSkip:
        """What the retry of a group killed mid-way did with the dead try's commits: from S3
        (each commit.json's ETag and LastModified) and the retry's log (stage_group logs each
        segment it skips)."""
        return checks.SegmentSkip(group, before, self.services.commits(key, group),
                                  self._log_count(run_id, "stage_group", group, killed_try + 1,
                                                  "committed by an earlier try"))

    def _log_count(self, run_id: str, task_id: str, map_index: int, attempt: int,
                   text: str) -> int | None:
        """Lines holding `text` in one try's task log, None when there is no such log."""
        name = (f"dag_id=batch_embeddings/run_id={run_id}/task_id={task_id}/"
                f"map_index={map_index}/attempt={attempt}.log")
        homes = [self.stack.home, *sorted(self.stack.root.glob("workers/*/home"))]  # celery
        for log in (home / "logs" / name for home in homes):
            if log.exists():
                return sum(text in line for line in log.read_text(errors="replace").splitlines())
        return None

    def _check(self, index: str, key: str, jobs: list[dict]) -> checks.RunCheck:
        exp = self.expected
        try:
            ids, count = self.services.index_ids(index, len(exp) + 100)
        except requests.RequestException as exc:
            ids, count = [], 0
            note = checks.RunCheck(problems=[f"index {index} unreadable: {exc}"])
        else:
            note = checks.RunCheck()
        total = note.add(checks.check_index(exp, ids, count))
        total = total.add(checks.check_report(self.services.report(key), records_in=len(exp) + 2,
                                              accepted=len(exp), rejected=2))
        total = total.add(checks.check_jobs(jobs))
        for kind in ML_KINDS:
            total = total.add(checks.check_unique_names(kind, self.services.ml_names(kind)))
        return total

    def _learn(self, lives: dict[tuple[str, int], list[float]], tis: dict[str, dict]) -> None:
        """Update how long each task's process lives (the window of a `task` kill). The second
        process of one batch_predict try is the resumption after the deferral."""
        counted: Counter = Counter()
        for (ti_id, _pid), (first, last) in sorted(lives.items(), key=lambda kv: kv[1][0]):
            task = tis.get(ti_id, {}).get("task_id")
            if task is None:
                continue
            counted[ti_id] += 1
            if task == "batch_predict" and counted[ti_id] > 1:
                task = "batch_predict_resume"
            old = self.estimates.get(task, kills.PRIOR_SECONDS.get(task, 3.0))
            self.estimates[task] = 0.5 * old + 0.5 * max(last - first, 0.2)

    def _kill_worker(self, proc) -> str:
        name = self.stack.worker_of(proc.pid)
        if name is None:
            return ""
        return f"{name} ({self.stack.kill_worker(name)} processes)"

    def _celery_note(self, run_id: str, final: list[dict]) -> str:
        """Which worker ran each try of a retried task; then a killed worker is started again
        (as systemd or k8s would) so that the next run has two."""
        hosts = []
        for t in final:
            if (t["try_number"] or 0) > 1:
                tries = self.stack.tries(run_id, t["task_id"], t.get("map_index", -1))
                hosts.append(f"{_label(t)} on " + " -> ".join(
                    str(x.get("hostname") or "?") for x in sorted(tries, key=lambda x: x["try_number"])))
        restarted = self.stack.restart_dead_workers()
        return "; ".join(hosts + ([f"restarted {', '.join(restarted)}"] if restarted else []))

    def _restart_triggerer(self) -> None:
        self.stack.kill_component("triggerer")
        self.stack.start_component("triggerer")

    # -- the session ------------------------------------------------------------------------
    def run_all(self) -> tuple[list[RunResult], checks.RunCheck]:
        results, total = [], checks.RunCheck()
        for i in range(1, self.opts.runs + 1):
            res = self.run_one(i)
            results.append(res)
            total = total.add(res.check)
            self.out(describe(res, self.opts.runs))
        return results, total


def _label(ti: dict) -> str:
    return ti["task_id"] + (f"[{ti['map_index']}]" if ti.get("map_index", -1) >= 0 else "")


def describe(res: RunResult, runs: int) -> str:
    k = res.kill
    killed = (f"killed {k.target}" + (f" try {k.try_number}" if k.try_number else "")
              + f" at {k.at:.1f}s ({k.detail})") if k else "no kill landed (the target ended first)"
    if k and k.try_number and k.target not in res.retried:
        killed += " (no retry followed: the try had already finished its work)"
    retried = ", ".join(f"{t} x{n}" for t, n in sorted(res.retried.items())) or "none"
    c = res.check
    line = (f"chaos: run {res.index}/{runs} [{res.plan.describe()}] {killed} -> {res.state} in "
            f"{res.seconds:.0f}s; tries: {retried}; jobs: {res.jobs}; "
            f"lost={c.lost} duplicated={c.duplicated} orphan_jobs={c.orphan_jobs}")
    if res.skip is not None:
        line += f"\n  {res.skip.describe()}"
    if res.note:
        line += f"\n  workers: {res.note}"
    if c.problems:
        line += "\n  problems: " + "; ".join(c.problems)
    return line


def summary(results: list[RunResult], seconds: float) -> list[str]:
    targets = Counter((r.kill.target.split("[")[0] if r.kill else "none") for r in results)
    modes = Counter(r.plan.describe() for r in results)
    ok = sum(r.state == "success" for r in results)
    landed = sum(r.kill is not None for r in results)
    lines = [f"chaos: kill plans: {dict(sorted(modes.items()))}",
             f"chaos: killed: {dict(sorted(targets.items()))}; kills landed in {landed} of "
             f"{len(results)} runs"]
    skips = [r.skip for r in results if r.skip is not None]
    if skips:
        lines.append(f"chaos: stage_group killed mid-group in {len(skips)} runs: committed "
                     f"{[s.committed for s in skips]} segments, the retries skipped "
                     f"{[s.logged for s in skips]}, commit.json unchanged "
                     f"{[s.unchanged for s in skips]}")
    missed = sum(r.plan.mode == "stage_group_mid_file" and r.skip is None for r in results)
    if missed:
        lines.append(f"chaos: stage_group_mid_file missed its moment in {missed} runs "
                     "(the fallback kill is on their lines)")
    return lines + [f"chaos: {len(results)} runs in {seconds:.0f}s "
                    f"({seconds / max(len(results), 1):.0f}s per run); {ok} succeeded"]
