"""daemon/policy/cfgtypes.py's TypedDicts say what daemon/config.py's SCHEMA says: the same keys, the
same types (a key added to one and not the other fails here)."""

from __future__ import annotations

import typing

import pytest

from daemon.config import SCHEMA
from daemon.policy import cfgtypes

# SCHEMA's kind names -> the annotation the TypedDict gives them
KINDS = {("float",): float, ("int",): int, ("bool",): bool, ("str",): str,
         ("list[str]",): list[str], ("str", "none"): str | None, ("list[str]", "none"): list[str] | None}


@pytest.mark.parametrize("section, typed", [("thermal", cfgtypes.ThermalConfig),
                                            ("resets", cfgtypes.ResetsConfig)])
def test_a_config_section_type_matches_the_schema(section, typed):
    hints = typing.get_type_hints(typed)
    assert set(hints) == set(SCHEMA[section]), f"[{section}] keys differ from SCHEMA"
    for key, (kinds, _default) in SCHEMA[section].items():
        assert hints[key] == KINDS[kinds], f"[{section}] {key}: {hints[key]} vs SCHEMA {kinds}"
