"""Shared by tests/unit/index/test_aliases.py and tests/integration/test_index_alias.py."""

# A model identity as the physical index names carry it.
IDENT = "0123456789abcdef"
