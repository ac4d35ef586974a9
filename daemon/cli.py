"""The `nightshift` command: the daemon (`run`), its clients, and the only place where errors
become exit codes (EXIT_CODES below, shown by `nightshift --help`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from daemon.policy.cfgtypes import Config
from daemon.state import config as config_mod
from daemon.state.config import EX_CONFIG, ConfigError

log = logging.getLogger("nightshift")
T = TypeVar("T")

CONTROL_ACTIONS = ("pause", "resume", "checkpoint", "offload", "stop")
DESCRIPTION = ("nightshift supervises one training job overnight on a flaky GPU: it pauses the "
               "job before the chip overheats, resumes it after a GPU reset from the newest "
               "checkpoint, and can move it to the cloud. `nightshift run` is the daemon; the "
               "other commands talk to it or inspect this machine.")
EXIT_CODES = """exit codes:
  0    success
  1    another failure (the message says what)
  2    wrong command-line usage
  75   another daemon already holds the state directory or the checkpoint directory
  78   the configuration is invalid (the message names the key and the file)
  128+N  the daemon was stopped by signal N (143 = SIGTERM)

The config is found in this order: -c FILE, $NIGHTSHIFT_CONFIG,
$CONFIGURATION_DIRECTORY/config.toml (systemd), ./config.toml,
~/.config/nightshift/config.toml, /etc/nightshift/config.toml."""
CONTROL_HELP = {
    "pause": "pause the job at the next step boundary (it stays paused until you resume it)",
    "resume": "lift your pause, or continue a stopped run from its newest checkpoint",
    "checkpoint": "ask the job for a checkpoint now",
    "offload": "move the job to the configured cloud backend now",
    "stop": "checkpoint and stop the job; the run can be resumed later",
}


def _load(path: str | None) -> Config:
    return config_mod.load(config_mod.find_config(path))


def _load_client(path: str | None) -> Config:
    """The config a client command (status, pause, logs, queue ...) talks through.

    ./config.toml is looked up before ~/.config and /etc, so right after the README's install
    steps (which leave you in the checkout, next to the repo's own config.toml) a client found
    ./state -- no daemon, no token -- instead of the service's. When the config came from
    that ./config.toml lookup (no -c, no $NIGHTSHIFT_CONFIG) and no daemon serves its state dir,
    the next candidate whose state dir has a live daemon (its api.json) is used, and said."""
    from daemon.web import client
    found = config_mod.find_config(path)
    cfg = config_mod.load(found)
    if path or os.environ.get("NIGHTSHIFT_CONFIG") or found != Path("config.toml") \
            or client.served_address(cfg["daemon"]["state_dir"]) is not None:
        return cfg
    cands = config_mod.config_candidates()
    for cand in cands[cands.index(found) + 1:]:
        try:
            other = config_mod.load(cand) if cand.exists() else None
        except (ConfigError, OSError):
            continue
        if other is not None and client.served_address(other["daemon"]["state_dir"]) is not None:
            print(f"nightshift: using {cand} (its daemon is running; ./config.toml's state dir "
                  f"{cfg['daemon']['state_dir']} has none; -c FILE chooses)", file=sys.stderr)
            return other
    return cfg


def _token_file(cfg: Config) -> str:
    """The token a client sends: the configured file, or -- when the daemon ran on a read-only
    state dir and had to create its token elsewhere -- the one in that state dir's fallback."""
    from daemon.state.lock import fallback_dir
    configured = cfg["api"]["token_file"]
    if not os.path.exists(configured):
        fb = fallback_dir(cfg["daemon"]["state_dir"]) / "token"
        if fb.exists():
            return str(fb)
    return configured


def _base_url(cfg: Config) -> str:
    """Where the daemon is serving: the address it wrote to <state_dir>/api.json when it started
    (a port edited in the config waits for a restart, so the file's port may not be live yet),
    else the configured one."""
    from daemon.web import client
    client.set_config_path(cfg.get("_path"))  # a "not running" message names its service
    host, port = cfg["api"]["host"], cfg["api"]["port"]
    served = client.served_address(cfg["daemon"]["state_dir"])
    if served is not None:
        host, port = served
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"  # a wildcard bind is reached through loopback from this machine
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


def cmd_run(args: argparse.Namespace) -> int:
    from daemon.service import app, logs
    from daemon.state.lock import (
        EX_TEMPFAIL,
        StateDirLocked,
        acquire_checkpoint_lock,
        acquire_state_lock,
    )

    cfg = _load(args.config)
    logs.setup(cfg["daemon"]["log_level"])
    if args.resume_from:  # verified before anything starts: never a silent fresh start
        from daemon.job.resume import BadResumePath, check_resume_path, check_script_resume
        from daemon.policy.cfgtypes import workdir
        try:
            glob = cfg["job"]["checkpoint_glob"]
            own = check_script_resume(args.resume_from, workdir(cfg["job"]), glob) if glob else None
            args.resume_from = str(own or check_resume_path(args.resume_from))
        except BadResumePath as e:
            print(f"nightshift: {e}", file=sys.stderr)
            return 1
    try:  # before anything else touches the state dir: one daemon per state dir
        lock = acquire_state_lock(cfg["daemon"]["state_dir"])
    except StateDirLocked as e:
        print(f"nightshift: {e}", file=sys.stderr)
        return EX_TEMPFAIL
    try:  # and one per checkpoint dir (CheckpointDirLocked is a StateDirLocked)
        ckpt_lock = acquire_checkpoint_lock(cfg["job"]["checkpoint_dir"])
    except StateDirLocked as e:
        lock.release()
        print(f"nightshift: {e}", file=sys.stderr)
        return EX_TEMPFAIL
    if lock.fallback is not None:  # a read-only or full state dir: run anyway, say what and where
        fb = lock.path.parent
        cfg["daemon"]["_fallback_dir"] = str(fb)  # run files, token, api.json (Supervisor, app)
        log.error("cannot write the state dir %s: %s. Running anyway: the lock, this run's files "
                  "(progress, control, job.log) and a new token are in %s; the store keeps its "
                  "state in memory (lost at exit); checkpoints stay in %s. Fix: make %s writable "
                  "(or free space), or set [daemon] state_dir to a writable dir, then restart",
                  cfg["daemon"]["state_dir"], lock.fallback.strerror, fb,
                  cfg["job"]["checkpoint_dir"], cfg["daemon"]["state_dir"])
    log.info("nightshiftd starting with %s", cfg["_path"])
    try:
        with lock:
            return asyncio.run(app.serve(cfg, new_run=args.new, resume_from=args.resume_from))
    finally:
        if ckpt_lock is not None:
            ckpt_lock.release()


def cmd_check_config(args: argparse.Namespace) -> int:
    cfg = _load(args.config)
    print(f"# {cfg['_path']}: valid")
    print(config_mod.dump(cfg))
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    from daemon.commands.doctor import diagnose_machine, report

    text, code = report(diagnose_machine(_load(args.config)), as_json=args.json)
    print(text)
    return code


def cmd_sensors(args: argparse.Namespace) -> int:
    from daemon.commands.sensors_report import sensors_report

    cfg = _load(args.config)
    text, code = sensors_report(cfg)
    print(text)
    return code


def _no_daemon(cfg: Config) -> bool:
    """No daemon serves this state dir (its api.json is gone or names a dead pid): the read
    commands then read the store on disk (daemon/commands/offline.py)."""
    from daemon.web import client
    return client.served_address(cfg["daemon"]["state_dir"]) is None


def _offline(cfg: Config, read: Callable[[], T]) -> tuple[T | str, int]:
    """(what ``read`` returned, 0) from the store, with a note on stderr; (message, 1) when it
    cannot be read."""
    from daemon.commands import offline
    from daemon.web import client
    try:
        text = read()
    except offline.NoStore as e:
        return client._not_running(_base_url(cfg), str(e))[0], 1
    print(offline.note(cfg), file=sys.stderr)
    return text, 0


def cmd_status(args: argparse.Namespace) -> int:
    from daemon.commands import offline
    from daemon.web import client

    cfg = _load_client(args.config)
    if _no_daemon(cfg):  # the last known state, marked as such; exit 1: it is not running
        text, code = _offline(cfg, lambda: offline.status(cfg, args.json))
        print(text)
        if code == 0 and not args.json:
            print(client._not_running(_base_url(cfg), "no daemon serves this state dir")[0])
        return 1
    text, code = client.status(_base_url(cfg), json_out=args.json)
    print(text)
    return code


def cmd_events(args: argparse.Namespace) -> int:
    from daemon.commands import offline
    from daemon.web import client

    cfg = _load_client(args.config)
    if _no_daemon(cfg):
        text, code = _offline(cfg, lambda: client.format_events(
            offline.events(cfg, args.limit, args.kind), show_all=args.all or bool(args.kind)))
    else:
        text, code = client.events(_base_url(cfg), args.limit, args.kind, show_all=args.all)
    print(text)
    return code


def cmd_control(args: argparse.Namespace) -> int:
    from daemon.web import client

    cfg = _load_client(args.config)
    text, code = client.control(_base_url(cfg), _token_file(cfg), args.command)
    print(text)
    return code


def cmd_cancel(args: argparse.Namespace) -> int:
    from daemon.web import client

    query = ""
    if args.target is not None:
        t = args.target.strip()
        key = "queued" if t.startswith("#") else "run"
        if not t.lstrip("#").isdigit() or int(t.lstrip("#")) < 1:
            print(f"nightshift cancel: {args.target!r} is neither a run number (`nightshift runs`) "
                  "nor a queued entry like '#3' (`nightshift queue`)", file=sys.stderr)
            return 2
        query = f"?{key}={int(t.lstrip('#'))}"
    cfg = _load_client(args.config)
    text, code = client.control(_base_url(cfg), _token_file(cfg), "cancel", query)
    print(text)
    return code


def cmd_runs(args: argparse.Namespace) -> int:
    from daemon.commands import offline
    from daemon.web import queuecli

    cfg = _load_client(args.config)
    if _no_daemon(cfg):
        try:
            text, code = _offline(cfg, lambda: queuecli.seeds_table(offline.runs(cfg, args.against))
                                  if args.narrow else queuecli.format_runs(offline.runs(cfg, args.against),
                                                                           args.json, args.wide))
        except KeyError as e:
            text, code = f"nightshift runs: {e.args[0]}", 1
    else:
        text, code = queuecli.show_runs(_base_url(cfg), json_out=args.json, against=args.against,
                                        wide=args.wide, narrow=args.narrow)
    print(text)
    return code


def cmd_queue(args: argparse.Namespace) -> int:
    from daemon.web import queuecli

    cfg = _load_client(args.config)
    base, token = _base_url(cfg), _token_file(cfg)
    if args.op is None and _no_daemon(cfg):
        from daemon.commands import offline
        q, code = _offline(cfg, lambda: offline.queue(cfg))
        text = q if isinstance(q, str) else (json.dumps({"queue": q}, indent=2) if args.json
                                             else queuecli.format_queue(q, args.wide))
    elif args.op is None:
        text, code = queuecli.show_queue(base, wide=args.wide, json_out=args.json)
    elif args.op == "add":
        command = [c for c in args.cmd if c != "--"]
        if not command:
            print("nightshift queue add: give the command after --, e.g. "
                  "nightshift queue add --name lr3e-4 -- python train.py --lr 3e-4", file=sys.stderr)
            return 2
        env = {}
        for kv in args.env or []:
            k, sep, v = kv.partition("=")
            if not sep or not k:
                print(f"nightshift queue add: --env {kv!r} is not K=V", file=sys.stderr)
                return 2
            env[k] = v
        text, code = queuecli.edit_queue(base, token, "add", name=args.name, command=command, env=env)
    elif args.op == "remove":
        text, code = queuecli.edit_queue(base, token, "remove", id=args.id)
    else:
        text, code = queuecli.edit_queue(base, token, "move", id=args.id, to=args.to)
    print(text)
    return code


def cmd_logs(args: argparse.Namespace) -> int:
    from daemon.job import joblog

    cfg = _load_client(args.config)
    state = cfg["daemon"]["state_dir"]
    from daemon.state.lock import fallback_dir  # a daemon on a read-only state dir keeps runs there
    fb = fallback_dir(state)
    if joblog.run_ids(fb) and (not joblog.run_ids(state) or joblog.runs_dir(fb).stat().st_mtime
                               > joblog.runs_dir(state).stat().st_mtime):  # the newer runs
        state = str(fb)
    run = args.run
    if run is None and state == cfg["daemon"]["state_dir"]:  # the running run, not the highest number
        from daemon.commands import offline
        run = offline.running_run(cfg)
        if run is not None and run not in joblog.run_ids(state):
            run = None
    try:
        path = joblog.log_path(state, run)
    except PermissionError as e:
        return _not_readable("nightshift", f"the job's log: {e}")
    except FileNotFoundError as e:
        print(f"nightshift: {e.args[0] if e.args else e}", file=sys.stderr)
        return 1
    for line in joblog.last_lines(path, args.lines):
        print(line)
    if args.follow:
        sys.stdout.flush()
        # --run N stays on run N; otherwise follow the queue onto each next run
        lines = joblog.follow(path) if args.run is not None else \
            joblog.follow_runs(state, int(path.parent.name))
        for line in lines:
            print(line, flush=True)
    return 0


def _not_readable(who: str, what: str) -> int:
    """The state dir is the daemon's (mode 0700): a reader who is someone else is told how."""
    print(f"{who}: cannot read {what}; run this as the daemon's user or with sudo", file=sys.stderr)
    return 1


def _default_run(cfg: Config) -> int | None:
    """The run a command means when none is named: the unfinished one, else the newest."""
    from daemon.commands import offline
    from daemon.job import joblog
    run = offline.running_run(cfg)
    if run is None:
        ids = joblog.run_ids(cfg["daemon"]["state_dir"])
        run = ids[-1] if ids else None
    return run


def cmd_checkpoints(args: argparse.Namespace) -> int:
    from daemon.commands import ckptcmd

    cfg = _load_client(args.config)
    run = args.run if args.run is not None else _default_run(cfg)
    if run is None:
        print(f"nightshift checkpoints: no run yet in {cfg['daemon']['state_dir']}", file=sys.stderr)
        return 1
    try:
        got = ckptcmd.entries(cfg, run)
    except PermissionError as e:
        return _not_readable("nightshift checkpoints", str(e.filename))
    print(ckptcmd.as_json(run, got) if args.json else ckptcmd.format_entries(run, got))
    return 0


def cmd_restore(args: argparse.Namespace) -> int:
    from daemon.commands import ckptcmd, offline
    from daemon.state.lock import StateDirLocked, acquire_state_lock

    cfg = _load_client(args.config)
    state = cfg["daemon"]["state_dir"]
    stop_first = ("stop it first (`systemctl stop nightshiftd`, `nightshift stop` then Ctrl-C on "
                  "`nightshift run`), then run this again; the next start resumes from the step you chose")
    if not _no_daemon(cfg):
        print(f"nightshift restore: the daemon is running on {state}: it owns the run's checkpoints "
              f"while it runs; {stop_first}", file=sys.stderr)
        return 1
    try:
        lock = acquire_state_lock(state)
    except StateDirLocked as e:
        print(f"nightshift restore: a daemon holds {state} (pid {e.pid}); {stop_first}", file=sys.stderr)
        return 1
    with lock:
        try:
            message = ckptcmd.restore(cfg, args.run, args.step, args.force)
        except ckptcmd.CannotRestore as e:
            print(f"nightshift restore: {e}", file=sys.stderr)
            return 1
    print(f"run {args.run}: {message}")
    print(ckptcmd.next_step_hint(cfg, args.run, offline.running_run(cfg)))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from daemon.commands import demo

    return demo.main(args)


def build_parser() -> argparse.ArgumentParser:
    import textwrap
    p = argparse.ArgumentParser(prog="nightshift", description=textwrap.fill(DESCRIPTION, 78),
                                epilog=EXIT_CODES,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def with_config(sp: argparse.ArgumentParser, nested: bool = False) -> argparse.ArgumentParser:
        # nested (queue add/remove/move): no default, so `queue -c FILE add` keeps FILE
        # the same places, in the same order, as the epilog (config.find_config)
        sp.add_argument("-c", "--config", help="config file (default: the first of "
                        "$NIGHTSHIFT_CONFIG, $CONFIGURATION_DIRECTORY/config.toml (systemd), "
                        "./config.toml, ~/.config/nightshift/config.toml, "
                        "/etc/nightshift/config.toml)",
                        **({"default": argparse.SUPPRESS} if nested else {}))  # type: ignore[arg-type]
        return sp

    r = with_config(sub.add_parser("run", help="run the daemon in the foreground (what systemd "
                                   "starts); it continues the unfinished run, if any"))
    r.add_argument("--new", action="store_true", help="start a new run instead of continuing the "
                   "unfinished one (its checkpoints stay where they are)")
    r.add_argument("--resume-from", metavar="PATH", help="start a new run from this checkpoint")
    r.set_defaults(fn=cmd_run)
    d = sub.add_parser("demo", help="the whole story on a simulated GPU, in under a minute")
    d.add_argument("--workdir", help="where to put the demo's files (default: a temp dir)")
    d.add_argument("--long", action="store_true", help="the longer story: six times the steps "
                   "and two GPU resets (about four and a half minutes)")
    d.add_argument("--fast", action="store_true", help=argparse.SUPPRESS)  # the default now
    d.add_argument("--governor", action="store_true", help='with [thermal] governor = "clock": '
                   "the simulated chip held at the clock it sustains instead of pausing")
    d.add_argument("--governor-chip-pause-only", action="store_true", help=argparse.SUPPRESS)  # bench A/B
    d.set_defaults(fn=cmd_demo)
    with_config(sub.add_parser("check-config", help="validate and print the effective configuration")
                ).set_defaults(fn=cmd_check_config)
    dr = with_config(sub.add_parser("doctor", help="check this machine for what makes a 780M "
                                    "night fail, with the fix for each (exit 1 on a problem)"))
    dr.add_argument("--json", action="store_true", help="the checks as JSON")
    dr.set_defaults(fn=cmd_doctor)
    with_config(sub.add_parser("sensors", help="show the sensors and reset sources found")
                ).set_defaults(fn=cmd_sensors)
    s = with_config(sub.add_parser("status", help="the daemon's status"))
    s.add_argument("--json", action="store_true", help="the whole status document as JSON "
                   "(docs/api.md), instead of the 40-column card")
    s.set_defaults(fn=cmd_status)
    e = with_config(sub.add_parser("events", help="recent events, newest first"))
    e.add_argument("--limit", type=int, default=20, metavar="N",
                   help="how many of the newest events (default 20)")
    e.add_argument("--kind", help="only events of this kind (e.g. paused_hot, reset, state)")
    e.add_argument("--all", action="store_true", help="also the events another one already says "
                   "(a thermal pause's state change and hold)")
    e.set_defaults(fn=cmd_events)
    rs = with_config(sub.add_parser("runs", help="every run with its fingerprint: best loss, "
                                    "where the climb started, what changed"))
    rs.add_argument("--json", action="store_true", help="the runs as JSON (GET /runs)")
    rs.add_argument("--wide", action="store_true", help="every column in full (the default fits 80 "
                    "columns: the common start of the commands once, each run's changes in full)")
    rs.add_argument("--narrow", action="store_true", help="the seeds' table in 40 columns (a phone): "
                    "what changed, best loss, where the climb began, the loss as a sparkline")
    rs.add_argument("--against", type=int, metavar="N", help="what each run changed against run N "
                    "(default: the first run of the night)")
    rs.set_defaults(fn=cmd_runs)
    q = with_config(sub.add_parser("queue", help="the night's queue of runs (no argument: show it)"))
    q.add_argument("--wide", action="store_true", help="whole commands, one line each (the default "
                   "fits 80 columns: the common start once, each entry's own arguments in full)")
    q.add_argument("--json", action="store_true", help="the queue as JSON (GET /queue)")
    qs = q.add_subparsers(dest="op", metavar="add|remove|move")
    qa = with_config(qs.add_parser("add", help="queue a run: nightshift queue add [--name N] "
                                   "[--env K=V ...] -- COMMAND..."), nested=True)
    qa.add_argument("--name", help="the run's name in `nightshift runs` (default: from the command)")
    qa.add_argument("--env", action="append", metavar="K=V",
                    help="an environment variable for this run; repeat for more")
    qa.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- COMMAND",
                    help="the run's command, after --")
    qr = with_config(qs.add_parser("remove", help="remove a waiting run by its #"), nested=True)
    qr.add_argument("id", type=int, help="the waiting run's # (`nightshift queue` lists them)")
    qm = with_config(qs.add_parser("move", help="move a waiting run to a position (1 = next)"), nested=True)
    qm.add_argument("id", type=int, help="the waiting run's # (`nightshift queue` lists them)")
    qm.add_argument("to", type=int, help="its new position (1 = next)")
    q.set_defaults(fn=cmd_queue)
    lg = with_config(sub.add_parser("logs", help="the job's output (job.log of the running run, else the newest; -f follows onto the next queued run)"))
    lg.add_argument("-f", "--follow", action="store_true", help="keep printing new output")
    lg.add_argument("--run", type=int, metavar="N", help="the run's number (default: the newest)")
    lg.add_argument("-n", "--lines", type=int, default=50, metavar="N",
                    help="how many of the last lines to print first (default 50)")
    lg.set_defaults(fn=cmd_logs)
    ck = with_config(sub.add_parser("checkpoints", help="a run's checkpoints on disk: step, when, "
                                    "good/suspect/set aside/failed/torn and why (works while the daemon runs)"))
    ck.add_argument("run", nargs="?", type=int, metavar="RUN", help="the run's number (default: the "
                    "unfinished run, else the newest)")
    ck.add_argument("--json", action="store_true", help="the list as JSON")
    ck.set_defaults(fn=cmd_checkpoints)
    rt = with_config(sub.add_parser("restore", help="make a checkpoint of step N what run RUN resumes "
                                    "from next, a suspect one too with --force (the daemon stopped)"))
    rt.add_argument("run", type=int, metavar="RUN", help="the run's number (`nightshift runs`)")
    rt.add_argument("--step", type=int, required=True, metavar="N",
                    help="the checkpoint's step (`nightshift checkpoints RUN` lists them)")
    rt.add_argument("--force", action="store_true", help="also a checkpoint that is suspect (written "
                    "after a divergence), failed to load, or set aside")
    rt.set_defaults(fn=cmd_restore)
    cn = with_config(sub.add_parser("cancel", help="end the current run (or RUN) after a durable "
                                    "checkpoint; the queue moves on. '#N' removes queued entry N "
                                    "(needs the API token)"))
    cn.add_argument("target", nargs="?", metavar="RUN|#N", help="the run to cancel (default: the "
                    "current one), or '#N' for waiting queue entry N")
    cn.set_defaults(fn=cmd_cancel)
    for action in CONTROL_ACTIONS:
        with_config(sub.add_parser(action, help=CONTROL_HELP[action] + " (needs the API token)")
                    ).set_defaults(fn=cmd_control)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code = args.fn(args)
        sys.stdout.flush()  # a closed pipe shows here, inside the handler, not at exit
        return code
    except BrokenPipeError:
        # the reader stopped early (`nightshift status | head -3`): that is not an error to
        # print; stdout goes to /dev/null so the interpreter's final flush is quiet too
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + 13  # as if stopped by SIGPIPE, like other tools in a pipe
    except ConfigError as e:
        print(f"nightshift: configuration error: {e}", file=sys.stderr)
        return EX_CONFIG
    except KeyboardInterrupt:
        return 130
    except OSError as e:
        print(f"nightshift: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
