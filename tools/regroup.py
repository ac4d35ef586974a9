#!/usr/bin/env python3
"""Issue 30: group daemon/'s modules into packages named for the parts a newcomer looks for.

Run ONCE, from the repository's top, on a clean work tree of main (it refuses otherwise):

    python3 tools/regroup.py --dry-run   # the plan, and any module the mapping does not know
    python3 tools/regroup.py             # git mv + rewrite every reference; then review and commit

It moves files with ``git mv`` (history follows), writes each new package's docstring-only
``__init__.py`` and rewrites every reference across the tracked files: import statements
(``from daemon.x import``, ``import daemon.x``, ``from daemon import x``, relative ones), dotted
names in strings and comments (monkeypatch targets, ``-m daemon.x``), ``daemon/x.py`` paths in
code, docs, units and ``.ci/run``, ``"daemon" / "x.py"`` path pieces, the dashboard's
``resources.files(...)`` package and ``[tool.setuptools.package-data]``. It commits nothing.

A module it does not know (one that landed after this mapping was written) stops it before it
changes anything, with the line to add to MOVES. It is deterministic: the same tree gives the same
result. After the move it checks what it can (no old name left, no import cycle between modules
or packages, each package's imports within what its docstring allows) and prints a summary.
"""

from __future__ import annotations

import argparse
import ast
import io
import re
import subprocess
import sys
import tokenize
from pathlib import Path

# ---------------------------------------------------------------------------------------------
# The mapping. Every entry of daemon/ (a module, a package directory or a data file) is here,
# or in STAY. A package directory moves whole, with whatever it holds (the rule for a module
# added later inside daemon/sensors/, daemon/resets/ or daemon/offload/: it moves with them).
# ---------------------------------------------------------------------------------------------
MOVES: dict[str, str] = {
    # the job and its files
    "adopt.py": "job", "ckptns.py": "job", "classify.py": "job", "control.py": "job",
    "diskfull.py": "job", "joblog.py": "job", "jobproc.py": "job", "jobrunner.py": "job",
    "outputprogress.py": "job", "progress.py": "job", "resume.py": "job", "status.py": "job",
    # the GPU: sensors, resets, the clock and its governor, the simulated card, the probe
    "sensors": "gpu", "resets": "gpu", "clockcap.py": "gpu", "diagnosis.py": "gpu",
    "governing.py": "gpu", "governor_io.py": "gpu", "probe.py": "gpu", "simgpu.py": "gpu",
    # the cloud: the backends and the offload port
    "offload": "cloud", "offloader.py": "cloud",
    # the HTTP face: API, its token, metrics, the phone text, the dashboard, the CLI's client
    "api.py": "web", "auth.py": "web", "client.py": "web", "metrics.py": "web",
    "queuecli.py": "web", "statusfmt.py": "web", "dashboard.html": "web",
    # the night: schedule, runs and queue, notifications, divergence
    "divergence.py": "night", "notify.py": "night", "queueenv.py": "night",
    "runbook.py": "night", "schedule.py": "night",
    # what the daemon is given and keeps: config, the store, the lock
    "config.py": "state", "lock.py": "state", "store.py": "state",
    # the run's states: plain values the pure rules decide over (policy/cancel.py reads them),
    # read by nearly every package; under state/ they tied policy/ and state/ in a cycle
    "states.py": "policy",
    # the core: the Supervisor and the pieces of its tick
    "supervisor.py": "core", "observation.py": "core", "decide.py": "core",
    "decisions.py": "core", "intent.py": "core", "storeguard.py": "core", "spikes.py": "core",
    "statusview.py": "core", "waitview.py": "core", "viewsource.py": "core",
    "remote_run.py": "core", "parts.py": "core", "reconfig.py": "core",
    # the Supervisor's side of a script's checkpoints (it imports policy/, which imports job/:
    # in job/ it would tie the two in a package cycle)
    "restorechain.py": "core",
    # the running service: composition root, timers, config watcher, systemd, logs
    "app.py": "service", "configwatch.py": "service", "logs.py": "service",
    "polltimer.py": "service", "sdnotify.py": "service",
    # what the nightshift command runs itself (cli.py stays: the console script's contract)
    "demo.py": "commands", "doctor.py": "commands", "offline.py": "commands",
}
# Single modules that leave their package (after which the package moves as in MOVES).
# `nightshift sensors`' report imports the reset detector and the clock cap: inside sensors/ it
# tied sensors/ (which policy/ reads THERMAL_OFF from) to resets/ and policy/ in a package cycle.
RENAMES: dict[str, str] = {
    "daemon.sensors.report": "daemon.commands.sensors_report",
}
# Stay where they are: the package's own __init__, the console script (`nightshift =
# "daemon.cli:main"`, `python -m daemon.cli` in tests and units) and the pure policies
# (daemon.policy.* is mypy-strict by that name; every package may read them).
STAY = {"__init__.py", "cli.py", "policy"}

# Each new package's docstring: what it owns and what it may import (checked after the move).
PACKAGES: dict[str, str] = {
    "job": (
        "The job and its files: one real job process and its tree (jobproc), the job port "
        "that runs one attempt at a time (jobrunner), the control file (control), "
        "progress.jsonl and output-line progress (progress, outputprogress), what the records "
        "say (status: JobFacts), how the job ended (classify), its checkpoints: namespace, "
        "adoption, --resume-from and a full disk (ckptns, adopt, resume, diskfull), and its "
        "log (joblog). It is the bottom of daemon/: it may import trainer/'s torch-free "
        "modules (protocol, format) and the standard library, and nothing else of daemon/."
    ),
    "gpu": (
        "The GPU: its sensors (sensors/), resets seen in the kernel's log and the reset log "
        "(resets/), whether resets are heat-correlated (diagnosis), the clock cap and the "
        "governor that moves it (clockcap, governor_io, governing), the probe that shows the "
        "card runs work again (probe) and the simulated 780M (simgpu). Its parts stand at "
        "two heights: sensors/, clockcap, simgpu and probe import nothing of daemon/ (policy/ "
        "and state/ read names from them); diagnosis, governor_io and governing may import "
        "daemon.policy; resets/ may also import daemon.state (the config's reset source "
        "names). Never core, night, cloud, web, service or commands."
    ),
    "cloud": (
        "The cloud: the offload backends (offload/: local, modal, ssh, what carries the job "
        "and the body that runs it remotely) and the offload port the Supervisor's remote run "
        "calls (offloader: backends in order, the launch journal, credentials refused). It "
        "may import daemon.job (the control file, adoption, progress) and daemon.policy; "
        "never core, the GPU, the night, web, service or commands."
    ),
    "web": (
        "The HTTP face: the API (api), its control token (auth), /metrics (metrics), the "
        "status as 40-column phone text and the queue's tables (statusfmt, queuecli), the "
        "dashboard page (dashboard.html, read by api) and the CLI's client of it all "
        "(client). It reads the snapshot and the store the core publishes: it may import "
        "daemon.state and daemon.policy, never the core (statusview imports statusfmt)."
    ),
    "night": (
        "The night: the schedule window (schedule), the runs, the queue and their history "
        "(runbook, queueenv: queued runs' env values), notifications (notify) and the "
        "divergence watchdog (divergence). It may import daemon.state (config, the store) "
        "and daemon.policy (its rules, the run states); never the core, which drives it."
    ),
    "state": (
        "What the daemon is given and keeps: the config schema and its validation (config), "
        "the SQLite store (store) and the one-daemon-per-state-dir lock (lock). Nearly everything reads it, "
        "so it sits low: it may import daemon.policy (queue entry checks), daemon.job "
        "(progress patterns) and daemon.gpu's simgpu (the simulated card's parameter names), "
        "nothing above them."
    ),
    "core": (
        "The core: the Supervisor (supervisor, the only writer of run state) and the pieces "
        "of its tick: what one tick saw (observation), the rules that turn it into decisions "
        "(decide) and the decisions as values (decisions, intent), what follows a loss spike "
        "(spikes), the guarded store writes (storeguard), the remote run it carries out "
        "(remote_run), a script's checkpoints restored around a restart (restorechain), the "
        "optional parts and their live reload (parts, reconfig) and the status snapshot it "
        "publishes (statusview, waitview, and viewsource: what they read of the Supervisor, "
        "as a Protocol). It may import every package below it: policy, job, gpu, cloud, "
        "night, state, web; never service or commands, which build and drive it."
    ),
    "service": (
        "The running service: the composition root (app: parts from the config, signals, "
        "uvicorn, the loop), the monotonic poll timer (polltimer), the config file watcher "
        "(configwatch), systemd's notify protocol (sdnotify) and journald logs (logs). It "
        "may import any package but commands; only commands and daemon.cli import it."
    ),
    "commands": (
        "What the nightshift command does itself, beyond asking the daemon: the offline "
        "view from the store (offline), doctor, the demo and the sensors report "
        "(sensors_report). Only daemon.cli imports it; it may import any other package."
    ),
}
# The daemon packages each package's modules may import (the docstrings' rule, checked after the
# move; a leaf sub-package counts apart from its parent: gpu/sensors is not gpu).
ALLOWED: dict[str, set[str]] = {
    "daemon.job": set(),
    "daemon.policy": {"daemon.job", "daemon.gpu.sensors"},  # ExitInfo and THERMAL_OFF
    "daemon.gpu.sensors": set(),
    "daemon.gpu": {"daemon.policy"},
    "daemon.gpu.resets": {"daemon.gpu", "daemon.policy", "daemon.state"},
    "daemon.state": {"daemon.policy", "daemon.job", "daemon.gpu"},
    "daemon.cloud.offload": {"daemon.job", "daemon.policy"},
    "daemon.cloud": {"daemon.cloud.offload", "daemon.job", "daemon.policy"},
    "daemon.web": {"daemon.state", "daemon.policy"},
    "daemon.night": {"daemon.state", "daemon.policy"},
    "daemon.core": {"daemon.policy", "daemon.job", "daemon.gpu", "daemon.gpu.sensors",
                    "daemon.gpu.resets", "daemon.cloud", "daemon.cloud.offload", "daemon.night",
                    "daemon.state", "daemon.web"},
}
ALL_BUT_COMMANDS = {"daemon.policy", "daemon.job", "daemon.gpu", "daemon.gpu.sensors",
                    "daemon.gpu.resets", "daemon.cloud", "daemon.cloud.offload", "daemon.night",
                    "daemon.state", "daemon.web", "daemon.core"}
ALLOWED["daemon.service"] = set(ALL_BUT_COMMANDS)
ALLOWED["daemon.commands"] = ALL_BUT_COMMANDS | {"daemon.service"}
ALLOWED["daemon"] = ALL_BUT_COMMANDS | {"daemon.service", "daemon.commands"}

# Tracked files whose text is rewritten. Recorded measurements and fixtures are history: left.
TEXT_SUFFIXES = {".py", ".md", ".toml", ".service", ".rules", ".sysusers", ".cfg", ".ini",
                 ".txt", ".sh", ".html", ".yml", ".yaml", ".json", ""}
SKIP_PREFIXES = ("bench/results/", "requirements/", "tools/regroup.py")
DATA_PREFIXES = ("tests/fixtures/",)  # their .py files (sshd, sshjob...) are code: rewritten


def rewritable(f: str) -> bool:
    if f.startswith(SKIP_PREFIXES) or not Path(f).is_file():
        return False
    if f.startswith(DATA_PREFIXES) and not f.endswith(".py"):
        return False
    return Path(f).suffix in TEXT_SUFFIXES or f.startswith((".ci/", "systemd/", "tools/"))


def die(msg: str) -> None:
    print(f"regroup: {msg}", file=sys.stderr)
    raise SystemExit(2)


def git(*args: str, check: bool = True) -> str:
    r = subprocess.run(["git", *args], capture_output=True, text=True)
    if check and r.returncode != 0:
        die(f"git {' '.join(args)} failed: {r.stderr.strip()}")
    return r.stdout


# ------------------------------------------------------------------------------ the plan
def inventory() -> tuple[list[str], list[str]]:
    """daemon/'s top-level entries as git tracks them, and tracked files under daemon/."""
    files = sorted(f for f in git("ls-files", "daemon").splitlines() if "__pycache__" not in f)
    top = sorted({f.split("/")[1] for f in files})
    return top, files


def plan(files: list[str]) -> tuple[dict[str, str], dict[str, str]]:
    """(old module -> new module, old path -> new path) for every tracked file under daemon/."""
    mods: dict[str, str] = {}
    paths: dict[str, str] = {}
    renamed_paths = {old.replace(".", "/") + ".py": new.replace(".", "/") + ".py"
                     for old, new in RENAMES.items()}
    for f in files:
        parts = f.split("/")
        entry = parts[1]
        if f in renamed_paths:
            new = renamed_paths[f]
        elif entry in MOVES:
            new = "/".join(["daemon", MOVES[entry], *parts[1:]])
        else:
            continue
        paths[f] = new
        if f.endswith(".py"):
            om, nm = _modname(f), _modname(new)
            mods[om] = nm
    for entry, pkg in MOVES.items():  # directories and packages as wholes
        if not entry.endswith((".py", ".html")):
            paths[f"daemon/{entry}"] = f"daemon/{pkg}/{entry}"
            mods[f"daemon.{entry}"] = f"daemon.{pkg}.{entry}"
    return mods, paths


def _modname(path: str) -> str:
    return path.removesuffix(".py").replace("/", ".").removesuffix(".__init__")


def new_module(name: str, mods: dict[str, str]) -> str:
    """A dotted name's new spelling: its longest prefix that is a moved module, replaced."""
    parts = name.split(".")
    for i in range(len(parts), 1, -1):
        head = ".".join(parts[:i])
        if head in mods:
            return ".".join([mods[head], *parts[i:]])
    return name


def new_path(path: str, paths: dict[str, str]) -> str:
    trail = path.endswith("/")
    p = path.rstrip("/")
    parts = p.split("/")
    for i in range(len(parts), 1, -1):
        head = "/".join(parts[:i])
        if head in paths:
            return "/".join([paths[head], *parts[i:]]) + ("/" if trail else "")
    return path


# ------------------------------------------------------------------------------ rewriting
DOTTED = re.compile(r"(?<![\w./-])daemon(?:\.[A-Za-z_]\w*)+")  # "-daemon.lock" is a file
# File names spelled like a module: "daemon.lock" (the state dir's lock file) is left alone
# when it is a whole quoted string (LOCK_NAME = "daemon.lock", tmp_path / "daemon.lock").
FILE_NAMES = {"daemon.lock"}


def _dotted(m: re.Match[str], mods: dict[str, str]) -> str:
    s, a, b = m.string, m.start(), m.end()
    if (m.group(0) in FILE_NAMES and a and b < len(s) and s[a - 1] in "\"'`"
            and s[b] in "\"'`"):
        return m.group(0)
    return new_module(m.group(0), mods)
PATHS = re.compile(r"(?<![\w.-])daemon/[\w.-]+(?:/[\w.-]+)*/?")
PIECES = re.compile(r"""(["'])daemon\1(?:\s*/\s*(["'])[\w.-]+\2)+""")
RESOURCES = re.compile(r"""(resources\.files\(\s*)(["'])daemon\2(\s*\)\s*(?:\.joinpath\(\s*|/\s*))"""
                       r"""(["'])([\w.-]+)\4""")


def rewrite_text(text: str, mods: dict[str, str], paths: dict[str, str]) -> str:
    text = DOTTED.sub(lambda m: _dotted(m, mods), text)
    return PATHS.sub(lambda m: new_path(m.group(0), paths), text)


def rewrite_markdown(text: str, mods: dict[str, str], paths: dict[str, str]
                     ) -> tuple[str, list[str]]:
    """Line by line; inside ``` blocks (diagrams) a longer path eats spaces from the run of
    spaces after it, so the columns to its right stay where they were."""
    out, notes, fenced = [], [], False
    for n, line in enumerate(text.split("\n"), 1):
        if line.lstrip().startswith("```"):
            fenced = not fenced
        new = rewrite_text(line, mods, paths)
        if fenced and len(new) > len(line):
            extra = len(new) - len(line)
            first = next(i for i, (a, b) in enumerate(zip(line, new, strict=False)) if a != b)
            gap = re.compile(r" {2,}").search(new, first)
            if gap and gap.end() - gap.start() - 1 >= extra:
                new = new[: gap.start()] + " " * (gap.end() - gap.start() - extra) + new[gap.end():]
            else:
                notes.append(f"line {n}: a diagram's line grew by {extra} characters: "
                             "realign it by hand")
        out.append(new)
    return "\n".join(out), notes


def rewrite_pieces(text: str, paths: dict[str, str]) -> str:
    """``"daemon" / "dashboard.html"`` and ``resources.files("daemon").joinpath("x.html")``."""
    def pieces(m: re.Match[str]) -> str:
        segs = re.findall(r"""["']([\w.-]+)["']""", m.group(0))
        new = new_path("/".join(segs), paths).split("/")
        q = m.group(1)
        return " / ".join(f"{q}{s}{q}" for s in new)

    def res(m: re.Match[str]) -> str:
        target = new_path(f"daemon/{m.group(5)}", paths)
        pkg = ".".join(target.split("/")[:-1])
        return f"{m.group(1)}{m.group(2)}{pkg}{m.group(2)}{m.group(3)}{m.group(4)}{m.group(5)}{m.group(4)}"

    return RESOURCES.sub(res, PIECES.sub(pieces, text))


def _offsets(src: str) -> list[int]:
    starts, pos = [0], 0
    for line in src.splitlines(keepends=True):
        pos += len(line)
        starts.append(pos)
    return starts


def rewrite_python(src: str, old_module: str, mods: dict[str, str], paths: dict[str, str],
                   known: set[str]) -> tuple[str, list[str]]:
    """Imports by the AST, strings and comments by their tokens, ``daemon.x.y`` chains in code
    when the file binds the name ``daemon`` by an import."""
    notes: list[str] = []
    tree = ast.parse(src)
    line0 = _offsets(src)
    edits: list[tuple[int, int, str]] = []
    in_imports: list[tuple[int, int]] = []
    binds_daemon = False
    pkg_of_file = old_module if old_module.endswith("__init__") else old_module.rsplit(".", 1)[0]
    pkg_of_file = pkg_of_file.removesuffix(".__init__")

    for node in ast.walk(tree):
        if not isinstance(node, (ast.Import, ast.ImportFrom)):
            continue
        a = line0[node.lineno - 1] + node.col_offset
        b = line0[node.end_lineno - 1] + node.end_col_offset  # type: ignore[operator]
        seg = src[a:b]
        if isinstance(node, ast.Import):
            if any(al.name.split(".")[0] == "daemon" and al.asname is None for al in node.names):
                binds_daemon = True
            new = DOTTED.sub(lambda m: new_module(m.group(0), mods), seg)
        else:
            module = node.module or ""
            if node.level:
                base = pkg_of_file.split(".")
                base = base[: len(base) - (node.level - 1)]
                module = ".".join(base + ([module] if module else []))
            if not (module == "daemon" or module.startswith("daemon.")):
                continue
            groups: dict[str, list[str]] = {}
            simple = node.level == 0
            for al in node.names:
                full = f"{module}.{al.name}"
                if full in known:  # a submodule, imported by name
                    parent, leaf = new_module(full, mods).rsplit(".", 1)
                else:
                    parent, leaf = new_module(module, mods), al.name
                if leaf != al.name:
                    simple = False
                groups.setdefault(parent, []).append(
                    leaf if (al.asname or al.name) == leaf else f"{leaf} as {al.asname or al.name}")
            if len(groups) == 1 and simple:
                (parent,) = groups
                new = re.sub(rf"^from\s+{re.escape(module)}(?![\w.])", f"from {parent}", seg)
            else:
                indent = " " * node.col_offset
                if "#" in seg:
                    notes.append(f"line {node.lineno}: an import with a comment was split; "
                                 "its comment was dropped")
                new = f"\n{indent}".join(f"from {p} import {', '.join(n)}"
                                         for p, n in groups.items())
        in_imports.append((a, b))
        if new != seg:
            edits.append((a, b, new))

    def inside_import(pos: int) -> bool:
        return any(a <= pos < b for a, b in in_imports)

    toks = list(tokenize.generate_tokens(io.StringIO(src).readline))
    for i, t in enumerate(toks):
        a = line0[t.start[0] - 1] + t.start[1]
        b = line0[t.end[0] - 1] + t.end[1]
        if inside_import(a):
            continue
        if t.type in (tokenize.STRING, tokenize.COMMENT):
            new = rewrite_text(t.string, mods, paths)
            if new != t.string:
                edits.append((a, b, new))
            if t.type == tokenize.STRING and re.search(r"daemon\.\{|daemon/\{", t.string):
                notes.append(f"line {t.start[0]}: a module or path built at run time: "
                             f"{t.string[:70]}")
        elif (binds_daemon and t.type == tokenize.NAME and t.string == "daemon"
              and not (i and toks[i - 1].string == ".")):
            j, chain = i, ["daemon"]
            while (j + 2 < len(toks) and toks[j + 1].string == "."
                   and toks[j + 2].type == tokenize.NAME):
                chain.append(toks[j + 2].string)
                j += 2
            if len(chain) > 1:
                old, new = ".".join(chain), new_module(".".join(chain), mods)
                if old != new:
                    e = toks[j]
                    edits.append((a, line0[e.end[0] - 1] + e.end[1], new))
    out = src
    for a, b, new in sorted(edits, reverse=True):
        out = out[:a] + new + out[b:]
    return rewrite_pieces(out, paths), notes


# ARCHITECTURE.md's list, in import order (a package imports only ones listed before it; gpu/'s
# sensors/ and simgpu sit below policy/ and state/, as daemon/gpu/__init__.py says).
SUMMARY = {
    "job": "the job and its files: the process, the runner, the control file, progress, "
           "checkpoints (namespace, adoption, --resume-from, a full disk), job.log",
    "policy": "the pure rules: plain values in, decisions out (where it was), and the run's "
              "states they decide over (`states.py`, moved here)",
    "gpu": "the GPU: sensors/, resets/, the clock cap and its governor, the probe, the "
           "simulated 780M",
    "state": "what the daemon is given and keeps: the config, the store, the lock",
    "night": "the night: the schedule, runs and the queue, notifications, divergence",
    "cloud": "the cloud: the offload backends (offload/) and the offload port",
    "web": "the HTTP face: the API, its token, /metrics, the phone text, the dashboard, the "
           "CLI's client",
    "core": "the Supervisor and its tick: observation, rules, decisions, the remote run, the "
            "parts and live reload, the status snapshot",
    "service": "the running service: the composition root, the poll timer, the config watcher, "
               "sd_notify, logs",
    "commands": "what `nightshift` does itself: the offline view, doctor, the demo, the sensors "
                "report",
}


def architecture_packages(text: str) -> tuple[str, bool]:
    """Under ARCHITECTURE.md's `daemon/` line: one line per package, lowest first."""
    m = re.search(r"^- `daemon/` —.*\n", text, re.M)
    if not m:
        return text, False
    lines = ["  Its packages, in import order: each imports only packages listed before it (each "
             "`__init__.py` says what it owns and may import; gpu/'s sensors/ and simgpu sit "
             "below policy/ and state/). `daemon/cli.py` is the `nightshift` command.\n"]
    lines += [f"  - `daemon/{p}/` — {what}\n" for p, what in SUMMARY.items()]
    return text[: m.end()] + "".join(lines) + text[m.end():], True


FILE_UP = re.compile(r"(__file__\)(?:\.resolve\(\))?)(\.parents\[(\d+)\]|(?:\.parent)+)")


def rewrite_file_paths(src: str, deeper: int) -> tuple[str, list[str]]:
    """A moved module's ``Path(__file__).parents[N]`` / ``.parent.parent``: ``deeper`` more
    levels up, so it names the same directory (ssh.py's PROJECT: the repo holding daemon/)."""
    notes: list[str] = []

    def up(m: re.Match[str]) -> str:
        if m.group(3) is not None:
            new = f"{m.group(1)}.parents[{int(m.group(3)) + deeper}]"
        else:
            n = m.group(2).count(".parent") + deeper
            new = m.group(1) + (f".parents[{n - 1}]" if n > 2 else ".parent" * n)
        notes.append(f"{m.group(0)} -> {new}")
        return new

    out = FILE_UP.sub(up, src) if deeper else src
    if deeper and re.search(r"dirname\([^)]*__file__", out):
        notes.append("os.path.dirname(__file__) in a module that moved: check the directory "
                     "it means by hand")
    return out, notes


def rewrite_package_data(text: str, paths: dict[str, str]) -> str:
    """Data files that moved get their new package's entry in [tool.setuptools.package-data]."""
    m = re.search(r"^\[tool\.setuptools\.package-data\]\n((?:[^\[\n].*\n|\n)*)", text, re.M)
    if not m:
        return text
    body = m.group(1)
    pats = re.search(r'^daemon\s*=\s*\[([^\]]*)\]', body, re.M)
    if not pats:
        return text
    globs = re.findall(r'"([^"]+)"', pats.group(1))
    add: dict[str, list[str]] = {}
    for old, new in sorted(paths.items()):
        if old.count("/") == 1 and not old.endswith(".py") and "." in old.split("/")[1]:
            name = old.split("/")[1]
            for g in globs:
                if Path(name).match(g):
                    add.setdefault(".".join(new.split("/")[:-1]), []).append(g)
    lines = "".join(f'"{pkg}" = [{", ".join(chr(34) + g + chr(34) for g in gs)}]\n'
                    for pkg, gs in sorted(add.items()) if f'"{pkg}"' not in body)
    return text[: m.start(1)] + body.rstrip("\n") + "\n" + lines + ("\n" if body.endswith("\n\n") else "") + text[m.end(1):]


# ------------------------------------------------------------------------------ checks
def import_graph(root: Path) -> dict[str, set[str]]:
    """The module graph as tests/test_import_cycles.py and the stop hook count it."""
    mods = {_modname(str(p.relative_to(root))): p for p in (root / "daemon").rglob("*.py")}
    g: dict[str, set[str]] = {m: set() for m in mods}
    for mod, p in mods.items():
        for node in ast.walk(ast.parse(p.read_text(), str(p))):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                subs = [f"{node.module}.{a.name}" for a in node.names
                        if f"{node.module}.{a.name}" in mods]
                names = subs if len(subs) == len(node.names) else [node.module, *subs]
            g[mod] |= {n for n in names if n in mods and n != mod and not mod.startswith(n + ".")}
    return g


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    found: list[list[str]] = []
    state: dict[str, int] = {}

    def visit(m: str, stack: list[str]) -> None:
        state[m] = 1
        for n in sorted(g.get(m, ())):
            if state.get(n) == 1:
                found.append(stack[stack.index(n):] + [n])
            elif n not in state:
                visit(n, stack + [n])
        state[m] = 2

    for m in sorted(g):
        if m not in state:
            visit(m, [m])
    return found


def package_graph(g: dict[str, set[str]], pkgs: set[str]) -> dict[str, set[str]]:
    def pkg(m: str) -> str:
        return m if m in pkgs else m.rsplit(".", 1)[0]

    pg: dict[str, set[str]] = {p: set() for p in pkgs}
    for m, deps in g.items():
        for d in deps:
            if pkg(d) != pkg(m):  # a child package's module importing its parent's counts
                pg[pkg(m)].add(pkg(d))
    return pg


def layering(g: dict[str, set[str]], pkgs: set[str]) -> tuple[list[str], dict[str, set[str]]]:
    """Cycles between modules and between packages, and imports a docstring does not allow."""
    problems = ["import cycle between modules: " + " -> ".join(c) for c in cycles(g)]
    pg = package_graph(g, pkgs)
    problems += ["import cycle between packages: " + " -> ".join(c) for c in cycles(pg)]
    for p, deps in sorted(pg.items()):
        for d in sorted(deps - ALLOWED.get(p, deps)):
            why = sorted(f"{m} -> {n}" for m, ns in g.items() for n in ns
                         if (m.rsplit(".", 1)[0] == p or m == p) and
                         (n == d or n.rsplit(".", 1)[0] == d))
            problems.append(f"{p} imports {d}, which its docstring does not allow: "
                            f"{', '.join(why[:4])}")
    return problems, pg


# ------------------------------------------------------------------------------ main
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")
    args = ap.parse_args()

    root = Path(git("rev-parse", "--show-toplevel").strip())
    if not (root / "daemon" / "supervisor.py").exists() and (root / "daemon" / "core").exists():
        die("already regrouped: daemon/core/ exists and daemon/supervisor.py does not. "
            "Nothing to do (it refuses to run twice).")
    import os
    os.chdir(root)
    existing = [p for p in PACKAGES if Path("daemon", p).exists()]
    if existing:
        die(f"already regrouped, or a name is taken: {', '.join('daemon/' + p for p in existing)} "
            "exists. It refuses to run twice; start from a clean checkout of main.")
    top, files = inventory()
    taken = [f"daemon/{p}/{e}" for e, p in MOVES.items() if e in top and Path("daemon", p, e).exists()]
    if taken:
        die("a move's destination already exists (run twice, or a new module took the name): "
            + ", ".join(taken))
    unknown = [e for e in top if e not in MOVES and e not in STAY]
    if unknown:
        die("these entries of daemon/ are not in the mapping; add each to MOVES in "
            "tools/regroup.py (\"name\": \"package\") or to STAY, then run again:\n"
            + "\n".join(f'    "{e}": "<{"|".join(PACKAGES)}>",' for e in unknown))
    missing = [e for e in MOVES if e not in top]
    untracked = [p for p in git("ls-files", "--others", "--exclude-standard", "daemon").splitlines()]
    if untracked:
        die("untracked files in daemon/ (commit or remove them first): " + ", ".join(untracked))
    if not args.dry_run and git("status", "--porcelain", "--untracked-files=no").strip():
        die("the work tree has uncommitted changes: run it on a clean checkout of main.")
    for old in RENAMES:
        if old.replace(".", "/") + ".py" not in files:
            die(f"{old} is in RENAMES but daemon/{old[7:].replace('.', '/')}.py does not exist")

    mods, paths = plan(files)
    known = {_modname(f) for f in files if f.endswith(".py")}

    print("regroup: the plan")
    by_pkg: dict[str, list[str]] = {}
    for e, p in MOVES.items():
        if e in top:
            by_pkg.setdefault(p, []).append(e + ("/" if (root / "daemon" / e).is_dir() else ""))
    for old, new in RENAMES.items():
        by_pkg.setdefault(new.split(".")[1], []).append(f"{old[7:].replace('.', '/')}.py -> "
                                                        f"{new.split('.')[-1]}.py")
    for p in PACKAGES:
        print(f"  daemon/{p}/: {', '.join(sorted(by_pkg.get(p, [])))}")
    print(f"  stay in daemon/: {', '.join(sorted(e for e in top if e in STAY))}")
    if missing:
        print(f"  (in the mapping but gone from main, skipped: {', '.join(missing)})")
    if args.dry_run:  # the checks of step 4, on the current tree's imports renamed
        g = {new_module(m, mods): {new_module(n, mods) for n in ns}
             for m, ns in import_graph(root).items()}
        pkgs = {new_module(_modname(f), mods) for f in files if f.endswith("__init__.py")}
        problems, _ = layering(g, pkgs | {f"daemon.{p}" for p in PACKAGES})
        if problems:
            print("\nregroup: PROBLEMS the move would leave (fix the mapping first):\n"
                  + "\n".join("  " + p for p in problems))
            return 1
        print("\nregroup: no import cycle between modules or packages; each package's imports "
              "within its docstring's rule")
        return 0

    # 1. Rewrite the references, in the files where they are now (their old paths).
    tracked = [f for f in git("ls-files").splitlines() if rewritable(f)]
    changed: list[str] = []
    all_notes: list[str] = []
    for f in tracked:
        try:
            text = Path(f).read_text()
        except UnicodeDecodeError:
            continue
        if f.endswith(".py"):
            new, notes = rewrite_python(text, _modname(f), mods, paths, known)
            new, ups = rewrite_file_paths(new, paths.get(f, f).count("/") - f.count("/"))
            all_notes += [f"{f}: {n}" for n in notes + ups]
        elif f.endswith(".md"):
            new, notes = rewrite_markdown(text, mods, paths)
            all_notes += [f"{f}: {n}" for n in notes]
        else:
            new = rewrite_pieces(rewrite_text(text, mods, paths), paths)
        if f == "pyproject.toml":
            new = rewrite_package_data(new, paths)
        if f == "ARCHITECTURE.md":
            new, ok = architecture_packages(new)
            if not ok:
                all_notes.append("ARCHITECTURE.md: no '- `daemon/` —' line under '## Packages': "
                                 "add the package list by hand (the __init__ docstrings)")
        if new != text:
            Path(f).write_text(new)
            changed.append(f)

    # 2. Move: single renamed modules first, then whole entries into their packages.
    for p in PACKAGES:
        Path("daemon", p).mkdir(exist_ok=True)
    for old, new in RENAMES.items():
        git("mv", old.replace(".", "/") + ".py", new.replace(".", "/") + ".py")
    for e, p in MOVES.items():
        if e in top:
            git("mv", f"daemon/{e}", f"daemon/{p}/{e}")
    for p, doc in PACKAGES.items():
        init = Path("daemon", p, "__init__.py")
        init.write_text('"""' + _wrap(doc) + '"""\n')
        git("add", str(init))
    changed = [paths.get(f, f) for f in changed]

    # 3. Imports sorted as ruff's isort wants them (only the I rule: it reorders, nothing else).
    pyfiles = [f for f in changed if f.endswith(".py")]
    r = subprocess.run([sys.executable, "-m", "ruff", "check", "--select", "I", "--fix",
                        "--quiet", *pyfiles], capture_output=True, text=True)
    if r.returncode not in (0, 1):
        all_notes.append("ruff's import sorting did not run (is ruff installed in this python?): "
                         "run `python -m ruff check --select I --fix daemon tests bench tools`")

    # 4. Checks.
    g = import_graph(root)
    pkgs = {_modname(str(p.relative_to(root))) for p in (root / "daemon").rglob("__init__.py")}
    problems, pg = layering(g, pkgs)
    old_names = sorted(mods)
    stale = re.compile(r"(?<![\w.])(" + "|".join(re.escape(m) for m in
                                                 sorted(old_names, key=len, reverse=True))
                       + r")(?![\w])")
    left: list[str] = []
    for f in git("ls-files").splitlines():
        if not rewritable(f):
            continue
        try:
            text = Path(f).read_text()
        except UnicodeDecodeError:
            continue
        for n, line in enumerate(text.splitlines(), 1):
            # what the text rules would still change (file names like "daemon.lock" are not)
            if stale.search(line) and rewrite_text(line, mods, paths) != line:
                left.append(f"{f}:{n}: {line.strip()[:100]}")
    print(f"\nregroup: moved {len(paths)} paths into {len(PACKAGES)} packages, rewrote "
          f"{len(changed)} files, wrote {len(PACKAGES)} __init__.py (docstring only).")
    print("package imports after the move (each within its docstring's rule unless listed below):")
    for p, deps in sorted(pg.items()):
        if deps:
            print(f"  {p} -> {', '.join(sorted(deps))}")
    for note in all_notes:
        print(f"  note: {note}")
    if left:
        print(f"\nregroup: {len(left)} lines may still name an old module (a variable called "
              "`daemon`, or prose): check each by hand:")
        print("\n".join("  " + x for x in left[:60]))
    if problems:
        print("\nregroup: PROBLEMS:\n" + "\n".join("  " + p for p in problems))
    print("\nnext: review `git status` / `git diff --stat HEAD`, run the checks (ruff, "
          "tests/test_import_cycles.py, the fast tests), then `git add -A daemon && git commit -a`.")
    return 1 if problems else 0


def _wrap(text: str) -> str:
    import textwrap
    return "\n".join(textwrap.wrap(text, 96)) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
