"""Physical index names and alias targets, without a node (the alias moves, leases and the
command line against the devstack's OpenSearch are in tests/integration/test_index_alias.py)."""

from __future__ import annotations

import json

import pytest

from batchvec.index import aliases
from batchvec.index.aliases import Target
from batchvec.plan.naming import validate_index_name
from tests.helpers.alias_helpers import IDENT


def test_physical_names_carry_the_model_and_stay_valid_when_the_alias_is_long():
    assert aliases.physical_index_name("docs", IDENT, 384) == "docs--0123456789ab-384d"
    hashed = aliases.physical_index_name("docs", "Model:V2", 384)  # not index-name safe
    assert hashed.startswith("docs--") and hashed.endswith("-384d")
    assert hashed != aliases.physical_index_name("docs", "Model:V3", 384)
    long = "a" * 250
    names = {aliases.physical_index_name(long, i, d) for i in ("x1", IDENT) for d in (3, 4096)}
    assert len(names) == 4
    stems = {n.rsplit("--", 1)[0] for n in names}
    assert len(stems) == 1 and all(validate_index_name(n) for n in names)  # one alias part
    assert stems != {aliases.physical_index_name("a" * 251, IDENT, 3).rsplit("--", 1)[0]}
    assert validate_index_name(aliases.legacy_index_name(long)).endswith("--legacy")
    assert aliases.physical_index_name("docs", IDENT, 0) == "docs--0123456789ab-0d"  # "any"
    for bad in (("Docs", IDENT, 3), ("docs", "", 3), ("docs", IDENT, -1), ("docs", IDENT, True)):
        with pytest.raises(ValueError):
            aliases.physical_index_name(*bad)
    own = aliases._own_name("docs")
    assert own.fullmatch("docs--0123456789ab-384d") and own.fullmatch("docs--legacy")
    assert not own.fullmatch("docs--x--0123456789ab-384d")  # alias "docs--x"'s index


def test_target_round_trips_and_says_whether_it_may_be_serving():
    t = Target("docs", "docs--abc-3d", "build", "docs--old-3d")
    assert Target.from_dict(json.loads(json.dumps(t.to_dict()))) == t
    assert not t.serving
    assert Target("docs", "docs--abc-3d", "incremental", "docs--abc-3d").serving
    assert Target("docs", "docs", "legacy", "docs").serving
    with pytest.raises(ValueError):
        Target("docs", "docs", "rebuild", None)

