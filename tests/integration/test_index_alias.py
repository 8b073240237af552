"""The DAG's index name as an alias (batchvec.index.aliases), on the devstack's OpenSearch: one
run builds a model's new index while the others wait, the alias moves in one step, and the
old index stays for a rollback until it expires."""


from __future__ import annotations

import json
import threading
import uuid
from datetime import timedelta

import orjson
import pytest

from batchvec.hooks.opensearch import OpenSearchDomainHook
from batchvec.index import aliases, load_settings
from batchvec.index.aliases import AliasMoved, Target
from tests.helpers.alias_helpers import IDENT

pytestmark = [pytest.mark.devstack, pytest.mark.airflow]


@pytest.fixture
def hook(airflow_env) -> OpenSearchDomainHook:
    return OpenSearchDomainHook()


@pytest.fixture
def alias() -> str:
    return f"al-{uuid.uuid4().hex[:10]}"


def make_index(hook: OpenSearchDomainHook, name: str, docs: int = 0, *, meta: dict | None = None,
               settings: dict | None = None, properties: dict | None = None) -> str:
    mappings = {"properties": properties or {"n": {"type": "integer"}}}
    if meta:
        mappings["_meta"] = meta
    hook.create_index(name, {"mappings": mappings, "settings": {"index": {
        "number_of_shards": 1, "number_of_replicas": 0, **(settings or {})}}})
    if docs:
        lines = []
        for i in range(docs):
            lines += [{"index": {"_index": name, "_id": str(i)}}, {"n": i}]
        hook.bulk(b"".join(orjson.dumps(line) + b"\n" for line in lines))
        hook.refresh(name)
    return name


def physical(alias: str, ident: str = IDENT, dim: int = 3) -> str:
    return aliases.physical_index_name(alias, ident, dim)


def point(hook: OpenSearchDomainHook, alias: str, index: str) -> None:
    hook.update_aliases([{"add": {"index": index, "alias": alias}}])


def marks(hook: OpenSearchDomainHook, index: str) -> dict:
    return hook.get_mapping_meta(index).get("batchvec", {})


# -- resolve -----------------------------------------------------------------------------------
def test_resolve_none_alias_legacy_and_several(hook, alias):
    new, old = physical(alias), physical(alias, "old")
    assert aliases.resolve(hook, alias, new) == Target(alias, new, "build", None)
    make_index(hook, old)
    point(hook, alias, old)
    assert aliases.resolve(hook, alias, new) == Target(alias, new, "build", old)
    assert aliases.resolve(hook, alias, old) == Target(alias, old, "incremental", old)
    make_index(hook, new)
    point(hook, alias, new)
    with pytest.raises(ValueError, match=f"{new}.*{old}|{old}.*{new}"):
        aliases.resolve(hook, alias, new)
    concrete = make_index(hook, f"{alias}-concrete")
    assert aliases.resolve(hook, concrete, physical(concrete)) == Target(
        concrete, concrete, "legacy", concrete)


# -- build lease -------------------------------------------------------------------------------
def test_one_run_holds_the_build_lease_and_retries_keep_it(hook, alias):
    new = physical(alias)
    assert aliases.acquire_build(hook, new, "run-a") is None
    assert aliases.acquire_build(hook, new, "run-b") == "run-a"
    assert aliases.acquire_build(hook, new, "run-a") is None  # a retry of run-a
    assert aliases.acquire_build(hook, physical(alias, "other"), "run-b") is None
    assert aliases.release_build(hook, new, "run-b") is False  # not b's
    assert aliases.acquire_build(hook, new, "run-b") == "run-a"
    assert aliases.release_build(hook, new, "run-a") is True
    assert aliases.release_build(hook, new, "run-a") is False  # a retry: nothing left
    assert aliases.acquire_build(hook, new, "run-b") is None


def test_a_stale_build_lease_is_taken_over(hook, alias, monkeypatch, caplog):
    new = physical(alias)
    assert aliases.acquire_build(hook, new, "run-dead") is None
    monkeypatch.setattr(load_settings, "_lease_ttl", lambda: timedelta(0))
    assert aliases.acquire_build(hook, new, "run-b") is None
    assert "run-dead" in caplog.text and "takes over" in caplog.text
    monkeypatch.undo()
    assert aliases.acquire_build(hook, new, "run-dead") == "run-b"
    assert aliases.release_build(hook, new, "run-dead") is False


# -- await_build -------------------------------------------------------------------------------
def _await_in_thread(hook, alias, new, run_key, **kwargs):
    waiting, result = threading.Event(), {}
    said: list[str] = []

    def say(msg: str) -> None:
        said.append(msg)
        waiting.set()

    def run() -> None:
        try:
            result["target"] = aliases.await_build(OpenSearchDomainHook(), alias, new, run_key,
                                                       poll_s=0.05, say=say, **kwargs)
        except BaseException as exc:  # noqa: BLE001 - asserted by the test
            result["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    return thread, waiting, result, said


def test_await_build_waits_for_the_builder_then_writes_incrementally(hook, alias):
    old, new = make_index(hook, physical(alias, "old"), 3), make_index(hook, physical(alias))
    point(hook, alias, old)
    assert aliases.await_build(hook, alias, new, "run-a", timeout_s=5) == Target(
        alias, new, "build", old)  # run-a builds
    thread, waiting, result, said = _await_in_thread(hook, alias, new, "run-b", timeout_s=60)
    assert waiting.wait(20), "run-b never said it waits"
    assert thread.is_alive() and "run-a" in said[0]
    aliases.switch(hook, alias, new, old)
    aliases.release_build(hook, new, "run-a")
    thread.join(30)
    assert result == {"target": Target(alias, new, "incremental", new)}
    assert aliases.acquire_build(hook, new, "run-c") is None  # run-b left no lease


def test_await_build_takes_over_a_build_released_without_a_switch(hook, alias):
    new = physical(alias)
    assert aliases.acquire_build(hook, new, "run-a") is None
    thread, waiting, result, _ = _await_in_thread(hook, alias, new, "run-b", timeout_s=60)
    assert waiting.wait(20)
    aliases.release_build(hook, new, "run-a")  # run-a failed
    thread.join(30)
    assert result == {"target": Target(alias, new, "build", None)}
    assert aliases.acquire_build(hook, new, "run-a") == "run-b"


def test_await_build_gives_up_naming_the_holder(hook, alias):
    new = physical(alias)
    aliases.acquire_build(hook, new, "run-a")
    with pytest.raises(TimeoutError, match="run-a"):
        aliases.await_build(hook, alias, new, "run-b", timeout_s=0.3, poll_s=0.05)


# -- switch ------------------------------------------------------------------------------------
def test_switch_moves_the_alias_marks_both_and_is_idempotent(hook, alias):
    old = make_index(hook, physical(alias, "old"), 3)
    new = make_index(hook, physical(alias), 5, meta={"owner": "search-team"})
    first = aliases.switch(hook, alias, old, None)  # no alias yet
    assert first == {"moved": True, "alias": alias, "from": None, "to": old}
    assert aliases.switch(hook, alias, new, old)["moved"] is True
    assert sorted(hook.get_alias(alias)) == [new] and hook.count(alias) == 5
    retired_mark, serving = marks(hook, old), marks(hook, new)
    assert retired_mark["successor"] == new and retired_mark["retired_at"]
    assert serving["alias"] == alias and serving["serving_since"]
    assert hook.get_mapping_meta(new)["owner"] == "search-team"  # the rest of _meta kept
    again = aliases.switch(hook, alias, new, old)  # a retry of the task
    assert again == {"moved": False, "alias": alias, "from": old, "to": new}
    assert marks(hook, old) == retired_mark and marks(hook, new) == serving
    assert hook.get_mapping(alias)["_meta"]["batchvec"] == serving  # the hook reads via alias
    assert hook.get_settings(alias)["number_of_shards"] == "1"


def test_switch_refuses_when_the_alias_moved_meanwhile(hook, alias, monkeypatch):
    a, b, c = (make_index(hook, physical(alias, x)) for x in ("aaa", "bbb", "ccc"))
    point(hook, alias, b)  # another run switched to b
    with pytest.raises(AliasMoved, match=b):
        aliases.switch(hook, alias, c, a)
    with pytest.raises(AliasMoved, match=b):
        aliases.switch(hook, alias, c, None)
    # The move itself is conditional: even when our read of the alias is stale, the
    # _aliases call refuses, and the alias is left as the other run set it.
    real = hook.get_alias
    stale = iter([{a: {}}])
    monkeypatch.setattr(hook, "get_alias", lambda name: next(stale, None) or real(name))
    with pytest.raises(AliasMoved, match=b):
        aliases.switch(hook, alias, c, a)
    assert sorted(real(alias)) == [b] and "retired_at" not in marks(hook, a)


def test_searches_through_the_alias_never_find_it_empty_while_it_moves(hook, alias):
    old = make_index(hook, physical(alias, "old"), 3)
    new = make_index(hook, physical(alias), 5)
    aliases.switch(hook, alias, old, None)
    stop, counts, errors = threading.Event(), [], []

    def search() -> None:
        reader = OpenSearchDomainHook()
        while not stop.is_set():
            try:
                counts.append(reader.count(alias))
            except Exception as exc:  # noqa: BLE001 - asserted below
                errors.append(exc)

    thread = threading.Thread(target=search)
    thread.start()
    try:
        for _ in range(3):
            aliases.switch(hook, alias, new, old)
            aliases.rollback(hook, alias)
    finally:
        stop.set()
        thread.join(10)
    assert not errors and counts and set(counts) <= {3, 5}


# -- retired indices ---------------------------------------------------------------------------
def test_drop_expired_keeps_the_served_the_recent_and_the_unmarked(hook, alias):
    now = load_settings._now()
    ago = {d: (now - timedelta(days=d)).isoformat() for d in (1, 10, 20)}
    served = make_index(hook, physical(alias, "srv"))
    point(hook, alias, served)
    aliases._mark(hook, served, retired_at=ago[20])  # a stale mark: still never dropped
    old = make_index(hook, physical(alias, "old"), meta={"batchvec": {"retired_at": ago[10]}})
    recent = make_index(hook, physical(alias, "rec"), meta={"batchvec": {"retired_at": ago[1]}})
    building = make_index(hook, physical(alias, "bld"))  # never served: no mark
    rebuilding = make_index(hook, physical(alias, "reb"),
                            meta={"batchvec": {"retired_at": ago[20]}})
    aliases.acquire_build(hook, rebuilding, "run-revert")  # the model went back to it
    other = make_index(hook, physical(f"{alias}--x", "oth"),  # alias "<alias>--x"'s index
                       meta={"batchvec": {"retired_at": ago[20]}})
    listed = aliases.retired(hook, alias)
    assert [r["index"] for r in listed] == [recent, old, rebuilding, building]
    assert listed[-1]["retired_at"] is None
    assert aliases.drop_expired(hook, alias, keep_days=7, now=now) == [old]
    for kept in (served, recent, building, rebuilding, other):
        assert hook.index_exists(kept), kept
    assert not hook.index_exists(old)
    assert aliases.drop_expired(hook, alias, keep_days=7, now=now) == []


def test_rollback_moves_back_to_the_last_retired(hook, alias):
    old, new = make_index(hook, physical(alias, "old"), 3), make_index(hook, physical(alias), 5)
    aliases.switch(hook, alias, old, None)
    with pytest.raises(ValueError, match="no retired index"):
        aliases.rollback(hook, alias)
    aliases.switch(hook, alias, new, old)
    assert aliases.rollback(hook, alias) == {"moved": True, "alias": alias, "from": new,
                                                 "to": old}
    assert sorted(hook.get_alias(alias)) == [old] and hook.count(alias) == 3
    assert marks(hook, new)["successor"] == old and "retired_at" not in marks(hook, old)
    assert [r["index"] for r in aliases.retired(hook, alias)] == [new]


# -- migrate and the command line --------------------------------------------------------------
def test_migrate_turns_a_concrete_index_into_an_alias_of_a_copy(hook, alias, capsys):
    props = {"n": {"type": "integer"}, "v": {"type": "knn_vector", "dimension": 3, "method": {
        "name": "hnsw", "engine": "lucene", "space_type": "l2"}}}
    make_index(hook, alias, 4, meta={"owner": "search-team"}, properties=props,
               settings={"knn": True, "refresh_interval": "5s"})
    before = hook.get_mapping(alias)
    result = aliases.migrate(hook, alias)
    dest = f"{alias}{aliases.LEGACY_SUFFIX}"
    assert result == {"migrated": True, "alias": alias, "index": dest, "count": 4}
    assert sorted(hook.get_alias(alias)) == [dest] and hook.count(alias) == 4
    after = hook.get_mapping(alias)
    assert after["properties"] == before["properties"]
    assert after["_meta"]["owner"] == "search-team" and marks(hook, dest)["migrated_from"] == alias
    settings = hook.get_settings(alias)
    assert settings["refresh_interval"] == "5s" and settings["knn"] == "true"
    assert "blocks" not in settings  # the copy takes writes
    hook.request("PUT", f"/{alias}/_doc/new", {"n": 9}, params={"refresh": "true"})
    assert hook.count(alias) == 5
    assert aliases.migrate(hook, alias) == {"migrated": False, "alias": alias,
                                                "index": dest, "count": 5}
    assert aliases.resolve(hook, alias, physical(alias)) == Target(
        alias, physical(alias), "build", dest)
    assert aliases.main(["status", "--alias", alias]) == 0
    assert json.loads(capsys.readouterr().out) == {"alias": alias, "serves": [dest],
                                                   "retired": []}


def test_migrate_refuses_an_alias_of_something_else(hook, alias):
    point(hook, alias, make_index(hook, physical(alias)))
    with pytest.raises(ValueError, match="already an alias"):
        aliases.migrate(hook, alias)
    with pytest.raises(ValueError, match="no index"):
        aliases.migrate(hook, f"{alias}-missing")


def test_command_line_rollback_and_drop_expired(hook, alias, capsys):
    old, new = make_index(hook, physical(alias, "old")), make_index(hook, physical(alias))
    aliases.switch(hook, alias, old, None)
    aliases.switch(hook, alias, new, old)
    assert aliases.main(["rollback", "--alias", alias]) == 0
    assert json.loads(capsys.readouterr().out)["to"] == old
    assert aliases.main(["drop-expired", "--alias", alias, "--keep-days", "0"]) == 0
    assert json.loads(capsys.readouterr().out) == {"dropped": [new]}
    with pytest.raises(SystemExit):
        aliases.main(["drop-expired", "--alias", alias])

