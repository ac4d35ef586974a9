"""daemon/policy/cfgtypes.py's TypedDicts say what daemon/state/config.py's schema says: the same
sections, the same keys, the same types (a key added to one and not the other fails here)."""

from __future__ import annotations

import typing

import pytest

from daemon.policy import cfgtypes
from daemon.state.config import QUEUE_KEYS, SCHEMA, SUBTABLES, defaults, validate

# SCHEMA's kind names -> the annotation the TypedDict gives them ("table" is a subtable: its own
# TypedDict, checked against SUBTABLES below)
KINDS = {("float",): float, ("int",): int, ("bool",): bool, ("str",): str,
         ("list[str]",): list[str], ("str", "none"): str | None, ("list[str]", "none"): list[str] | None,
         ("int", "none"): int | None, ("float", "none"): float | None,
         ("table[str]",): dict[str, str], ("table[float]",): dict[str, float],
         ("int", "auto"): int | typing.Literal["auto"]}

SECTIONS = {"job": cfgtypes.JobConfig, "daemon": cfgtypes.DaemonConfig, "gpu": cfgtypes.GpuConfig,
            "thermal": cfgtypes.ThermalConfig, "resets": cfgtypes.ResetsConfig,
            "checkpoint": cfgtypes.CheckpointConfig, "offload": cfgtypes.OffloadConfig,
            "schedule": cfgtypes.ScheduleConfig, "api": cfgtypes.ApiConfig,
            "notify": cfgtypes.NotifyConfig, "divergence": cfgtypes.DivergenceConfig}
SUBTABLE_TYPES = {("offload", "ssh"): cfgtypes.SshConfig}


# keys the file may leave unset that validate() always fills in: their type is the filled one
FILLED = {("[[queue]]", "name"): str}


def _check_keys(where: str, typed: type, specs: dict) -> None:
    # a "_" key is the daemon's own note, never the file's (daemon._fallback_dir)
    hints = {k: v for k, v in typing.get_type_hints(typed).items() if not k.startswith("_")}
    assert set(hints) == set(specs), f"{where}: keys differ from the schema"
    for key, (kinds, _default) in specs.items():
        if kinds == ("table",):
            continue  # a subtable: checked on its own
        want = FILLED.get((where, key), KINDS[kinds])
        assert hints[key] == want, f"{where} {key}: {hints[key]} vs schema {kinds}"


@pytest.mark.parametrize("section", sorted(SCHEMA))
def test_a_config_section_type_matches_the_schema(section):
    _check_keys(f"[{section}]", SECTIONS[section], SCHEMA[section])


@pytest.mark.parametrize("sec, key", sorted(SUBTABLES))
def test_a_subtable_type_matches_the_schema(sec, key):
    typed = SUBTABLE_TYPES[(sec, key)]
    assert typing.get_type_hints(SECTIONS[sec])[key] is typed, f"[{sec}] {key} is not {typed.__name__}"
    _check_keys(f"[{sec}.{key}]", typed, SUBTABLES[(sec, key)])


def test_every_section_has_its_type_and_the_queue_too():
    hints = typing.get_type_hints(cfgtypes.Config)
    assert set(hints) == set(SCHEMA) | {"queue", "_path"}
    for section, typed in SECTIONS.items():
        assert hints[section] is typed, section
    assert hints["queue"] == list[cfgtypes.QueueEntryConfig]
    _check_keys("[[queue]]", cfgtypes.QueueEntryConfig, QUEUE_KEYS)


def test_the_built_config_has_exactly_the_typed_keys():
    """defaults() and validate() build what Config says, to the key (config.py casts to it)."""
    cfg = validate({"job": {"command": ["python", "x.py"]}, "queue": [{"command": ["a"]}]})
    for built in (defaults(), cfg):
        assert set(built) == set(typing.get_type_hints(cfgtypes.Config)) - {"_path"}
        for section, typed in SECTIONS.items():
            assert set(built[section]) == {k for k in typing.get_type_hints(typed) if not k.startswith("_")}, section
    assert set(cfg["queue"][0]) == set(typing.get_type_hints(cfgtypes.QueueEntryConfig))
    assert cfg["queue"][0]["name"] == "queue-1"  # FILLED: never None after validate()
