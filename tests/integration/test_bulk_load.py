"""Overlapping runs on one index share its bulk load (batchvec.index.load_settings), on the devstack's
OpenSearch: whatever the order they enter and leave in, and however they retry, the index
ends with the settings it had before the first of them started."""

from __future__ import annotations

import random
import threading
import uuid

import pytest

from batchvec.hooks.opensearch import OpenSearchDomainHook
from batchvec.index import load_settings

pytestmark = [pytest.mark.devstack, pytest.mark.airflow]

ORIGINAL = {"refresh_interval": "7s", "number_of_replicas": 1}
BULK = {"refresh_interval": "-1", "number_of_replicas": 0}


@pytest.fixture
def index(airflow_env):
    hook = OpenSearchDomainHook()
    name = f"lease-{uuid.uuid4().hex[:10]}"
    hook.create_index(name, {"settings": {"index": {"number_of_shards": 1, **ORIGINAL}}})
    return name


def settings(index: str) -> dict:
    return load_settings.current_settings(OpenSearchDomainHook(), index)


def lease(index: str):
    return OpenSearchDomainHook().get_versioned(load_settings.LEASE_INDEX, index)


def test_the_second_run_does_not_take_the_firsts_bulk_settings_for_the_originals(index):
    hook = OpenSearchDomainHook()
    assert load_settings.enter(hook, index, "run-a") == ORIGINAL
    assert settings(index) == BULK
    assert load_settings.enter(hook, index, "run-b") == ORIGINAL  # not the bulk settings
    assert load_settings.leave(hook, index, "run-a") is None  # b still loading
    assert settings(index) == BULK
    assert load_settings.leave(hook, index, "run-b") == ORIGINAL
    assert settings(index) == ORIGINAL and lease(index) is None


def test_whichever_leaves_last_restores_and_retries_change_nothing(index):
    hook = OpenSearchDomainHook()
    load_settings.enter(hook, index, "run-a")
    load_settings.enter(hook, index, "run-a")  # prepare_index retried
    load_settings.enter(hook, index, "run-b")
    assert sorted(lease(index)[0]["holders"]) == ["run-a", "run-b"]
    assert load_settings.leave(hook, index, "run-b") is None
    assert load_settings.leave(hook, index, "run-b") is None  # restore_index retried
    assert settings(index) == BULK
    assert load_settings.leave(hook, index, "run-a") == ORIGINAL
    assert load_settings.leave(hook, index, "run-a") is None  # nothing left to restore
    assert settings(index) == ORIGINAL


def test_a_run_that_enters_after_the_last_left_reads_the_real_originals(index):
    hook = OpenSearchDomainHook()
    load_settings.enter(hook, index, "run-a")
    load_settings.leave(hook, index, "run-a")
    hook.put_settings(index, {"refresh_interval": "3s"})  # a user changed it in between
    assert load_settings.enter(hook, index, "run-c") == {"refresh_interval": "3s",
                                                     "number_of_replicas": 1}
    load_settings.leave(hook, index, "run-c")
    assert settings(index)["refresh_interval"] == "3s"


def test_many_runs_entering_and_leaving_at_once_leave_the_originals(index):
    errors: list[BaseException] = []

    def one_run(n: int) -> None:
        rng = random.Random(n)
        try:
            hook = OpenSearchDomainHook()
            for _ in range(3):
                load_settings.enter(hook, index, f"run-{n}")
                if rng.random() < 0.5:
                    load_settings.enter(hook, index, f"run-{n}")  # a retry
                load_settings.leave(hook, index, f"run-{n}")
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=one_run, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors, errors
    assert settings(index) == ORIGINAL and lease(index) is None
