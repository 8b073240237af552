"""What the real-Airflow DAG tests share (tests/dags/test_dag_backfill.py and
tests/dags/test_dag_job_groups_live.py)."""

from __future__ import annotations

from chaos.airflow_stack import AirflowStack


def revive(stack: AirflowStack) -> None:
    """Restart a component that died, as a supervisor would: on SQLite (the only database
    here) the scheduler can crash on a write that loses to another process (StaleDataError);
    Airflow picks the runs up again on restart. Production runs on Postgres."""
    for name, proc in list(stack.components.items()):
        if proc.poll() is not None:
            stack.restarts = getattr(stack, "restarts", 0) + 1
            assert stack.restarts <= 5, f"airflow {name} keeps dying: {stack.tail(name)}"
            stack.start_component(name)
