"""Run accounting: every input record is created, updated, unchanged, superseded, rejected or
failed, per shard and in total; deletes (a full sync) are counted beside them.

Pure data and arithmetic; the operators fill it in, write ``to_dict()`` to S3 as JSON and
``render_table()`` to the task log.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

__all__ = ["RunReport", "ShardReport", "render_table"]

TOTAL = "TOTAL"


def _sum_counts(dicts: Iterable[Mapping[str, int]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for counts in dicts:
        for key, value in counts.items():
            out[key] = out.get(key, 0) + int(value)
    return out


@dataclass
class ShardReport:
    """One input shard: records staged vs. what became of them (reasons -> counts).

    ``unchanged``: the index already holds the record as it is (not sent to the model);
    ``superseded``: the index holds a newer version of it (a later day), which stands.
    ``duplicates`` is informational, not a fate: of the indexed records (created +
    updated), how many were superseded by a later record with the same id in this run (last
    wins), so the index holds ``indexed - duplicates`` of this run's documents.
    ``deleted`` (a full sync) counts documents removed, which are not input records.
    """

    shard: str
    records_in: int
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    superseded: int = 0
    duplicates: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    failed: dict[str, int] = field(default_factory=dict)
    deleted: int = 0
    delete_superseded: int = 0
    delete_failed: int = 0

    @property
    def indexed(self) -> int:
        return self.created + self.updated

    @property
    def rejected_total(self) -> int:
        return sum(self.rejected.values())

    @property
    def failed_total(self) -> int:
        return sum(self.failed.values())

    @property
    def accounted(self) -> int:
        return (self.indexed + self.unchanged + self.superseded + self.rejected_total
                + self.failed_total)

    @property
    def missing(self) -> int:
        """Records that vanished (> 0) or were counted twice (< 0)."""
        return self.records_in - self.accounted

    @property
    def balanced(self) -> bool:
        return self.missing == 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "shard": self.shard,
            "records_in": self.records_in,
            "created": self.created,
            "updated": self.updated,
            "unchanged": self.unchanged,
            "superseded": self.superseded,
            "duplicates": self.duplicates,
            "rejected": dict(self.rejected),
            "failed": dict(self.failed),
            "deleted": self.deleted,
            "delete_superseded": self.delete_superseded,
            "delete_failed": self.delete_failed,
            "rejected_total": self.rejected_total,
            "failed_total": self.failed_total,
            "balanced": self.balanced,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ShardReport:
        return cls(
            shard=str(data["shard"]),
            records_in=int(data["records_in"]),
            created=int(data.get("created", 0)),
            updated=int(data.get("updated", 0)),
            unchanged=int(data.get("unchanged", 0)),
            superseded=int(data.get("superseded", 0)),
            duplicates=int(data.get("duplicates", 0)),
            rejected={str(k): int(v) for k, v in (data.get("rejected") or {}).items()},
            failed={str(k): int(v) for k, v in (data.get("failed") or {}).items()},
            deleted=int(data.get("deleted", 0)),
            delete_superseded=int(data.get("delete_superseded", 0)),
            delete_failed=int(data.get("delete_failed", 0)),
        )


@dataclass
class RunReport:
    """One pipeline run. ``task_id`` is the ML Commons batch-predict task id."""

    run_key: str
    dag_id: str
    run_id: str
    index: str  # index_name: the alias
    physical_index: str | None = None  # the index this run wrote
    alias_moved: bool = False  # a model switch's build went live in this run
    sagemaker_records: int = 0  # records sent to the model: the figure that costs money
    model_name: str | None = None  # ML Commons model (its connector inside it)
    model_id: str | None = None
    task_id: str | None = None
    transform_job_name: str | None = None
    stage_seconds: dict[str, float] = field(default_factory=dict)
    shards: list[ShardReport] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)  # JSON-safe odds and ends

    @property
    def totals(self) -> ShardReport:
        return ShardReport(
            shard=TOTAL,
            records_in=sum(s.records_in for s in self.shards),
            created=sum(s.created for s in self.shards),
            updated=sum(s.updated for s in self.shards),
            unchanged=sum(s.unchanged for s in self.shards),
            superseded=sum(s.superseded for s in self.shards),
            duplicates=sum(s.duplicates for s in self.shards),
            rejected=_sum_counts(s.rejected for s in self.shards),
            failed=_sum_counts(s.failed for s in self.shards),
            deleted=sum(s.deleted for s in self.shards),
            delete_superseded=sum(s.delete_superseded for s in self.shards),
            delete_failed=sum(s.delete_failed for s in self.shards),
        )

    @property
    def unbalanced(self) -> list[ShardReport]:
        return [s for s in self.shards if not s.balanced]

    @property
    def balanced(self) -> bool:
        # Per shard, so a lost record in one shard cannot hide behind a duplicate in another.
        return not self.unbalanced

    @property
    def reject_ratio(self) -> float:
        """Share of input records rejected as bad input (what `max_reject_ratio` bounds);
        failed records are not bad input and fail a run on their own. 0.0 for an empty run."""
        t = self.totals
        return t.rejected_total / t.records_in if t.records_in else 0.0

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            f.name: getattr(self, f.name)
            for f in fields(self)
            if f.name not in ("shards", "stage_seconds", "extra")
        }
        data["stage_seconds"] = {k: round(float(v), 3) for k, v in self.stage_seconds.items()}
        data["shards"] = [s.to_dict() for s in self.shards]
        data["totals"] = self.totals.to_dict()
        data["balanced"] = self.balanced
        data["reject_ratio"] = self.reject_ratio
        data["extra"] = dict(self.extra)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunReport:
        """Inverse of to_dict(); derived keys (totals, balanced, ratio) are recomputed."""
        plain = {
            f.name: data.get(f.name)
            for f in fields(cls)
            if f.name not in ("shards", "stage_seconds", "extra") and f.name in data
        }
        return cls(
            **plain,
            stage_seconds={str(k): float(v) for k, v in (data.get("stage_seconds") or {}).items()},
            shards=[ShardReport.from_dict(s) for s in data.get("shards") or []],
            extra=dict(data.get("extra") or {}),
        )


def _reasons(counts: Mapping[str, int]) -> str:
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    return ", ".join(f"{k}={v:,}" for k, v in ranked)


def _row(shard: ShardReport) -> list[str]:
    status = (
        "ok"
        if shard.balanced
        else (f"MISSING {shard.missing:,}" if shard.missing > 0 else f"EXTRA {-shard.missing:,}")
    )
    return [
        shard.shard,
        f"{shard.records_in:,}",
        f"{shard.created:,}",
        f"{shard.updated:,}",
        f"{shard.unchanged:,}",
        f"{shard.superseded:,}",
        f"{shard.duplicates:,}",
        f"{shard.rejected_total:,}",
        f"{shard.failed_total:,}",
        f"{shard.deleted:,}",
        status,
    ]


def _format_rows(rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    out = []
    for row in rows:
        cells = [row[0].ljust(widths[0])]
        cells += [c.rjust(w) for c, w in zip(row[1:-1], widths[1:-1], strict=True)]
        cells.append(row[-1])
        out.append("  ".join(cells).rstrip())
    return out


def render_table(report: RunReport, *, max_shards: int = 50) -> str:
    """Plain-text summary for task logs: metadata, shard rows, total, reasons, timings.

    Beyond ``max_shards`` rows, balanced shards are elided; unbalanced ones always show.
    """
    meta = [
        ("run", report.run_key),
        ("dag", report.dag_id),
        ("run_id", report.run_id),
        ("index", report.index),
        ("physical", report.physical_index),
        ("alias_moved", "yes" if report.alias_moved else None),
        ("sent_to_model", f"{report.sagemaker_records:,} records"),
        ("model", report.model_id),
        ("model_name", report.model_name),
        ("ml_task", report.task_id),
        ("transform_job", report.transform_job_name),
    ]
    lines = [f"{k:<14} {v}" for k, v in meta if v]

    shards = report.shards
    shown = shards
    if len(shards) > max_shards:
        room = max(0, max_shards - len(report.unbalanced))
        shown = []
        for s in shards:  # keep input order; unbalanced shards always make the cut
            if not s.balanced or room > 0:
                room -= s.balanced
                shown.append(s)
    totals = report.totals
    rows = [["shard", "records_in", "created", "updated", "unchanged", "superseded",
             "duplicates", "rejected", "failed", "deleted", "balance"]]
    rows += [_row(s) for s in shown]
    rows.append(_row(totals))
    table = _format_rows(rows)
    rule = "-" * max(len(line) for line in table)
    lines += ["", table[0], rule, *table[1:-1]]
    if len(shown) < len(shards):
        lines.append(f"... {len(shards) - len(shown):,} more balanced shards not shown")
    lines += [rule, table[-1]]

    if totals.duplicates:
        lines.append(f"duplicates: {totals.duplicates:,} indexed records superseded by a later "
                     "record with the same id (last wins)")
    if totals.rejected:
        lines.append(f"rejected: {_reasons(totals.rejected)}")
    if totals.failed:
        lines.append(f"failed:   {_reasons(totals.failed)}")
    lines.append(
        f"reject ratio {report.reject_ratio:.4%}; "
        f"{'balanced' if report.balanced else 'NOT BALANCED'}"
    )

    if report.stage_seconds:
        width = max(len(k) for k in [*report.stage_seconds, "sum"])
        lines += ["", f"{'stage'.ljust(width)}  seconds"]
        lines += [f"{k.ljust(width)}  {v:>9.1f}" for k, v in report.stage_seconds.items()]
        lines.append(f"{'sum'.ljust(width)}  {sum(report.stage_seconds.values()):>9.1f}")
    return "\n".join(lines)
