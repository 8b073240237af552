"""The accounting after a killed-and-retried run: pure functions of what the index, the report
and SageMaker hold, so they are unit-tested without any server.

- lost: expected documents missing from the index (or counted failed by the report);
- duplicated: documents in the index beyond the distinct expected ones, records the report
  counts more than once, and more than one transform job (or ML Commons model / model
  group of one name) doing the same work;
- orphan_jobs: transform jobs of the run still InProgress / Stopping after the run ended;

and, after a stage_group killed between its segment commits, that its retry skipped what the
dead try had committed (SegmentSkip).
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field

LIVE_JOB_STATES = ("InProgress", "Stopping")
WORKING_JOB_STATES = ("Completed", *LIVE_JOB_STATES)
_ATTEMPT = re.compile(r"-r\d+$")
RESULT_LINE_KEYS = ("runs", "lost", "duplicated", "orphan_jobs")


@dataclass
class RunCheck:
    lost: int = 0
    duplicated: int = 0
    orphan_jobs: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not (self.lost or self.duplicated or self.orphan_jobs or self.problems)

    def add(self, other: RunCheck) -> RunCheck:
        return RunCheck(self.lost + other.lost, self.duplicated + other.duplicated,
                        self.orphan_jobs + other.orphan_jobs, self.problems + other.problems)


def check_index(expected_ids: set[str], index_ids: list[str], index_count: int) -> RunCheck:
    """`index_ids`: every `_id` a search returned; `index_count`: the index's `_count`."""
    present = set(index_ids)
    out = RunCheck(lost=len(expected_ids - present))
    found = len(present & expected_ids)
    out.duplicated = max(0, max(index_count, len(index_ids)) - found)
    strangers = sorted(present - expected_ids)
    if strangers:
        out.problems.append(f"{len(strangers)} unexpected ids in the index, e.g. {strangers[:3]}")
    if out.lost:
        out.problems.append(f"{out.lost} documents missing, e.g. {sorted(expected_ids - present)[:3]}")
    return out


def check_report(report: dict | None, *, records_in: int, accepted: int, rejected: int) -> RunCheck:
    """The run report must balance and count each record once: created + updated = accepted."""
    if report is None:
        return RunCheck(problems=["no report.json for the run"])
    out = RunCheck()
    totals = report.get("totals", {})
    indexed = totals.get("created", 0) + totals.get("updated", 0)
    failed = totals.get("failed_total", 0)
    if indexed > accepted:
        out.duplicated += indexed - accepted
        out.problems.append(f"report counts {indexed} indexed for {accepted} accepted records")
    if failed:
        out.lost += failed
        out.problems.append(f"report counts {failed} failed records: {totals.get('failed')}")
    if not report.get("balanced"):
        out.problems.append("report does not balance")
    seen = (totals.get("records_in"), indexed + failed, totals.get("rejected_total"))
    if seen != (records_in, accepted, rejected):
        out.problems.append(f"report totals (records_in, indexed+failed, rejected) = {seen}, "
                            f"expected {(records_in, accepted, rejected)}")
    if not (report.get("extra", {}).get("smoke_query") or {}).get("ok"):
        out.problems.append(f"smoke query not ok: {report.get('extra', {}).get('smoke_query')}")
    return out


def job_summaries_for_run(jobs: list[dict], run_key: str) -> list[dict]:
    """The transform jobs a run may have made: `<run_key>` or, one per job group,
    `<run_key>-j<G>`, each with its attempts `-r<n>`."""
    mine = re.compile(re.escape(run_key) + r"(-j\d+)?(-r\d+)?")
    return [job for job in jobs if mine.fullmatch(job["TransformJobName"])]


def check_jobs(jobs: list[dict]) -> RunCheck:
    """`jobs`: this run's ListTransformJobs summaries, after the run ended. Per job group
    (a name without its `-r<n>`): one job did the work, and none is left running."""
    states = Counter(job["TransformJobStatus"] for job in jobs)
    out = RunCheck(orphan_jobs=sum(states[s] for s in LIVE_JOB_STATES))
    if out.orphan_jobs:
        out.problems.append(f"transform jobs still running after the run: {dict(states)}")
    groups: dict[str, list[dict]] = {}
    for job in jobs:
        groups.setdefault(_ATTEMPT.sub("", job["TransformJobName"]), []).append(job)
    for base, group in sorted(groups.items()):
        working = [j for j in group if j["TransformJobStatus"] in WORKING_JOB_STATES]
        out.duplicated += max(0, len(working) - 1)
        if len(working) > 1:
            out.problems.append(f"{len(working)} transform jobs did the work of {base}: "
                                f"{[j['TransformJobName'] for j in group]}")
        done = sum(j["TransformJobStatus"] == "Completed" for j in group)
        if done != 1:
            out.problems.append(f"expected one Completed transform job for {base}, found "
                                f"{dict(Counter(j['TransformJobStatus'] for j in group))}")
    if not groups:
        out.problems.append("no transform job at all")
    return out


def check_unique_names(kind: str, names: list[str]) -> RunCheck:
    """ML Commons models (their connectors inside) and model groups are found-or-created
    by name: one of each name."""
    extra = {name: n for name, n in Counter(names).items() if n > 1}
    out = RunCheck(duplicated=sum(n - 1 for n in extra.values()))
    if extra:
        out.problems.append(f"duplicate {kind}: {extra}")
    return out


@dataclass(frozen=True)
class SegmentSkip:
    """A stage_group killed mid-group, and its retry: `before` / `after`: the group's segment
    commits (key -> (ETag, LastModified)) right after the kill and after the run; `logged`:
    segments the retry's log says an earlier try committed (None: no log of the retry)."""
    group: int
    before: dict[str, tuple[str, str]]
    after: dict[str, tuple[str, str]]
    logged: int | None

    @property
    def committed(self) -> int:
        return len(self.before)

    @property
    def unchanged(self) -> int:
        return sum(self.after.get(k) == v for k, v in self.before.items())

    def check(self) -> RunCheck:
        """Problems unless every commit the dead try left is untouched and the retry skipped
        them all (it may skip one more: a commit whose request landed just after the kill)."""
        out, g = RunCheck(), self.group
        if self.unchanged != self.committed:
            out.problems.append(f"stage_group[{g}]'s retry rewrote or lost "
                                f"{self.committed - self.unchanged} of the {self.committed} "
                                "segment commits the killed try left")
        if self.logged is None:
            out.problems.append(f"no log of stage_group[{g}]'s retry")
        elif self.logged < self.committed:
            out.problems.append(f"stage_group[{g}]'s retry skipped {self.logged} segments, the "
                                f"killed try had committed {self.committed}")
        return out

    def describe(self) -> str:
        return (f"stage_group[{self.group}]: the killed try had committed {self.committed} of "
                f"{len(self.after)} segments; the retry skipped {self.logged} (its log: "
                f"\"committed by an earlier try\"), {self.unchanged} of the {self.committed} "
                f"commit.json unchanged (ETag, LastModified); it staged the other "
                f"{len(self.after) - (self.logged or 0)}")


def result_line(runs: int, total: RunCheck) -> str:
    return f"runs={runs} lost={total.lost} duplicated={total.duplicated} orphan_jobs={total.orphan_jobs}"


def parse_result_line(line: str) -> dict[str, int]:
    parts = dict(item.split("=", 1) for item in line.split())
    if tuple(parts) != RESULT_LINE_KEYS:
        raise ValueError(f"not a chaos result line: {line!r}")
    return {k: int(v) for k, v in parts.items()}
