"""Configuration: load config.toml, validate it against one declarative schema, fill defaults.

Every key a user can write is declared in SCHEMA below, with its type and default. An unknown
key or a wrong type raises ConfigError naming the key and the file (the CLI exits 78 on it):
a typo in a threshold must never be silently ignored on the night it matters.

The result is a plain nested dict (``cfg["thermal"]["pause_at_c"]``) so the pure policy and the
tests can build configs from literals with ``defaults()`` and ``merge()``.
"""

from __future__ import annotations

import copy
import math
import os
import tomllib
import zoneinfo
from collections.abc import Mapping
from pathlib import Path
from typing import TypeAlias, cast

from daemon.policy.cfgtypes import Config, QueueEntryConfig

EX_CONFIG = 78

# A type spec is a tuple of accepted kinds. Kinds: "str", "int", "float" (ints accepted),
# "bool", "list[str]", "list[float]", "table[str]" (str -> str), "table[float]", "auto"
# (the literal string "auto"), "none" (the key may be left unset: default None).
# A value as TOML gives it (tomllib's result; TOML's dates and times are no kind of SCHEMA's, so
# _type_ok refuses them before they get anywhere).
TomlValue: TypeAlias = "str | int | float | bool | list[TomlValue] | dict[str, TomlValue] | None"
Spec = tuple[tuple[str, ...], TomlValue]
# Where a ConfigError says the problem is: the file, or None for a config built in code.
Where: TypeAlias = "str | os.PathLike[str] | None"


def _k(kinds: str, default: TomlValue = None) -> Spec:
    return (tuple(kinds.split("|")), default)


SCHEMA: dict[str, dict[str, Spec]] = {
    "job": {
        "name": _k("str", "job"),
        "command": _k("list[str]", None),  # required
        "resume_command": _k("list[str]|none"),
        "workdir": _k("str|none"),  # default: the config file's directory
        "checkpoint_dir": _k("str", "checkpoints"),
        "checkpoint_glob": _k("str|none"),  # for scripts that don't use trainer/
        # progress from output for scripts that don't use trainer/: a regex with named groups
        # (step, total, loss, epoch, any metric) or a preset: nanogpt|hf|tqdm|lightning
        "progress_pattern": _k("str|none"),
        "total_steps": _k("int|none"),
        "env": _k("table[str]", {}),
        "heartbeat_timeout_s": _k("float", 300.0),
        "max_code_error_restarts": _k("int", 3),
        "restart_backoff_s": _k("float", 5.0),
        # every cause of restart counts: more than this many within the window fails the run
        "restart_limit": _k("int", 20),
        "restart_window_s": _k("float", 3600.0),
        "stop_timeout_s": _k("float", 60.0),
        # job.log is rotated to job.log.1 at this size (the newest output is always kept)
        "log_max_bytes": _k("int", 50 * 2**20),
    },
    "daemon": {
        "state_dir": _k("str", "state"),  # relative to the config file's directory
        "log_level": _k("str", "info"),
        # Leave when the run ends (succeeded/failed/stopped) instead of serving its status
        # until restarted: for `nightshift demo`, benchmarks and one-shot use.
        "exit_when_done": _k("bool", False),
    },
    "gpu": {
        "sensor": _k("str", "auto"),  # auto|amdgpu-sysfs|pyamdgpuinfo|psutil|simulated|none
        "card": _k("str|none"),  # e.g. "card1"; default: the first amdgpu card
        "sysfs_root": _k("str", "/sys"),
        "poll_interval_s": _k("float", 2.0),
        "simulated": _k("table[float]", {}),  # simulated GPU parameters, see daemon/gpu/simgpu.py
    },
    "thermal": {
        "pause_at_c": _k("float", 90.0),
        "resume_at_c": _k("float", 75.0),
        "tctl_pause_at_c": _k("float", 95.0),
        "min_cooldown_s": _k("float", 60.0),
        "max_cooldown_s": _k("float", 900.0),
        "trend": _k("bool", True),
        "clock_cap": _k("bool", False),
        "clock_cap_mhz": _k("int", 1800),
        # "clock": hold edge at pause_at_c - setpoint_margin_c with a learned sclk cap
        # (daemon/policy/governor.py); pausing stays the safety net. Default "off", measured:
        # the night replay's hot chip takes 0.84x the pause policy's time with it (30.4 h vs
        # 36.0 h at the full clock), but only with overdrive (amdgpu.ppfeaturemask bit 0x4000,
        # off in the stock mask) and writable clock files (root): on by default it would act on
        # almost no machine as installed and warn on every one; README "Thermal governor".
        # Both keys apply on a live edit (daemon/core/reconfig.py).
        "governor": _k("str", "off"),
        "setpoint_margin_c": _k("float", 3.0),
    },
    "resets": {
        # any of kmsg, journal, uevent, devcoredump, sensor, job; or ["auto"]
        "sources": _k("list[str]", ["auto"]),
        "kernel_log": _k("str|none"),  # a file to tail instead of /dev/kmsg (tests, simulation)
        "window_s": _k("float", 3600.0),
        "offload_after": _k("int", 3),
        "cooldown_s": _k("float", 60.0),
        "probe": _k("bool", True),
        "probe_command": _k("list[str]|none"),
        "probe_timeout_s": _k("float", 60.0),
        "probe_retries": _k("int", 3),
    },
    "checkpoint": {
        "interval": _k("int|auto", 100),  # steps, or "auto" (Young/Daly)
        "keep": _k("int", 3),
        "best_metric": _k("str|none"),  # e.g. "val_loss": also keep the best by it
    },
    "offload": {
        "backend": _k("str", "none"),  # none|modal|local|ssh
        # try these in order (e.g. ["ssh", "modal"]); empty = just `backend`
        "backends": _k("list[str]", []),
        "ssh": _k("table", {}),  # [offload.ssh]: keys in SUBTABLES below
        "gpu": _k("str", "A100-40GB"),
        "timeout_s": _k("float", 6 * 3600.0),
        "budget_usd": _k("float", 0.0),
        "prices_usd_per_h": _k("table[float]", {"A100-40GB": 2.10, "A100-80GB": 2.50, "H100": 3.95}),
        "app_name": _k("str", "nightshift"),
        "retries": _k("int", 3),
        "requirements": _k("list[str]", []),
        "python_version": _k("str", "3.11"),
        "local_dir": _k("str|none"),  # local backend: the directory standing in for the volume
        "local_env": _k("table[str]", {}),  # local backend: e.g. HIP_VISIBLE_DEVICES = "1"
        "local_steps_per_s": _k("float|none"),  # local backend: throttle to mimic a GPU's speed
        # failover carries the job's workdir; left out: these glob patterns (default, when unset:
        # the workdir's .gitignore plus the checkpoint and data dirs)
        "exclude": _k("list[str]|none"),
        # dirs (relative to the workdir) synced once to a data volume by manifest, mounted at the
        # same relative path remotely
        "data": _k("list[str]", []),
        # the cloud GPU's expected speed-up over the local one, for the cost estimate
        "speedup": _k("table[float]", {"A100-40GB": 12.0, "A100-80GB": 12.0, "H100": 24.0}),
        # the remote GPU's expected rate, for the cost estimate shown before launching
        "remote_steps_per_s": _k("float|none"),
    },
    "schedule": {
        "enabled": _k("bool", False),
        "window_start": _k("str|none"),  # "22:30"
        "window_end": _k("str|none"),  # "07:00"
        "deadline": _k("str|none"),  # "07:00": the morning the job must be done by
        # or relative: done within this many seconds of the run's start (benchmarks, one-offs);
        # for a queue, of the first run's start: the queue's runs share one deadline
        "deadline_after_s": _k("float|none"),
        "timezone": _k("str|none"),
    },
    "api": {
        "enabled": _k("bool", True),
        "host": _k("str", "127.0.0.1"),
        "port": _k("int", 8742),
        "token_file": _k("str", "token"),  # relative to state_dir
        # more names a client may send in Host (the address and, for loopback, its names are
        # always accepted; others get 421: DNS rebinding), e.g. a LAN name for host = "0.0.0.0"
        "allowed_hosts": _k("list[str]", []),
    },
    "notify": {
        "ntfy_url": _k("str|none"),
        "webhook_url": _k("str|none"),
        "events": _k(
            "list[str]",
            ["paused_hot", "reset", "offloaded", "budget", "divergence", "failed", "finished"],
        ),
        "min_interval_s": _k("float", 60.0),
        "retries": _k("int", 5),
    },
    "divergence": {
        "enabled": _k("bool", True),
        "window": _k("int", 20),
        "rtol": _k("float", 2.0),
        "patience": _k("int", 1),
        "action": _k("str", "alert"),  # alert|stop|rollback
        "rollback_steps": _k("int", 100),
        "skip_batches": _k("int", 50),
    },
}

# Nested tables ([offload.ssh]): each key declared like a section's, validated the same way.
SUBTABLES: dict[tuple[str, str], dict[str, Spec]] = {
    ("offload", "ssh"): {
        "host": _k("str|none"),  # required when the ssh backend is used
        "port": _k("int", 22),
        "user": _k("str|none"),  # default: the local user name
        "key_file": _k("str|none"),  # default: ~/.ssh/id_* and the ssh agent
        "known_hosts": _k("str|none"),  # default: ~/.ssh/known_hosts
        # trust an unknown host key once and record it (OpenSSH's accept-new); a changed key
        # is refused regardless
        "accept_new_host_key": _k("bool", False),
        "remote_dir": _k("str", "nightshift"),  # relative paths are under the remote home
        "python": _k("str", "python3"),  # the remote interpreter ("python" in job.command)
        "setup_command": _k("str|none"),  # a shell command, run once per environment fingerprint
        # a setup_command still running after this long failed (its output tail is the error)
        "setup_timeout_s": _k("float", 3 * 3600.0),
        "price_usd_per_h": _k("float", 0.0),
        "env": _k("table[str]", {}),
        "connect_timeout_s": _k("float", 15.0),
        # read ~/.ssh/config (Host aliases, HostName, Port, User, IdentityFile, ProxyJump) as
        # ssh does; the keys above, when set, win over it
        "ssh_config": _k("bool", True),
    },
}

BACKENDS = {"none", "modal", "local", "ssh"}
# [resets] sources: each one can be switched off (daemon/gpu/resets/detector.py reads them)
RESET_SOURCES = ("auto", "kmsg", "journal", "uevent", "devcoredump", "sensor", "job")

CHOICES = {
    ("gpu", "sensor"): {"auto", "amdgpu-sysfs", "pyamdgpuinfo", "psutil", "simulated", "none"},
    ("thermal", "governor"): {"off", "clock"},
    ("offload", "backend"): BACKENDS,
    ("divergence", "action"): {"alert", "stop", "rollback", "next"},
    ("daemon", "log_level"): {"debug", "info", "warning", "error"},
}

# Numeric ranges, checked after the types: (low, high, low_exclusive); None = unbounded.
# Every number must also be finite (TOML allows nan and inf). A numeric key not listed here
# must be >= 0: a negative duration, count or price is never meaningful. Keys of a nested
# table are named "ssh.port".
RANGES: dict[tuple[str, str], tuple[float | None, float | None, bool]] = {
    ("job", "total_steps"): (1, None, False),
    ("job", "heartbeat_timeout_s"): (0, None, True),
    ("job", "stop_timeout_s"): (0, None, True),
    ("job", "restart_backoff_s"): (0, 7 * 86400, False),
    ("job", "log_max_bytes"): (65536, None, False),
    ("gpu", "poll_interval_s"): (0, 3600, True),
    ("gpu", "simulated"): (None, None, False),  # the simulator's own parameters: finite only
    ("thermal", "pause_at_c"): (0, 150, True),
    ("thermal", "resume_at_c"): (0, 150, True),
    ("thermal", "tctl_pause_at_c"): (0, 150, True),
    ("thermal", "clock_cap_mhz"): (100, 10000, False),
    ("resets", "window_s"): (0, None, True),
    ("resets", "offload_after"): (1, None, False),
    ("resets", "probe_timeout_s"): (0, None, True),
    ("checkpoint", "interval"): (1, None, False),
    ("checkpoint", "keep"): (1, None, False),
    ("offload", "timeout_s"): (0, None, True),
    ("offload", "local_steps_per_s"): (0, None, True),
    ("offload", "remote_steps_per_s"): (0, None, True),
    ("offload", "ssh.port"): (1, 65535, False),
    ("offload", "ssh.connect_timeout_s"): (0, None, True),
    ("schedule", "deadline_after_s"): (0, None, True),
    ("api", "port"): (1, 65535, False),
    ("divergence", "window"): (2, None, False),
    ("divergence", "rtol"): (0, None, True),
    ("divergence", "patience"): (1, None, False),
}
MAX_INT = 2**53  # larger integers lose precision in JSON and overflow SQLite's 64 bits
MAX_CONFIG_BYTES = 1 << 20

# Keys whose change needs a restart of the daemon (see configwatch): everything else applies
# live (daemon/core/reconfig.py rebuilds the parts that depend on them, the rest is read at use).
# A key read only when a part is built at start belongs here, so that a reload never announces
# as "in force" what is not.
RESTART_KEYS = {("job", "command"), ("job", "resume_command"), ("job", "workdir"),
                ("job", "checkpoint_dir"), ("job", "env"), ("job", "log_max_bytes"),
                ("daemon", "state_dir"), ("api", "enabled"), ("api", "host"), ("api", "port"),
                ("api", "token_file"), ("api", "allowed_hosts"), ("gpu", "sensor"), ("gpu", "sysfs_root"), ("gpu", "card"),
                ("gpu", "simulated"), ("resets", "sources"), ("resets", "kernel_log"),
                ("resets", "probe"), ("offload", "backend")}


class ConfigError(Exception):
    """A configuration problem; str() names the file and the key and says what to do."""

    def __init__(self, message: str, path: Where = None, key: str | None = None):
        self.path = str(path) if path is not None else None
        self.key = key
        where = f"{self.path}: " if self.path else ""
        super().__init__(f"{where}{message}")


def _defaults() -> dict[str, dict[str, TomlValue]]:
    out = {sec: {k: copy.deepcopy(spec[1]) for k, spec in keys.items()} for sec, keys in SCHEMA.items()}
    for (sec, key), keys in SUBTABLES.items():
        out[sec][key] = {k: copy.deepcopy(spec[1]) for k, spec in keys.items()}
    return out


def defaults() -> Config:
    """Every key at its default (job.command unset: validate() refuses that, tests fill it)."""
    # Built from SCHEMA, which tests/test_cfgtypes.py keeps key for key and type for type equal
    # to Config: the one place that says so is that test, not a check here on every call.
    return cast(Config, {**_defaults(), "queue": []})


def _check_value(full: str, kinds: tuple[str, ...], value: object, path: Where) -> None:
    if not any(_type_ok(k, value) for k in kinds if k != "none"):
        raise ConfigError(f"{full} = {value!r} has the wrong type: expected {_describe(kinds)}", path, full)


def _validate_subtable(sec: str, key: str, body: dict[str, TomlValue], path: Where) -> dict[str, TomlValue]:
    keys = SUBTABLES[(sec, key)]
    out = {k: copy.deepcopy(spec[1]) for k, spec in keys.items()}
    for k, value in body.items():
        full = f"{sec}.{key}.{k}"
        if k not in keys:
            raise ConfigError(f"unknown key {full!r}; keys allowed in [{sec}.{key}]: {', '.join(keys)}",
                              path, full)
        _check_value(full, keys[k][0], value, path)
        _check_range(full, (sec, f"{key}.{k}"), value, path)
        out[k] = copy.deepcopy(value)
    return out


def _type_ok(kind: str, v: object) -> bool:
    if kind == "str":
        return isinstance(v, str)
    if kind == "int":
        return isinstance(v, int) and not isinstance(v, bool)
    if kind == "float":
        return isinstance(v, (int, float)) and not isinstance(v, bool)
    if kind == "bool":
        return isinstance(v, bool)
    if kind == "auto":
        return v == "auto"
    if kind == "none":
        return v is None
    if kind == "table":
        return isinstance(v, dict)
    if kind.startswith("list["):
        inner = kind[5:-1]
        return isinstance(v, list) and all(_type_ok(inner, x) for x in v)
    if kind.startswith("table["):
        inner = kind[6:-1]
        return isinstance(v, dict) and all(isinstance(k, str) and _type_ok(inner, x) for k, x in v.items())
    raise AssertionError(kind)


def _describe(kinds: tuple[str, ...]) -> str:
    names = {"str": "a string", "int": "an integer", "float": "a number", "bool": "true or false",
             "auto": '"auto"', "none": "unset",
             "table": "a table"}
    return " or ".join(names.get(k, k.replace("list[", "a list of ").replace("table[", "a table of ").rstrip("]")) for k in kinds)


# [[queue]]: runs to start one after another, each a [job] with its own command and env.
QUEUE_KEYS: dict[str, Spec] = {
    "name": _k("str|none"),
    "command": _k("list[str]", None),  # required
    "resume_command": _k("list[str]|none"),
    "env": _k("table[str]", {}),
    "total_steps": _k("int|none"),
}


def _validate_queue(entries: TomlValue, path: Where) -> list[QueueEntryConfig]:
    if not isinstance(entries, list):
        raise ConfigError("queue must be an array of tables: write each entry as [[queue]]", path, "queue")
    out: list[QueueEntryConfig] = []
    for i, e in enumerate(entries):
        where = f"queue[{i}]"
        if not isinstance(e, dict):
            raise ConfigError(f"{where} must be a table ([[queue]] with command = [...])", path, where)
        raw = {k: copy.deepcopy(spec[1]) for k, spec in QUEUE_KEYS.items()}
        for key, value in e.items():
            if key not in QUEUE_KEYS:
                raise ConfigError(f"unknown key {where}.{key}; keys allowed: {', '.join(QUEUE_KEYS)}",
                                  path, f"{where}.{key}")
            _check_value(f"{where}.{key}", QUEUE_KEYS[key][0], value, path)
            raw[key] = copy.deepcopy(value)
        raw["name"] = raw["name"] or f"queue-{i + 1}"
        item = cast(QueueEntryConfig, raw)  # each key's type checked just above
        if not item["command"]:
            raise ConfigError(f"{where}.command is required: the program and its arguments as a list",
                              path, f"{where}.command")
        if item["total_steps"] is not None and item["total_steps"] < 1:
            raise ConfigError(f"{where}.total_steps must be at least 1", path, f"{where}.total_steps")
        from daemon.policy.queue_entry import entry_problem  # the same check as `queue add`
        problem = entry_problem(item["name"], item["command"], item["env"], item["total_steps"])
        if problem is not None:
            raise ConfigError(f"{where}: {problem}", path, where)
        out.append(item)
    return out


def validate(raw: dict[str, TomlValue], path: Where = None) -> Config:
    """Check ``raw`` (parsed TOML) against SCHEMA; return defaults merged with it."""
    built = _defaults()
    raw = dict(raw)
    queue = _validate_queue(raw.pop("queue", []), path)
    for sec, body in raw.items():
        if sec not in SCHEMA:
            raise ConfigError(f"unknown section [{sec}]; known sections: {', '.join(SCHEMA)}", path, sec)
        if not isinstance(body, dict):
            raise ConfigError(f"[{sec}] must be a table", path, sec)
        for key, value in body.items():
            full = f"{sec}.{key}"
            if key not in SCHEMA[sec]:
                raise ConfigError(
                    f"unknown key {full!r}; keys allowed in [{sec}]: {', '.join(SCHEMA[sec])}", path, full)
            kinds, _ = SCHEMA[sec][key]
            _check_value(full, kinds, value, path)
            choices = CHOICES.get((sec, key))
            if choices and value not in choices:
                raise ConfigError(f"{full} = {value!r} is not one of {', '.join(sorted(choices))}", path, full)
            if (sec, key) in SUBTABLES:
                assert isinstance(value, dict)  # _check_value: a "table"
                value = _validate_subtable(sec, key, value, path)
            else:
                _check_range(full, (sec, key), value, path)
            built[sec][key] = copy.deepcopy(value)
    # every key is SCHEMA's (a default or a value _check_value just checked against its kinds),
    # and tests/test_cfgtypes.py keeps SCHEMA and Config the same
    cfg = cast(Config, {**built, "queue": queue})
    _check_semantics(cfg, path)
    return cfg


def _leaves(value: TomlValue) -> list[TomlValue]:
    if isinstance(value, list):
        return [x for v in value for x in _leaves(v)]
    if isinstance(value, dict):
        return [x for v in value.values() for x in _leaves(v)]
    return [value]


def _range_text(lo: float | None, hi: float | None, strict: bool) -> str:
    low = (f"above {lo:g}" if strict else f"at least {lo:g}") if lo is not None else ""
    high = f"at most {hi:g}" if hi is not None else ""
    return " and ".join(x for x in (low, high) if x) or "finite"


def _check_range(full: str, rkey: tuple[str, str], value: TomlValue, path: Where) -> None:
    """Finite numbers within RANGES, no NUL in strings: for every leaf (lists, tables too)."""
    lo, hi, strict = RANGES.get(rkey, (0, None, False))
    for leaf in _leaves(value):
        if isinstance(leaf, str) and "\0" in leaf:
            raise ConfigError(f"{full} contains a NUL character; remove it", path, full)
        if isinstance(leaf, bool) or not isinstance(leaf, (int, float)):
            continue
        if isinstance(leaf, float) and not math.isfinite(leaf):
            raise ConfigError(f"{full} = {leaf!r} is not a finite number", path, full)
        if isinstance(leaf, int) and abs(leaf) > MAX_INT:
            raise ConfigError(f"{full} = {leaf} is too large (at most 2**53)", path, full)
        if ((lo is not None and (leaf <= lo if strict else leaf < lo))
                or (hi is not None and leaf > hi)):
            raise ConfigError(f"{full} = {leaf!r} is out of range: it must be "
                              f"{_range_text(lo, hi, strict)}", path, full)


def _check_semantics(cfg: Config, path: Where) -> None:
    if not cfg["job"]["command"]:
        raise ConfigError("job.command is missing: set it to the training command, e.g. "
                          'command = ["python", "-m", "trainer.reference"]', path, "job.command")
    t = cfg["thermal"]
    if t["resume_at_c"] >= t["pause_at_c"]:
        raise ConfigError(f"thermal.resume_at_c ({t['resume_at_c']}) must be below thermal.pause_at_c "
                          f"({t['pause_at_c']}) or the job would flap", path, "thermal.resume_at_c")
    if t["min_cooldown_s"] > t["max_cooldown_s"]:
        raise ConfigError("thermal.min_cooldown_s must not exceed thermal.max_cooldown_s", path,
                          "thermal.min_cooldown_s")
    if cfg["gpu"]["poll_interval_s"] <= 0:
        raise ConfigError("gpu.poll_interval_s must be positive", path, "gpu.poll_interval_s")
    iv = cfg["checkpoint"]["interval"]
    if iv != "auto" and isinstance(iv, int) and iv < 1:
        raise ConfigError('checkpoint.interval must be a positive number of steps or "auto"', path,
                          "checkpoint.interval")
    sched = cfg["schedule"]
    for key, v in (("window_start", sched["window_start"]), ("window_end", sched["window_end"]),
                   ("deadline", sched["deadline"])):
        if v is not None:
            parts = v.split(":")
            if len(parts) != 2 or not all(p.isdigit() for p in parts) or not (
                    0 <= int(parts[0]) < 24 and 0 <= int(parts[1]) < 60):
                raise ConfigError(f'schedule.{key} = {v!r} is not a time of day like "22:30"', path,
                                  f"schedule.{key}")
    if cfg["schedule"]["enabled"] and bool(cfg["schedule"]["window_start"]) != bool(cfg["schedule"]["window_end"]):
        raise ConfigError("schedule.window_start and schedule.window_end go together", path,
                          "schedule.window_start")
    _check_offload(cfg, path)
    _check_simulated(cfg, path)
    if cfg["checkpoint"]["keep"] < 1:
        raise ConfigError("checkpoint.keep must be at least 1", path, "checkpoint.keep")
    if cfg["job"]["progress_pattern"] is not None:
        from daemon.job.outputprogress import PatternError, compile_pattern
        try:
            compile_pattern(cfg["job"]["progress_pattern"])
        except PatternError as e:
            raise ConfigError(f"job.progress_pattern = {e}", path, "job.progress_pattern") from None
    for d in cfg["offload"]["data"]:
        if os.path.isabs(d) or ".." in Path(d).parts or not d.strip("./"):
            raise ConfigError(f"offload.data = {d!r}: name a directory inside the job's workdir, "
                              'relative to it (e.g. "data/openwebtext")', path, "offload.data")


def _check_simulated(cfg: Config, path: Where) -> None:
    """[gpu] simulated takes the simulator's own parameters: a typo is an error here, at
    check-config, not a traceback when `run` builds the simulated GPU."""
    from daemon.gpu.simgpu import DEFAULTS  # no daemon imports of its own: no cycle
    unknown = sorted(set(cfg["gpu"]["simulated"]) - set(DEFAULTS))
    if unknown:
        raise ConfigError(f"unknown key {'gpu.simulated.' + unknown[0]!r}; keys allowed in "
                          f"[gpu] simulated: {', '.join(DEFAULTS)}", path,
                          f"gpu.simulated.{unknown[0]}")


def _check_timezone(cfg: Config, path: Where) -> None:
    tz = cfg["schedule"]["timezone"]
    if tz is not None:
        try:
            zoneinfo.ZoneInfo(tz)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
            raise ConfigError(f"schedule.timezone = {tz!r} is not a known time zone; use an IANA "
                              'name like "Europe/Berlin" (timedatectl list-timezones)', path,
                              "schedule.timezone") from None


def _check_offload(cfg: Config, path: Where) -> None:
    o = cfg["offload"]
    _check_timezone(cfg, path)  # here so the call sites of _check_offload stay as they are
    if "modal" in (o["backend"], *o["backends"]) and o["gpu"] not in o["prices_usd_per_h"]:
        raise ConfigError(f"offload.gpu = {o['gpu']!r} has no price: use one of "
                          f"{', '.join(sorted(o['prices_usd_per_h']))}, or add it to "
                          "offload.prices_usd_per_h", path, "offload.gpu")
    for name in o["backends"]:
        if name not in BACKENDS - {"none"}:
            raise ConfigError(f"offload.backends: {name!r} is not one of "
                              f"{', '.join(sorted(BACKENDS - {'none'}))}", path, "offload.backends")
    if "ssh" in (o["backend"], *o["backends"]) and not o["ssh"]["host"]:
        raise ConfigError("the ssh backend needs [offload.ssh] host (and usually user and key_file)",
                          path, "offload.ssh.host")
    if not 0 < o["ssh"]["port"] < 65536:
        raise ConfigError("offload.ssh.port must be between 1 and 65535", path, "offload.ssh.port")
    for name in cfg["resets"]["sources"]:
        if name not in RESET_SOURCES:
            raise ConfigError(f"resets.sources: {name!r} is not one of {', '.join(RESET_SOURCES)} "
                              "(leave a source out to switch it off; [] switches all off)", path,
                              "resets.sources")


def config_candidates(env: Mapping[str, str] | None = None) -> list[Path]:
    """Where the config is looked for when neither -c nor $NIGHTSHIFT_CONFIG says.

    $CONFIGURATION_DIRECTORY (set by systemd's ConfigurationDirectory=) comes first: the unit
    says where its config lives. Then ./config.toml (a checkout), then the user service's
    $XDG_CONFIG_HOME/nightshift/config.toml (~/.config/...), then /etc/nightshift/config.toml.
    """
    env = os.environ if env is None else env
    out: list[Path] = []
    confdir = env.get("CONFIGURATION_DIRECTORY", "").split(":")[0]
    if confdir:
        out.append(Path(confdir) / "config.toml")
    out.append(Path("config.toml"))
    xdg = env.get("XDG_CONFIG_HOME") or (str(Path(env["HOME"]) / ".config") if env.get("HOME") else "")
    if xdg:
        out.append(Path(xdg) / "nightshift" / "config.toml")
    out.append(Path("/etc/nightshift/config.toml"))
    return out


def find_config(explicit: str | None = None) -> Path:
    """-c, then $NIGHTSHIFT_CONFIG, then the first existing of ``config_candidates()``."""
    if explicit:
        return Path(explicit)
    env = os.environ.get("NIGHTSHIFT_CONFIG")
    if env:
        return Path(env)
    cands = config_candidates()
    for cand in cands:
        if cand.exists():
            return cand
    raise ConfigError("no configuration found: pass -c FILE, set NIGHTSHIFT_CONFIG, or create one "
                      "of " + ", ".join(str(c) for c in cands))


def load(path: str | os.PathLike[str]) -> Config:
    """Read, parse and validate a config file; relative paths become relative to its directory."""
    p = Path(path)
    raw = parse_bytes(_read_bytes(p), p)
    cfg = validate(raw, p)
    resolve_paths(cfg, p.resolve().parent)
    cfg["_path"] = str(p.resolve())
    return cfg


def _read_bytes(p: Path) -> bytes:
    """The file's bytes. Opened without blocking and refused unless it is a regular file: a
    FIFO (or a device) would block open() or read() until someone writes to it, and the daemon
    reads its config on its event loop's behalf (configwatch reads it in a thread with a
    timeout, for what O_NONBLOCK cannot bound: a hung network mount)."""
    import stat
    try:
        fd = os.open(p, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise ConfigError("file not found; pass -c with an existing config file", p) from None
    except OSError as e:
        raise ConfigError(f"cannot read the file: {e.strerror}", p) from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = ("a FIFO (named pipe)" if stat.S_ISFIFO(mode) else "a directory"
                    if stat.S_ISDIR(mode) else "a socket" if stat.S_ISSOCK(mode) else "a device")
            raise ConfigError(f"not a regular file but {kind}: the config must be a plain file "
                              "(reading anything else could block the daemon); point -c at the "
                              "config.toml itself", p)
        chunks, size = [], 0
        while size <= MAX_CONFIG_BYTES:
            chunk = os.read(fd, MAX_CONFIG_BYTES + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        data = b"".join(chunks)
    except OSError as e:
        raise ConfigError(f"cannot read the file: {e.strerror}", p) from None
    finally:
        os.close(fd)
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(f"larger than {MAX_CONFIG_BYTES >> 20} MiB: not a config file", p)
    return data


def parse_bytes(data: bytes, path: Where = None) -> dict[str, TomlValue]:
    """Bytes -> parsed TOML; every failure a ConfigError (binary file, bad UTF-8, bad TOML)."""
    nul = data.find(b"\0")
    if nul >= 0:
        line = data.count(b"\n", 0, nul) + 1
        raise ConfigError(f"a NUL byte at line {line} (offset {nul}): a binary file, not TOML; "
                          "point -c at the config.toml", path)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise ConfigError(f"not UTF-8 text: byte 0x{data[e.start]:02x} at line {line} (offset "
                          f"{e.start}); save the file as UTF-8", path) from None
    try:
        return tomllib.loads(text.removeprefix("\ufeff"))
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"not valid TOML: {e}", path) from None
    except (ValueError, RecursionError) as e:  # a 5000-digit integer, arrays nested 1000 deep
        raise ConfigError(f"not a usable TOML file: {str(e)[:120]}", path) from None


def state_dir_for(configured: str, base: Path, env: Mapping[str, str] | None = None) -> Path:
    """Where the state goes. Precedence: an absolute ``state_dir`` in the file, then
    $STATE_DIRECTORY (systemd's StateDirectory=, e.g. /var/lib/nightshift), then a relative
    ``state_dir`` (default "state") against the config file's directory. A relative path is a
    checkout's convenience; under a unit with StateDirectory= the config's directory
    (/etc/nightshift) is read-only, so the unit's choice wins over it."""
    env = os.environ if env is None else env
    if os.path.isabs(configured):
        return Path(configured)
    sd = env.get("STATE_DIRECTORY", "").split(":")[0]
    if sd:
        return Path(sd)
    return base / configured


def resolve_paths(cfg: Config, base: Path) -> None:
    """Make the config's relative paths absolute against ``base`` (the config file's directory)."""
    job = cfg["job"]
    workdir = job["workdir"] = str((base / (job["workdir"] or ".")).resolve())
    job["checkpoint_dir"] = str(Path(workdir) / job["checkpoint_dir"])
    cfg["daemon"]["state_dir"] = str(state_dir_for(cfg["daemon"]["state_dir"], base))
    cfg["api"]["token_file"] = str(Path(cfg["daemon"]["state_dir"]) / cfg["api"]["token_file"])
    if cfg["resets"]["kernel_log"]:
        cfg["resets"]["kernel_log"] = str(base / cfg["resets"]["kernel_log"])
    if cfg["offload"]["local_dir"]:
        cfg["offload"]["local_dir"] = str(base / cfg["offload"]["local_dir"])
    ssh = cfg["offload"]["ssh"]
    # local files; remote_dir stays as written
    if ssh["key_file"]:
        ssh["key_file"] = str(base / Path(ssh["key_file"]).expanduser())
    if ssh["known_hosts"]:
        ssh["known_hosts"] = str(base / Path(ssh["known_hosts"]).expanduser())


def lookup(cfg: Config, sec: str, key: str) -> object:
    """The value at [sec] key, None when there is none: for code that walks the config by
    SCHEMA's names (the watcher's diff) and only compares or shows what it finds."""
    sections: Mapping[str, object] = cfg
    body = sections.get(sec)
    return body.get(key) if isinstance(body, dict) else None


def copy_key(dst: Config, src: Config, sec: str, key: str) -> None:
    """``dst[sec][key] = src[sec][key]`` for a key named at run time (a live edit's keys): both
    are Configs, so the value has the type that key has in ``dst``."""
    dst_secs: Mapping[str, object] = dst
    src_secs: Mapping[str, object] = src
    into, fro = dst_secs[sec], src_secs[sec]
    if not isinstance(into, dict) or not isinstance(fro, dict):
        raise KeyError(f"[{sec}] is not a section of the config")
    into[key] = copy.deepcopy(fro[key])


def merge(base: Mapping[str, object], override: Mapping[str, object]) -> dict[str, object]:
    """Deep-merge ``override`` into a copy of ``base`` (for tests: a plain dict, unchecked;
    ``validate`` is what makes a Config)."""
    out = dict(copy.deepcopy(base))
    for k, v in override.items():
        inner = out.get(k)
        if isinstance(v, dict) and isinstance(inner, dict) and k not in ("env", "local_env", "simulated", "prices_usd_per_h"):
            out[k] = merge(inner, v)
        else:
            out[k] = copy.deepcopy(v)
    return out


REDACTED = "<redacted>"
_SECRET_WORDS = ("key", "identity", "password", "token", "secret", "url")


def public_config(cfg: Mapping[str, object]) -> dict[str, object]:
    """The config with its secrets replaced by "<redacted>": what may be stored with a run.

    Redacted: the values of every ``env`` table ([job] env, [[queue]] env, [offload] local_env, [offload.ssh]
    env; the names stay: which variables were set is useful, their values may be API keys),
    the notify URLs (an ntfy topic or a webhook URL is a credential), and under [offload] any
    key naming a key, identity, password, token, secret or URL (the SSH key file's path), at
    any depth.
    """
    out = copy.deepcopy({k: v for k, v in cfg.items() if not k.startswith("_")})

    def scrub(d: dict[str, object], all_keys: bool) -> None:
        for k, v in d.items():
            if isinstance(v, dict):
                if k.endswith("env"):
                    d[k] = {name: REDACTED for name in v}
                else:
                    scrub(v, all_keys)
            elif v is not None and all_keys and any(w in k.lower() for w in _SECRET_WORDS):
                d[k] = REDACTED

    job, notify, offload, queue = out.get("job"), out.get("notify"), out.get("offload"), out.get("queue")
    if isinstance(job, dict):
        scrub(job, all_keys=False)
    if isinstance(notify, dict):
        for k, v in notify.items():
            if k.endswith("_url") and v:
                notify[k] = REDACTED
    if isinstance(offload, dict):
        scrub(offload, all_keys=True)
    for item in queue if isinstance(queue, list) else []:  # [[queue]] env: a secret as [job] env is
        if isinstance(item, dict):
            scrub(item, all_keys=False)
    return out


def dump(cfg: Config) -> str:
    """The effective configuration as TOML text (for `nightshift check-config`)."""
    lines: list[str] = []
    sections: Mapping[str, object] = cfg  # walked by SCHEMA's names, each a table
    for sec in SCHEMA:
        lines.append(f"[{sec}]")
        body = sections[sec]
        assert isinstance(body, dict)
        for key, value in body.items():
            if value is None:
                lines.append(f"# {key} = (unset)")
            else:
                lines.append(f"{key} = {_toml_value(value)}")
        lines.append("")
    for item in cfg.get("queue", []):  # a config built in code may have none
        lines.append("[[queue]]")
        lines += [f"{k} = {_toml_value(v)}" for k, v in item.items() if v is not None]
        lines.append("")
    return "\n".join(lines)


def _toml_value(v: object) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        # an unset key of a nested table ([offload.ssh]) is left out: TOML has no null
        return "{ " + ", ".join(f'"{k}" = {_toml_value(x)}' for k, x in v.items() if x is not None) + " }"
    raise TypeError(type(v))
