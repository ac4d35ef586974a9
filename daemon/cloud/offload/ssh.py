"""The SSH backend: the job on a rented GPU box (RunPod, Lambda, a friend's workstation) over SSH.

Remote layout under ``remote_dir`` (R):

    R/src/{daemon,trainer}/      this project's code (the remote runner, trainer/), by manifest
    R/data/<rel>/                declared data dirs, by manifest, shared by every run
    R/manifests/*.json           what each sync put there (size, mtime, hash)
    R/setup/<fingerprint>.done   setup_command ran for this environment (and its .log)
    R/runs/<run_key>/            the run's "volume", as daemon.cloud.offload.remote expects it:
        work/                    the job's workdir (excludes applied), data dirs symlinked in
        ckpt/ run/ spec.json     checkpoints, progress.jsonl + control.json, the job spec
        runner.json status.json  the detached runner's pid + start time; its result
        remote.log job.log

The runner (``python -m daemon.cloud.offload.remote``, the same body Modal runs) is started in its own
session with stdin/stdout detached, so it survives the SSH connection dropping and the daemon
restarting. On a box whose logind kills a user's processes at the session's end
(KillUserProcesses=yes; setsid does not escape that), the launch asks the box first and starts
the runner under ``systemd-run --user --scope`` when linger makes that survive, else warns with
the fix (daemon.policy.remote.detach_plan). Its pid and kernel start time (clock ticks since boot, /proc/PID/stat field 22) are
the call id: ``ssh:<host>:<port>:<run_key>:<pid>:<ticks>``, so a new backend object re-attaches
from the id alone and a recycled pid is never taken for the job. Polling runs no command: a few
reads over a kept SFTP session (/proc/<pid>/stat for liveness, status.json, runner.json, the
tail of progress.jsonl); nothing on the box needs more than POSIX sh and the configured python.

A runner that is gone without a result, or a job killed by a signal, is ``preempted``: the caller
launches again and the job resumes from the newest checkpoint on the box. Cancel asks a trainer/
job for a final checkpoint through its control file, then TERM, a bounded wait, and KILL, to the
runner's process group and the job's (only those).
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import re
import shlex
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import TYPE_CHECKING

from daemon.cloud.offload.base import (
    JobSpec,
    OffloadBackend,
    OffloadError,
    RemoteStatus,
    UploadResult,
    progress_summary,
)
from daemon.cloud.offload.carry import Carry, manifest_name, newest_adopted_dir
from daemon.cloud.offload.carry import from_config as carry_from_config
from daemon.cloud.offload.remote import CANCEL_MARK, PROJECT
from daemon.cloud.offload.sshlink import SshLink
from daemon.cloud.offload.sync import (
    TMP_PREFIX,
    SyncResult,
    push_tree,
    put_file,
    write_remote,
)
from daemon.policy.cfgtypes import Config, SshConfig
from daemon.policy.remote import DetachPlan, detach_plan

if TYPE_CHECKING:  # asyncssh is imported where a link is used: a daemon without ssh never loads it
    from asyncssh import SFTPClient, SSHClientConnection

SOURCES = ("daemon", "trainer")
# files whose content defines the remote environment, besides setup_command itself
ENV_FILES = ("requirements.txt", "requirements-gpu.txt", "pyproject.toml", "setup.py", "setup.cfg",
             "environment.yml", "uv.lock", "poetry.lock")
SETUP_TIMEOUT_S = 3 * 3600.0
POLL_TIMEOUT_S = 60.0
TAIL_BYTES = 65536
_SEP = "@@nightshift@@"

# Started through SSH with cwd = the run dir: detaches the runner, prints "<pid> <start ticks>".
LAUNCHER = """\
import json, os, subprocess, sys, time

log = open("remote.log", "ab")
p = subprocess.Popen([sys.executable, "-m", "daemon.cloud.offload.remote", "--spec", "spec.json",
                      "--volume", os.getcwd()], stdout=log, stderr=subprocess.STDOUT,
                     stdin=subprocess.DEVNULL, start_new_session=True)
ticks = open(f"/proc/{p.pid}/stat").read().rsplit(")", 1)[1].split()[19]
with open("runner.json.tmp", "w") as f:
    json.dump({"pid": p.pid, "ticks": ticks, "t": time.time()}, f)
os.replace("runner.json.tmp", "runner.json")
print(p.pid, ticks)
"""

# One command at launch: does logind kill a user's processes at logout, has this user linger,
# can it start a scope of its own manager? (Each line "Name=value"; no logind: nothing printed.)
DETACH_PROBE = """\
k=$(loginctl show -p KillUserProcesses 2>/dev/null); echo "$k"
case "$k" in *=yes)
  loginctl show-user "$(id -un)" -p Linger 2>/dev/null
  if systemd-run --user --scope --quiet true >/dev/null 2>&1; then echo SystemdRun=yes; fi;;
esac
id -un
"""


def parse_detach_probe(out: str) -> tuple[bool | None, bool | None, bool, str]:
    """DETACH_PROBE's output -> (KillUserProcesses, Linger, systemd-run --user works, user);
    None where the box said nothing (no logind, or loginctl refused)."""
    vals: dict[str, str] = {}
    user = ""
    for line in out.splitlines():
        name, eq, value = line.strip().partition("=")
        if eq:
            vals[name] = value.strip()
        elif line.strip():
            user = line.strip()

    def yes(name: str) -> bool | None:
        return None if name not in vals else vals[name] == "yes"
    return yes("KillUserProcesses"), yes("Linger"), vals.get("SystemdRun") == "yes", user


# Run on the box by cancel: the control protocol's "exit" command to a trainer/ job.
EXIT_COMMAND = """\
import sys
from daemon.job.control import JobControl
JobControl(sys.argv[1]).command("exit", int(sys.argv[2]))
"""


def _q(s: str) -> str:
    return shlex.quote(str(s))


def _alive_sh(pid: int, ticks: str) -> str:
    """A shell test: is <pid> still the process that started at <ticks>, and not a zombie?
    (A container's pid 1 often never reaps, so a finished runner can linger as one.) Builtins
    only: a poll on a loaded box should not pay for forks."""
    return (f"{{ _l=; read -r _l 2>/dev/null < /proc/{pid}/stat; _r=\"${{_l##*) }}\"; set -- $_r; "
            f"case \"$1\" in ''|Z|X) false;; *) [ \"${{20}}\" = {_q(ticks)} ];; esac; }}")


def proc_alive(stat: bytes | None, ticks: str) -> bool:
    """/proc/PID/stat says: the process that started at <ticks>, not a zombie."""
    if not stat:
        return False
    rest = stat.rsplit(b")", 1)[-1].split()
    return len(rest) > 19 and rest[0] not in (b"Z", b"X") and rest[19].decode() == ticks


async def _read(sftp: SFTPClient, path: str, size: int = -1) -> bytes | None:
    """A small remote file's bytes, None if absent. ``size`` for /proc files (they stat as 0)."""
    import asyncssh
    try:
        async with sftp.open(path, "rb") as f:
            return _bytes(await f.read(size))
    except asyncssh.SFTPNoSuchFile:
        return None


def _bytes(data: str | bytes) -> bytes:
    """A file opened "rb" reads bytes; asyncssh's types say str or bytes by the mode."""
    return data if isinstance(data, bytes) else data.encode()


def _text(out: str | bytes | None) -> str:
    """A command's output as text (asyncssh decodes it as UTF-8 unless asked for bytes)."""
    return out.decode(errors="replace") if isinstance(out, bytes) else (out or "")


async def _tail(sftp: SFTPClient, path: str, n: int) -> bytes:
    import asyncssh
    try:
        size = (await sftp.stat(path)).size or 0
        async with sftp.open(path, "rb") as f:
            await f.seek(max(0, size - n))
            return _bytes(await f.read(n))
    except asyncssh.SFTPNoSuchFile:
        return b""


def remote_command(command: list[str]) -> list[str]:
    """The local interpreter's path means nothing on the box: "python" becomes the remote one."""
    if command and os.path.basename(command[0]).startswith("python") and "/" in command[0]:
        return ["python", *command[1:]]
    return list(command)


class SshBackend(OffloadBackend):
    name = "ssh"

    def __init__(self, cfg_ssh: SshConfig, *, carry: Carry | None = None,
                 sources: Sequence[str | os.PathLike] | None = None, cancel_grace_s: float = 30.0):
        """``cfg_ssh`` is the validated ``[offload.ssh]`` table; ``carry`` what of the job travels
        (daemon.cloud.offload.carry: workdir minus exclusions, data dirs, checkpoint_glob and the
        adopted store, progress_pattern), as for the local and Modal backends; without it only
        the checkpoint goes up and the job runs in an empty workdir. ``sources`` are the packages
        the runner needs on the box (default: this project's daemon/ and trainer/)."""
        if not cfg_ssh.get("host"):
            raise OffloadError("the ssh backend needs [offload.ssh] host")
        self.cfg = cfg_ssh
        self.link = SshLink(cfg_ssh)
        self.carry = carry
        self.cancel_grace_s = cancel_grace_s
        self.python: str = cfg_ssh.get("python") or "python3"
        self.price_usd_per_h = float(cfg_ssh.get("price_usd_per_h") or 0.0)
        self.sources = [Path(s) for s in (sources or [PROJECT / s for s in SOURCES])]
        self._root: str | None = None
        self.last_sync: dict[str, dict[str, object]] = {}  # what the last upload sent, for status
        self.last_state: str | None = None
        self.problem: str | None = None
        self.warnings: list[str] = []  # said once, at the launch that found them (the Offloader emits them)
        self._warned: set[str] = set()
        self.detach: DetachPlan | None = None  # how the last runner was started

    @classmethod
    def from_config(cls, cfg: Config, adopted_store: str | os.PathLike | None = None) -> SshBackend:
        """From the whole validated config: ``[offload.ssh]`` and the job's Carry (the daemon's
        state dir, when it lies inside the workdir, never travels)."""
        c = carry_from_config(cfg, adopted_store)
        state = Path(cfg["daemon"]["state_dir"]).resolve()
        if state != c.workdir and state.is_relative_to(c.workdir):
            c = replace(c, exclude=(*c.exclude, "/" + state.relative_to(c.workdir).as_posix()))
        return cls(cfg["offload"]["ssh"], carry=c)

    # call ids ----------------------------------------------------------------------------------
    def call_id(self, run_key: str, pid: int, ticks: str) -> str:
        return f"ssh:{self.link.host}:{self.link.port}:{run_key}:{pid}:{ticks}"

    def parse(self, call_id: str) -> tuple[str, int, str]:
        try:
            head, key, pid_s, ticks = call_id.rsplit(":", 3)
            prefix, _, host_port = head.partition(":")
            pid = int(pid_s)
        except ValueError:
            raise OffloadError(f"not an ssh call id: {call_id!r}") from None
        if prefix != "ssh" or not ticks.isdigit():
            raise OffloadError(f"not an ssh call id: {call_id!r}")
        if host_port != f"{self.link.host}:{self.link.port}":
            raise OffloadError(f"call {call_id} ran on {host_port}, but [offload.ssh] now names "
                               f"{self.link.host}:{self.link.port}: cannot re-attach")
        return key, pid, ticks

    def remember(self, call_id: str, run_key: str) -> None:
        """Nothing to remember: the call id carries the run key, pid and start time."""

    # paths ---------------------------------------------------------------------------------------
    async def _root_dir(self, conn: SSHClientConnection) -> str:
        if self._root is None:
            rd = str(self.cfg.get("remote_dir") or "nightshift")
            rd = rd[2:] if rd.startswith("~/") else rd  # an ssh session starts in the home dir
            r = await conn.run(f"mkdir -p {_q(rd)} && cd {_q(rd)} && pwd -P", check=False)
            if r.exit_status != 0:
                raise OffloadError(f"ssh {self.link.where}: cannot create remote_dir {rd}: "
                                   f"{_text(r.stderr).strip()}")
            self._root = str(r.stdout).strip()
        return self._root

    def _run_dir(self, root: str, run_key: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9._-]+", run_key):
            raise OffloadError(f"run key {run_key!r} is not a plain name")
        return posixpath.join(root, "runs", run_key)

    # upload --------------------------------------------------------------------------------------
    def upload(self, run_key: str, checkpoint: Path | None, files: list[Path]) -> UploadResult:
        t0 = time.monotonic()
        sent = self.link.call(lambda conn: self._upload(conn, run_key, checkpoint, files))
        return UploadResult(sent, time.monotonic() - t0)

    async def _upload(self, conn: SSHClientConnection, run_key: str, checkpoint: Path | None, files: list[Path]) -> int:
        root = await self._root_dir(conn)
        run = self._run_dir(root, run_key)
        stats: dict[str, SyncResult] = {}
        c = self.carry
        sent = 0
        async with conn.start_sftp_client() as sftp:
            for d in ("ckpt", "run", "work"):
                await sftp.makedirs(posixpath.join(run, d), exist_ok=True)
            for src in self.sources:
                stats[f"src/{src.name}"] = await push_tree(
                    sftp, src, posixpath.join(root, "src", src.name),
                    posixpath.join(root, "manifests", f"src-{src.name}.json"))
            if c is not None:
                stats["work"] = await push_tree(
                    sftp, c.workdir, posixpath.join(run, "work"),
                    posixpath.join(root, "manifests", f"run-{run_key}-work.json"), c.exclude)
                for d in c.data:  # shared by every run; the runner links them into the workdir
                    stats[f"data/{d}"] = await push_tree(
                        sftp, c.workdir / d, posixpath.join(root, "data", d),
                        posixpath.join(root, "manifests", manifest_name(d)))
                newest = newest_adopted_dir(c.adopted_store)
                if newest is not None:
                    sent += await self._put_dir(sftp, newest, posixpath.join(run, "adopted"))
            sent += sum(s.bytes for s in stats.values())
            if checkpoint is not None:
                sent += await self._put_dir(sftp, Path(checkpoint), posixpath.join(run, "ckpt"))
            files_dir = posixpath.join(run, "files")  # the runner puts them at their relative paths
            if await sftp.exists(files_dir):
                await sftp.rmtree(files_dir)
            for f in files:
                dest = posixpath.join(files_dir, self._rel(Path(f)))
                await sftp.makedirs(posixpath.dirname(dest), exist_ok=True)
                await put_file(sftp, Path(f), dest)
                sent += Path(f).stat().st_size
        self.last_sync = {k: asdict(v) for k, v in stats.items()}
        await self._setup(conn, root, posixpath.join(run, "work"))
        return sent

    def _rel(self, f: Path) -> str:
        w = self.carry.workdir if self.carry is not None else None
        p = f.resolve()
        return p.relative_to(w).as_posix() if w is not None and p.is_relative_to(w) else p.name

    async def _put_dir(self, sftp: SFTPClient, src: Path, remote_parent: str) -> int:
        """A checkpoint (or adopted copy) directory, whole, under a temporary name then renamed:
        the runner never sees half of one. Already there (a relaunch): nothing to send."""
        dest = posixpath.join(remote_parent, src.name)
        if await sftp.isdir(dest):
            return 0
        tmp = posixpath.join(remote_parent, f"{TMP_PREFIX}{src.name}")
        if await sftp.exists(tmp):
            await sftp.rmtree(tmp)
        await sftp.makedirs(remote_parent, exist_ok=True)
        await sftp.put(str(src), tmp, recurse=True)
        await sftp.posix_rename(tmp, dest)
        return sum(f.stat().st_size for f in src.rglob("*") if f.is_file())

    def fingerprint(self) -> str:
        """What the remote environment is made from: setup_command, python, env, requirements."""
        h = hashlib.sha256(json.dumps([self.cfg.get("setup_command"), self.python,
                                       sorted((self.cfg.get("env") or {}).items())]).encode())
        if self.carry is not None:
            for name in ENV_FILES:
                try:
                    h.update(name.encode() + b"\0" + (self.carry.workdir / name).read_bytes())
                except OSError:
                    pass
        return h.hexdigest()[:16]

    async def _setup(self, conn: SSHClientConnection, root: str, work: str) -> None:
        cmd = self.cfg.get("setup_command")
        if not cmd:
            return
        fp = self.fingerprint()
        done = posixpath.join(root, "setup", f"{fp}.done")
        log = posixpath.join(root, "setup", f"{fp}.log")
        r = await conn.run(f"test -f {_q(done)}", check=False)
        if r.exit_status == 0:
            self.last_sync["setup"] = {"fingerprint": fp, "ran": False}
            return
        import asyncssh
        limit = float(self.cfg.get("setup_timeout_s") or SETUP_TIMEOUT_S)
        try:
            # in its own session, so a timeout can end the whole command on the box
            r = await conn.run(f"mkdir -p {_q(posixpath.dirname(done))} && cd {_q(work)} && {self._exports(root)}"
                               f"S=$(command -v setsid) && S=\"$S -w\"; exec $S sh -c {_q('echo $$ > ' + _q(log + '.pid') + '; ' + cmd)} "
                               f"> {_q(log)} 2>&1", check=False, timeout=limit)
        except asyncssh.TimeoutError:
            # the command's own failure (never a lost connection: that would run it again)
            await conn.run(f"kill -TERM -- -$(cat {_q(log + '.pid')}) 2>/dev/null", check=False)
            tail = await conn.run(f"tail -n 15 {_q(log)}", check=False)
            raise OffloadError(f"ssh {self.link.where}: setup_command did not finish within {limit:.0f} s "
                               f"([offload.ssh] setup_timeout_s; it was stopped); {log} ends with:\n"
                               f"{str(tail.stdout).strip()}") from None
        if r.exit_status != 0:
            tail = await conn.run(f"tail -n 15 {_q(log)}", check=False)
            raise OffloadError(f"ssh {self.link.where}: setup_command failed (exit {r.exit_status}); "
                               f"{log} ends with:\n{str(tail.stdout).strip()}")
        await conn.run(f"touch {_q(done)}", check=False)
        self.last_sync["setup"] = {"fingerprint": fp, "ran": True}

    def _exports(self, root: str) -> str:
        env = {**(self.cfg.get("env") or {})}
        out = f"export PYTHONPATH={_q(posixpath.join(root, 'src'))}${{PYTHONPATH:+:$PYTHONPATH}}; "
        for k, v in env.items():
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", k):
                raise OffloadError(f"[offload.ssh] env: {k!r} is not a variable name")
            out += f"export {k}={_q(v)}; "
        return out

    async def _sh(self, conn: SSHClientConnection, cmd: str, what: str, timeout: float | None = None) -> str:
        r = await conn.run(cmd, check=False, timeout=timeout)
        if r.exit_status != 0:
            hint = (f" (is {self.python!r} on the box? set [offload.ssh] python, or install it with "
                    "setup_command)") if r.exit_status == 127 else ""
            raise OffloadError(f"ssh {self.link.where}: {what} failed (exit {r.exit_status}): "
                               f"{str(r.stderr or r.stdout).strip()[-500:]}{hint}")
        return str(r.stdout)

    # launch --------------------------------------------------------------------------------------
    def launch(self, run_key: str, job: JobSpec) -> str:
        # retry=False: a lost connection after the start must not start a second runner; the
        # caller retries, and the runner.json check below finds the first one alive
        self.warnings = []
        return self.link.call(lambda conn: self._launch(conn, run_key, job), timeout=120, retry=False)

    async def _detach_plan(self, conn: SSHClientConnection, root: str) -> DetachPlan:
        """Asked at every new runner (a fixed box is used at once); its warning said only once.
        With [offload.ssh] env exported, so loginctl and systemd-run are the ones the runner's
        launch would find."""
        r = await conn.run(f"{self._exports(root)}{DETACH_PROBE}", check=False)
        kup, linger, run_ok, user = parse_detach_probe(str(r.stdout or ""))
        plan = detach_plan(kup, linger, run_ok, user or self.link.user or "<user>")
        if plan.warning and plan.warning not in self._warned:
            self._warned.add(plan.warning)
            self.warnings.append(f"ssh {self.link.where}: {plan.warning}")
        self.detach = plan
        return plan

    async def _launch(self, conn: SSHClientConnection, run_key: str, job: JobSpec) -> str:
        root = await self._root_dir(conn)
        run = self._run_dir(root, run_key)
        r = await conn.run(f"cat {_q(posixpath.join(run, 'runner.json'))} 2>/dev/null", check=False)
        try:
            prev = json.loads(str(r.stdout))
            alive = await conn.run(_alive_sh(int(prev["pid"]), str(prev["ticks"])), check=False)
            if alive.exit_status == 0:  # never two runners for one run
                return self.call_id(run_key, int(prev["pid"]), str(prev["ticks"]))
        except (ValueError, KeyError, TypeError):
            pass
        r = await conn.run(f"test -d {_q(posixpath.join(run, 'work'))}", check=False)
        if r.exit_status != 0:  # starting fresh here would silently throw the night's steps away
            raise OffloadError(f"ssh {self.link.where}: nothing was uploaded for run {run_key} under "
                               f"{root} (was the box re-created?): upload before launching")
        spec = job.to_dict()
        spec["command"] = remote_command(spec["command"])
        if resume_command := spec.get("resume_command"):
            spec["resume_command"] = remote_command(resume_command)
        spec["env"] = {**spec["env"], **(self.cfg.get("env") or {})}
        spec["workdir"] = posixpath.join(run, "work")
        c = self.carry
        if c is not None:
            spec.update({"data": list(c.data), "data_root": posixpath.join(root, "data"),
                         "checkpoint_glob": c.checkpoint_glob, "progress_pattern": c.progress_pattern,
                         "keep": c.keep})
        async with conn.start_sftp_client() as sftp:
            await write_remote(sftp, posixpath.join(run, "spec.json"), json.dumps(spec).encode())
        # in a scope of the user's manager, the runner is out of the SSH session's cgroup
        wrap = "systemd-run --user --scope --quiet " if (await self._detach_plan(conn, root)).scope else ""
        out = await self._sh(conn, f"cd {_q(run)} && rm -f status.json {CANCEL_MARK} && "
                                   f"{self._exports(root)}exec {wrap}{_q(self.python)} -c {_q(LAUNCHER)}",
                             "starting the remote runner")
        try:
            pid, ticks = out.split()[-2:]
            return self.call_id(run_key, int(pid), ticks)
        except ValueError:
            raise OffloadError(f"ssh {self.link.where}: the launcher said {out!r}") from None

    # poll ----------------------------------------------------------------------------------------
    def poll(self, call_id: str) -> RemoteStatus:
        key, pid, ticks = self.parse(call_id)
        try:
            st = self.link.call(lambda conn: self._poll(conn, key, pid, ticks), timeout=POLL_TIMEOUT_S)
        except OffloadError as e:
            self.problem = str(e)
            raise
        self.problem = None
        self.last_state = st.state
        return st

    async def _poll(self, conn: SSHClientConnection, key: str, pid: int, ticks: str) -> RemoteStatus:
        """Over the kept SFTP session, no command: liveness first, then the result, so a runner
        that wrote its result and exited between the two reads is never taken for preempted."""
        run = self._run_dir(await self._root_dir(conn), key)
        sftp = await self.link.sftp(conn)
        if not await sftp.isdir(run):
            return RemoteStatus("preempted", error=f"the run's directory {run} is gone from the box")
        alive = proc_alive(await _read(sftp, f"/proc/{pid}/stat", 4096), ticks)
        status = (await _read(sftp, posixpath.join(run, "status.json")) or b"").decode(errors="replace")
        runner = (await _read(sftp, posixpath.join(run, "runner.json")) or b"").decode(errors="replace")
        cancelled = await sftp.exists(posixpath.join(run, CANCEL_MARK))
        progress = (await _tail(sftp, posixpath.join(run, "run", "progress.jsonl"), TAIL_BYTES)).decode(
            errors="replace")
        recs = []
        for line in progress.splitlines():
            try:
                recs.append(json.loads(line))
            except ValueError:
                pass  # the first line of a tail is usually cut
        prog = progress_summary(recs)
        started = None
        try:
            started = float(json.loads(runner)["t"])
        except (ValueError, KeyError, TypeError):
            pass
        args = (prog["step"], prog["total_steps"], prog["loss"], prog["steps_per_s"])
        if status.strip():
            res = json.loads(status)
            state, rc = res.get("state", "failed"), res.get("returncode")
            err = res.get("error")
            cause = None
            if state == "failed" and isinstance(rc, int) and rc < 0:  # killed by a signal
                if cancelled:
                    state = "cancelled"
                elif res.get("oom_killed"):  # the box says its kernel OOM-killed it: the job's own
                    state, cause = "preempted", "job"
                    err = "the box's kernel OOM-killed the job (it needs more memory than the box has)"
                else:  # not by us: a reboot, someone's kill
                    state, err = "preempted", f"the remote job was killed by signal {-rc}"
            return RemoteStatus(state, res.get("step") or prog["step"], *args[1:], err, started, cause)
        if alive:
            return RemoteStatus("running", *args, None, started)
        if cancelled:
            return RemoteStatus("cancelled", *args[:3], None, "cancelled", started)
        # no result and no runner: ask the box whether its kernel OOM-killed since the start
        mark = (await _read(sftp, posixpath.join(run, "oom_start.json")) or b"").decode(errors="replace")
        now_ooms = (await _read(sftp, "/proc/vmstat", 65536) or b"").decode(errors="replace")
        try:
            before = json.loads(mark)["oom_kill"]
            after = next(int(x.split()[1]) for x in now_ooms.splitlines() if x.startswith("oom_kill "))
            if isinstance(before, int) and after > before:
                return RemoteStatus("preempted", *args[:3], None, "the runner and its job ended without a "
                                    "result while the box's kernel OOM-killed (out of memory)", started, "job")
        except (ValueError, KeyError, TypeError, StopIteration):
            pass
        return RemoteStatus("preempted", *args[:3], None, f"the remote runner (pid {pid}) ended without a "
                            "result: the box restarted or the job was killed", started)

    # cancel --------------------------------------------------------------------------------------
    def cancel(self, call_id: str) -> None:
        """A final checkpoint if the job speaks trainer/'s control protocol; then TERM to the
        runner, a bounded wait, KILL: to the runner's process group and the job's, nothing else.
        At most 2 x ``cancel_grace_s``; poll says "cancelled" once the runner has settled."""
        key, pid, ticks = self.parse(call_id)
        self.link.call(lambda conn: self._cancel(conn, key, pid, ticks), timeout=2 * self.cancel_grace_s + 60)

    async def _cancel(self, conn: SSHClientConnection, key: str, pid: int, ticks: str) -> None:
        root = await self._root_dir(conn)
        run = self._run_dir(root, key)
        r = await conn.run(f"cd {_q(run)} && touch {CANCEL_MARK} && {_alive_sh(pid, ticks)} && "
                           f"cat /proc/{pid}/task/{pid}/children; echo {_SEP}; "
                           f"tail -c {TAIL_BYTES} run/progress.jsonl 2>/dev/null", check=False)
        kids_txt, _, progress = str(r.stdout).partition(_SEP + "\n")
        kids = [int(k) for k in kids_txt.split() if k.isdigit()]
        if r.exit_status != 0 and not kids:
            return  # already gone
        job = None
        for line in progress.splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if rec.get("kind") == "start" and rec.get("protocol") and rec.get("pid") in kids:
                job = int(rec["pid"])
        alive = _alive_sh(pid, ticks)
        grace = max(1, int(self.cancel_grace_s * 10))
        wait = lambda n: f"i=0; while {alive} && [ $i -lt {n} ]; do sleep 0.1; i=$((i+1)); done; "  # noqa: E731
        script = ""
        if job is not None:  # trainer/: "exit" = a durable checkpoint, then exit 0. Written by
            # the box's copy of daemon.job.control, so the file's format is the one its trainer reads
            script += (f"{self._exports(root)}{_q(self.python)} -c {_q(EXIT_COMMAND)} "
                       f"{_q(posixpath.join(run, 'run'))} {job}; {wait(grace)}")
        # TERM once: the runner TERMs the job, bounds that wait itself, keeps what it saved
        # and reports "cancelled" (the mark above says this TERM is ours, not a preemption)
        script += f"if {alive}; then kill -TERM -{pid} 2>/dev/null; fi; {wait(grace)}"
        script += f"if {alive}; then kill -KILL -{pid} 2>/dev/null; "
        script += "".join(f"kill -KILL -{k} 2>/dev/null; " for k in kids)
        script += "fi; true"
        await conn.run(script, check=False)

    # pull ----------------------------------------------------------------------------------------
    def pull(self, run_key: str, call_id: str, dest_checkpoint_dir: Path) -> Path:
        return self.link.call(lambda conn: self._pull(conn, run_key, Path(dest_checkpoint_dir)))

    async def _pull(self, conn: SSHClientConnection, run_key: str, dest: Path) -> Path:
        from trainer.format import CorruptCheckpoint, fsync_dir, verify
        run = self._run_dir(await self._root_dir(conn), run_key)
        got: Path | None = None
        async with conn.start_sftp_client() as sftp:
            ckpt = posixpath.join(run, "ckpt")
            names = [n for n in (await sftp.listdir(ckpt) if await sftp.isdir(ckpt) else [])
                     if re.fullmatch(r"step_\d+", n)]
            for name in sorted(names, key=lambda n: int(n[5:]), reverse=True):
                final = dest / name
                if final.is_dir():
                    try:
                        verify(final)
                        got = final
                        break
                    except (CorruptCheckpoint, OSError):
                        pass
                tmp = dest / f".tmp-{name}-{os.getpid()}"
                tmp.mkdir(parents=True, exist_ok=True)
                for fname in await sftp.listdir(posixpath.join(ckpt, name)):
                    if fname not in (".", ".."):
                        await sftp.get(posixpath.join(ckpt, name, fname), str(tmp / fname))
                for f in tmp.iterdir():
                    with open(f, "rb") as fh:
                        os.fsync(fh.fileno())
                try:
                    verify(tmp)
                except (CorruptCheckpoint, OSError):  # torn on the box: the next older one
                    shutil.rmtree(tmp, ignore_errors=True)
                    continue
                if final.exists():
                    shutil.rmtree(final)
                os.rename(tmp, final)
                fsync_dir(dest)
                got = final
                break
            c = self.carry
            if c is not None and c.checkpoint_glob:
                got = got or await self._pull_adopted(sftp, posixpath.join(run, "adopted"), dest)
        if got is None:
            raise OffloadError(f"ssh {self.link.where}: no valid checkpoint under {run} to bring home")
        return got

    async def _pull_adopted(self, sftp: SFTPClient, remote_store: str, dest: Path) -> Path | None:
        """The newest adopted copy on the box that verifies, put back at its relative path in
        the job's workdir (by daemon.job.adopt, like at home). Newest first, one version at a time:
        the store may hold ``keep`` copies of a large file."""
        from daemon.job.adopt import Adopter
        c = self.carry
        assert c is not None and c.checkpoint_glob
        if not await sftp.isdir(remote_store):
            return None
        versions = sorted((n for n in await sftp.listdir(remote_store) if re.fullmatch(r"v_\d+", n)),
                          reverse=True)
        for name in versions:
            staging = dest / f".tmp-pull-adopted-{os.getpid()}"
            shutil.rmtree(staging, ignore_errors=True)
            (staging / "store").mkdir(parents=True)
            try:
                await sftp.get(posixpath.join(remote_store, name), str(staging / "store" / name), recurse=True)
                done = Adopter(staging / "work", c.checkpoint_glob, staging / "store",
                               keep=c.keep).restore_newest(c.workdir)  # verifies, places atomically
            finally:
                shutil.rmtree(staging, ignore_errors=True)
            if done is not None:
                return c.workdir / done.relpath
        return None

    # status --------------------------------------------------------------------------------------
    def describe(self) -> dict[str, object]:
        return {"backend": "ssh", "host": self.link.where, "remote_dir": self._root or self.cfg.get("remote_dir"),
                "connected": self.link.connected, "remote_state": self.last_state,
                "price_usd_per_h": self.price_usd_per_h, "last_sync": self.last_sync,
                "problem": self.problem}

    def cost_usd(self, seconds: float) -> float:
        return max(0.0, seconds) * self.price_usd_per_h / 3600.0

    def close(self) -> None:
        self.link.close()
