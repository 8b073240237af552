"""What every task body needs from its Airflow context: the plan it was handed (XCom holds
the plan as a dict), and the day and version a run writes under."""

from __future__ import annotations

from batchvec.plan.run_plan import Plan


def plan_of(data: dict) -> Plan:
    return Plan.from_dict({k: v for k, v in data.items() if k in Plan.__dataclass_fields__})


def run_date(context: dict) -> str:
    """The day a run processes: its logical date, or for manual runs without one, when it ran."""
    return _run_time(context).strftime("%Y-%m-%d")


def _run_time(context: dict):
    return context.get("logical_date") or context["dag_run"].run_after


def run_version(context: dict) -> int:
    """The external version of a run's writes: its logical date in epoch seconds, so a
    backfill's older day never overwrites a newer day's documents (changes.py)."""
    return int(_run_time(context).timestamp())
