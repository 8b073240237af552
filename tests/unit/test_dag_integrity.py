"""dags/ as Airflow's DagBag parses it, without services (the unit tier's socket guard holds):
it imports, its schedule, tags, params, retries and shape are the ones the DAG declares, and
the trigger form's defaults pass the DAG's own params schema."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from batchvec.plan import run_plan
from tests.helpers.paths import REPO

DAG_ID = "batch_embeddings"


def parse():
    """Every DAG in dags/, parsed afresh (the DAG file reads BATCHVEC_* at import)."""
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(REPO / "dags"))


@pytest.fixture(scope="module")
def bag():
    return parse()


@pytest.fixture(scope="module")
def dag(bag):
    return bag.dags[DAG_ID]


def test_every_dag_file_imports_and_each_dag_has_an_id_and_tags(bag):
    assert not bag.import_errors, bag.import_errors
    assert DAG_ID in bag.dags, sorted(bag.dags)
    for dag_id, dag in bag.dags.items():
        assert dag_id and dag.dag_id == dag_id
        assert dag.tags and all(isinstance(t, str) and t for t in dag.tags), dag_id
        assert dag.description and dag.doc_md, f"{dag_id}: no description or doc_md"


def test_the_schedule_is_daily_from_a_fixed_start_without_catchup(dag):
    assert set(dag.tags) == {"embeddings", "opensearch", "sagemaker"}
    assert dag.schedule == "@daily"
    assert "0 0 * * *" in repr(dag.timetable)  # midnight, each run one day's partition
    # a fixed, aware start date: a moving one (datetime.now()) would reschedule on each parse
    assert dag.start_date == datetime(2026, 1, 1, tzinfo=UTC)
    # `airflow backfill create` runs past days; the scheduler itself does not catch up
    assert dag.catchup is False
    assert dag.max_active_runs == 4


def test_every_param_has_a_schema_type_and_is_the_plans(dag):
    schema = run_plan.param_schema()
    assert set(dag.params.keys()) == set(schema), "the DAG's params are the plan's params"
    for name in dag.params.keys():
        param = dag.params.get_param(name)
        assert "type" in param.schema or "enum" in param.schema, f"{name}: no type or enum"
        assert "default" not in param.schema, f"{name}: the default is the Param's value"
        expected = {k: v for k, v in schema[name].items() if k not in ("default", "description")}
        assert param.schema == expected, name
        assert param.description == schema[name].get("description"), name


def test_the_defaults_validate_against_the_dags_params_and_plan(dag):
    from airflow.sdk.definitions.param import ParamsDict
    from airflow.sdk.exceptions import ParamValidationError

    resolved = dag.params.validate()  # each Param resolves its default against its schema
    assert resolved == {k: v["default"] for k, v in run_plan.param_schema().items()}
    # The defaults plan a run once a deployment names its model and endpoint: no default
    # contradicts another (the plan's cross-param checks).
    plan = run_plan.resolve_plan({**resolved, "sagemaker_model_name": "m",
                                  "sagemaker_endpoint_name": "e"},
                                 dag_id=DAG_ID, run_id="manual__x", ds="2026-01-02",
                                 region="us-east-1")
    assert plan.input_uri == "s3://batchvec/input/ds=2026-01-02/"
    # ...and the schema is enforced: a value outside it is refused before any task runs.
    for bad in ({"shards": -1}, {"instance_count": 0}, {"max_reject_ratio": 1.5},
                {"space_type": "manhattan"}, {"keep_staging": "yes"}):
        params = ParamsDict(dag.params)  # a copy: the module-scoped DAG stays as parsed
        with pytest.raises(ParamValidationError, match=next(iter(bad))):
            params.update(bad)  # what a run's conf goes through
            params.validate()


def test_every_task_retries_with_the_dags_default_args(dag):
    # "Every task is safe to retry": no task opts out, all back off exponentially.
    assert dag.default_args == {"retries": 2, "retry_delay": timedelta(seconds=30),
                                "retry_exponential_backoff": True}
    for task in dag.tasks:
        assert task.retries == 2, task.task_id
        assert task.retry_delay == timedelta(seconds=30), task.task_id
        assert task.retry_exponential_backoff, task.task_id


def test_the_retry_knob_reaches_every_task(monkeypatch):
    """BATCHVEC_RETRIES / BATCHVEC_RETRY_DELAY (what tests and the chaos harness set)."""
    monkeypatch.setenv("BATCHVEC_RETRIES", "0")
    monkeypatch.setenv("BATCHVEC_RETRY_DELAY", "1")
    bag = parse()
    assert not bag.import_errors, bag.import_errors
    tasks = bag.dags[DAG_ID].tasks
    assert {(t.retries, t.retry_delay) for t in tasks} == {(0, timedelta(seconds=1))}


def test_task_ids_are_unique_and_the_graph_runs_from_plan_to_cleanup(dag):
    from airflow.utils.dag_cycle_tester import check_cycle

    ids = [t.task_id for t in dag.tasks]
    assert len(ids) == len(set(ids)), sorted(ids)
    check_cycle(dag)  # raises on a cycle (DagBag ran it too)
    assert [t.task_id for t in dag.roots] == ["plan"]
    assert [t.task_id for t in dag.leaves] == ["cleanup"]
    order = [t.task_id for t in dag.topological_sort()]
    assert order[0] == "plan" and order[-1] == "cleanup"
    assert order.index("stage") < order.index("batch_predict") < order.index("report")
    assert {"batch_predict", "switch_alias"} <= dag.get_task("report").upstream_task_ids


def test_only_restore_index_and_report_run_after_failures(dag):
    # restore_index puts the index's settings back and report accounts for the run even when
    # shards failed; every other task waits for its upstreams to succeed.
    after_failures = {t.task_id for t in dag.tasks if t.trigger_rule != "all_success"}
    assert after_failures == {"restore_index", "report"}
    assert all(dag.get_task(t).trigger_rule == "all_done" for t in after_failures)
