"""One job process: started in its own process group, its output kept, stopped in steps.

Only processes this daemon started are ever signalled: the job's process group (the job's pid,
since it leads a new session) and the job's descendants, each recorded by pid *and* start time
while the job runs, so a recycled pid is never hit. The child also gets PR_SET_PDEATHSIG, so a
daemon killed with -9 never leaves an orphan job training on a GPU nobody supervises.

Why each part is the way it is (issue 13):
- Output is read in bounded chunks, not lines: a tqdm bar redrawn with \r for an hour is one
  "line" of megabytes. A \r ends a line too; the tail keeps only the bar's latest state.
- job.log is rotated to job.log.1 at ``log_max_bytes``: at most twice that on disk, newest kept.
- The job's end is its main process's exit, not EOF on the pipe: a grandchild in its own
  session may hold the pipe open for hours. After the exit, the reader gets a bounded time.
- The whole tree is reaped on exit, stop and restart: the process group, then every recorded
  descendant that is still the same process (those that left the group with setsid included).
  When `systemd-run --user --scope` works, the job also gets its own transient scope (a cgroup),
  which systemd stops with everything in it.

The whole tree belongs to the run, across a daemon's death too (issue 31): a wrapper
(``bash -c "python train.py; echo end"``) dies with a kill -9 of the daemon (PDEATHSIG reaches
the direct child only), its ``python train.py`` does not. So each job carries a random token in
its environment (``NIGHTSHIFT_JOB_TOKEN``, inherited by every descendant that keeps its env),
and ``<run_dir>/job-tree.json`` records the leader, its session and the token while the job
runs. On start the daemon ends what is left of any such record (``end_leftovers``): every
process of the recorded session (a session id is not reused while a member lives) and every
process bearing the token -- not the leader pid alone. At the job's exit the token finds the
descendants the periodic scan missed (a ``setsid`` grandchild born just before the exit).
"""

from __future__ import annotations

import asyncio
import codecs
import collections
import contextlib
import ctypes
import json
import logging
import os
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypedDict

import psutil

log = logging.getLogger(__name__)
_PR_SET_PDEATHSIG = 1
CHUNK = 64 * 1024  # one read of the job's output
MAX_LINE = 4096  # a longer run of output without \n or \r is cut into lines of this size
DEFAULT_LOG_MAX_BYTES = 50 * 2**20
READER_GRACE_S = 2.0  # after the job exits, how long its output may still drain
ENV_TOKEN = "NIGHTSHIFT_JOB_TOKEN"  # in every job's env: its descendants are found by it
TREE_FILE = "job-tree.json"  # in the run dir while a job runs: what a next daemon must end
# Issue 30: the tree scan was the daemon's largest cost while supervising (psutil's children()
# reads the stat of every process on the machine, every 0.5 s, for a tree that changes a few
# times a night). Now a scan reads only processes started since the previous one, and a tree
# unchanged since the last scan is scanned at twice the interval, up to this many times
# ``tree_poll_s``; any change goes back to ``tree_poll_s``.
TREE_IDLE_FACTOR = 8
_scope_ok: bool | None = None


def user_scope_available() -> bool:
    """True if `systemd-run --user --scope` can run a command here (tried once, cached)."""
    global _scope_ok
    if _scope_ok is None:
        exe = shutil.which("systemd-run")
        try:
            _scope_ok = bool(exe) and subprocess.run(
                [exe, "--user", "--scope", "--quiet", "--collect", "true"],  # type: ignore[list-item]
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                timeout=5).returncode == 0
        except (OSError, subprocess.SubprocessError):
            _scope_ok = False
    return _scope_ok


def _die_with_parent() -> None:  # runs in the child between fork and exec
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except Exception:  # noqa: BLE001 - best effort; the restart check covers the rest
        pass


def process_create_time(pid: int) -> float | None:
    try:
        return psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


def same_process_alive(pid: int | None, create_time: float | None) -> bool:
    """True if ``pid`` is still the process we started (not a recycled pid)."""
    if not pid or create_time is None:
        return False
    ct = process_create_time(pid)
    if ct is None:
        return False
    try:
        if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
            return False
    except psutil.Error:
        return False
    return abs(ct - create_time) < 0.05


def signal_group(pgid: int, sig: int) -> bool:
    """Signal a process group; False when it is already gone (ESRCH) or not ours (EPERM)."""
    if pgid <= 1:
        # killpg(1, sig) is kill(-1, sig), every process this user may signal; killpg(0, sig)
        # is the daemon's own group. A job's group is its own pid: anything else is a bug.
        raise ValueError(f"signal_group({pgid}): not a job's process group")
    try:
        os.killpg(pgid, sig)
        return True
    except (ProcessLookupError, PermissionError):
        return False


async def stop_orphan(pid: int | None, create_time: float | None, term_s: float = 10.0) -> bool:
    """Stop a job left by a previous daemon instance, identified by pid AND start time (a run
    row's, which are NULL when it never started a job: nothing to stop then)."""
    if not pid or not same_process_alive(pid, create_time):
        return False
    log.warning("a job from a previous daemon instance is still running (pid %d); stopping it", pid)
    signal_group(pid, signal.SIGTERM)
    deadline = time.monotonic() + term_s
    while time.monotonic() < deadline and same_process_alive(pid, create_time):
        await asyncio.sleep(0.1)
    if same_process_alive(pid, create_time):
        signal_group(pid, signal.SIGKILL)
        for _ in range(50):
            if not same_process_alive(pid, create_time):
                break
            await asyncio.sleep(0.1)
    return True


class ProcessOptions(TypedDict, total=False):
    """JobProcess's optional keywords, as a spawn passes them on."""

    tail_lines: int
    log_max_bytes: int
    scope: bool | None
    tree_poll_s: float


class JobProcess:
    def __init__(self, command: list[str], *, cwd: str | Path, env: dict[str, str],
                 log_path: str | Path, on_line: Callable[[str], None] | None = None,
                 tail_lines: int = 400, log_max_bytes: int = DEFAULT_LOG_MAX_BYTES,
                 scope: bool | None = None, tree_poll_s: float = 0.5):
        self.command = list(command)
        self.cwd = str(cwd)
        self.env = env
        self.log_path = Path(log_path)
        self.on_line = on_line
        self.log_max_bytes = max(int(log_max_bytes), CHUNK)
        # scope: True = a transient systemd scope, None = one if available, False = none
        self.scope = scope
        self.scope_unit: str | None = None
        self.tree_poll_s = tree_poll_s
        self.tree_scan_s = tree_poll_s  # the wait before the next scan of the job's tree
        self._tail: collections.deque[str] = collections.deque(maxlen=tail_lines)
        self._tail_redraw = False  # the tail's last entry is a \r-redrawn line (replace it)
        self.proc: asyncio.subprocess.Process | None = None
        self.pid: int | None = None
        self.create_time: float | None = None
        self.started_at: float | None = None
        self.returncode: int | None = None
        self._reader: asyncio.Task | None = None
        self._watcher: asyncio.Task | None = None
        self._wait_task: asyncio.Task | None = None
        # every descendant seen while the job ran: (pid, create_time) -> last CPU seconds seen
        self._tree: dict[tuple[int, float], float] = {}
        self._seen_pids: set[int] = set()  # every pid in /proc at the last tree scan
        self._cpu_dead = 0.0
        self.stopped_by_signal = False  # SIGSTOP-held
        self.token = ""  # NIGHTSHIFT_JOB_TOKEN of the running attempt

    async def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        command = self.command
        if self.scope or (self.scope is None and user_scope_available()):
            self.scope_unit = f"nightshift-job-{os.getpid()}-{time.monotonic_ns()}.scope"
            command = ["systemd-run", "--user", "--scope", "--quiet", "--collect",
                       f"--unit={self.scope_unit}", "--", *command]
        self.token = secrets.token_hex(16)
        try:
            self.proc = await asyncio.create_subprocess_exec(
                *command, cwd=self.cwd, env={**self.env, ENV_TOKEN: self.token},
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
                start_new_session=True, preexec_fn=_die_with_parent)
        except (FileNotFoundError, NotADirectoryError) as e:
            # the same errno for a missing program and a missing cwd: say which it is
            if not os.path.isdir(self.cwd):
                raise OSError(f"cannot start the job: its workdir {self.cwd} does not exist (or is "
                              "not a directory); create it or fix job.workdir in the config") from None
            raise OSError(f"cannot start the job: {self.command[0]!r} not found ({e.strerror}); "
                          "check job.command and job.workdir in the config") from None
        self.pid = self.proc.pid
        self.create_time = process_create_time(self.pid)
        self.started_at = time.time()
        record_tree(self.log_path.parent / TREE_FILE, self.pid, self.create_time, self.token,
                    self.scope_unit)
        self._reader = asyncio.create_task(self._read_output())
        self._watcher = asyncio.create_task(self._watch_tree())

    # ------------------------------------------------------------------ output
    async def _read_output(self) -> None:
        assert self.proc and self.proc.stdout
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        pending = ""  # text of the line being written (no \n or \r seen yet)
        out = open(self.log_path, "ab", buffering=0)  # noqa: SIM115 - rotated below
        size = out.tell()
        try:
            while True:
                data = await self.proc.stdout.read(CHUNK)
                if not data:
                    break
                if size + len(data) > self.log_max_bytes and size > 0:
                    out = self._rotate(out)
                    size = 0
                try:
                    out.write(data)
                    size += len(data)
                except OSError as e:  # a full disk must not stop the job (its pipe would fill)
                    log.warning("cannot write %s: %s; the job's output is kept only in memory",
                                self.log_path, e.strerror)
                pending = self._lines(pending + decoder.decode(data))
            pending += decoder.decode(b"", final=True)
            if pending:
                self._emit(pending, redraw=False)
        finally:
            out.close()

    def _rotate(self, out):
        out.close()
        try:
            os.replace(self.log_path, self.log_path.with_name(self.log_path.name + ".1"))
        except OSError as e:
            log.warning("cannot rotate %s: %s", self.log_path, e.strerror)
        try:
            return open(self.log_path, "ab", buffering=0)  # noqa: SIM115
        except OSError as e:  # a full or read-only disk must not end the reader (the pipe fills)
            log.warning("cannot reopen %s: %s; the job's output is kept only in memory until "
                        "the next rotation", self.log_path, e.strerror)
            return open(os.devnull, "ab", buffering=0)  # noqa: SIM115

    def _lines(self, text: str) -> str:
        """Emit every complete line of ``text``; return the incomplete rest (at most MAX_LINE)."""
        start = 0
        n = len(text)
        i = 0
        while i < n:
            c = text[i]
            if c == "\n":
                self._emit(text[start:i], redraw=False)
                start = i + 1
            elif c == "\r":
                if i + 1 < n and text[i + 1] == "\n":  # \r\n: one ordinary line end
                    self._emit(text[start:i], redraw=False)
                    i += 1
                elif i + 1 == n:
                    break  # maybe the \r of a \r\n split across reads: decide next time
                else:
                    self._emit(text[start:i], redraw=True)
                start = i + 1
            elif i - start >= MAX_LINE:
                self._emit(text[start:i], redraw=False)
                start = i
            i += 1
        return text[start:]

    def _emit(self, text: str, redraw: bool) -> None:
        if not text and redraw:
            return
        if self._tail_redraw and self._tail:
            self._tail.pop()  # the bar's older state: only the latest is worth showing
        self._tail.append(text)
        self._tail_redraw = redraw
        if self.on_line:
            try:
                self.on_line(text)
            except Exception:  # noqa: BLE001 - a consumer's bug must not stop the output reader
                log.exception("on_line callback failed")

    def output_tail(self, lines: int | None = None) -> str:
        items = list(self._tail)
        return "\n".join(items[-lines:] if lines else items)

    # ------------------------------------------------------------------ the process tree
    def _snapshot_tree(self) -> bool:
        """Record the job's descendants (pid + start time) and their CPU time while alive;
        True if the set of processes changed.

        Descendants of descendants already recorded are found too, so a grandchild that
        outlived its parent (reparented to init, outside the job's group) stays known."""
        procs = {p.pid: p for p in self._tree_alive()}
        try:
            if self.running and self.pid:
                procs[self.pid] = psutil.Process(self.pid)
        except psutil.Error:
            pass
        for pid in self._new_descendants(set(procs)):
            try:
                procs.setdefault(pid, psutil.Process(pid))
            except psutil.Error:
                continue
        return self._record(list(procs.values()), forget_missing=True)

    def _new_descendants(self, tree: set[int]) -> list[int]:
        """Processes started since the previous scan whose parent is in ``tree`` (or is one of
        them): only their /proc/<pid>/stat is read, not every process's. A process seen at the
        previous scan outside the tree cannot have joined it since (an orphan is adopted by
        init or a subreaper, never by the job)."""
        try:
            now = {int(n) for n in os.listdir("/proc") if n.isdigit()}
        except OSError:
            return []
        parents: dict[int, int] = {}
        for pid in now - self._seen_pids:
            try:
                with open(f"/proc/{pid}/stat", "rb") as f:
                    parents[pid] = int(f.read().rsplit(b")", 1)[1].split()[1])  # state, ppid
            except (OSError, ValueError, IndexError):  # gone meanwhile
                continue
        self._seen_pids = now
        found: list[int] = []
        grew = True
        while grew:  # a child of a new child, in any order of pids
            grew = False
            for pid, ppid in list(parents.items()):
                if ppid in tree:
                    tree.add(pid)
                    found.append(pid)
                    del parents[pid]
                    grew = True
        return found

    def _record(self, procs: list[psutil.Process], forget_missing: bool) -> bool:
        """Their CPU times into ``_tree``; with ``forget_missing``, a recorded process not in
        ``procs`` is gone (its CPU time is kept, its pid forgotten). True if the set changed."""
        seen: dict[tuple[int, float], float] = {}
        for p in procs:
            try:
                with p.oneshot():
                    key = (p.pid, p.create_time())
                    t = p.cpu_times()
                seen[key] = t.user + t.system
            except psutil.Error:
                continue
        changed = False
        for key in list(self._tree):
            if key not in seen and (forget_missing or not self._same(key)):
                self._cpu_dead += self._tree.pop(key)
                changed = True
        changed = changed or any(key not in self._tree for key in seen)
        self._tree.update(seen)
        return changed

    @staticmethod
    def _same(key: tuple[int, float]) -> bool:
        return same_process_alive(*key)

    async def _watch_tree(self) -> None:
        while self.proc is not None and self.proc.returncode is None:
            if self._snapshot_tree():
                self.tree_scan_s = self.tree_poll_s
            else:
                self.tree_scan_s = min(2 * self.tree_scan_s, TREE_IDLE_FACTOR * self.tree_poll_s)
            await asyncio.sleep(self.tree_scan_s)

    def cpu_time(self) -> float:
        """CPU seconds used by the job's whole tree so far (for liveness: a hung GPU kernel
        burns none, a busy data loader in a child does). Non-decreasing: an exited process
        keeps the time last seen for it. Reads the processes already known (the tree watcher
        finds new ones), not the whole tree again."""
        if self.running:
            known = []
            for pid, ct in self._tree:
                try:
                    p = psutil.Process(pid)
                    if abs(p.create_time() - ct) < 0.05:
                        known.append(p)
                except psutil.Error:
                    continue
            self._record(known, forget_missing=False)
        return self._cpu_dead + sum(self._tree.values())

    def _tree_alive(self) -> list[psutil.Process]:
        """Recorded descendants that are still the same process (pid AND start time)."""
        alive = []
        for pid, ct in list(self._tree):
            if pid == self.pid:
                continue
            try:
                p = psutil.Process(pid)
                if abs(p.create_time() - ct) < 0.05 and p.status() != psutil.STATUS_ZOMBIE:
                    alive.append(p)
            except psutil.Error:
                continue
        return alive

    def _signal_tree(self, sig: int) -> int:
        """``sig`` to the job's group and to every recorded descendant still alive."""
        n = 0
        if self.pid is not None and signal_group(self.pid, sig):
            n += 1
        for p in self._tree_alive():
            try:
                p.send_signal(sig)
                n += 1
            except psutil.Error:
                pass
        return n

    async def reap_tree(self, term_s: float = 1.0) -> None:
        """Stop whatever is left of the job's tree: SIGTERM, ``term_s``, then SIGKILL."""
        if self.scope_unit:
            await asyncio.to_thread(subprocess.run, ["systemctl", "--user", "stop", self.scope_unit],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if not self._signal_tree(signal.SIGCONT):  # a SIGSTOPped process cannot act on SIGTERM
            return
        self._signal_tree(signal.SIGTERM)
        deadline = time.monotonic() + term_s
        while time.monotonic() < deadline:
            if not self._tree_alive() and not self._group_alive():
                return
            await asyncio.sleep(0.05)
        if self._signal_tree(signal.SIGKILL):
            log.warning("killed what was left of job %s's process tree", self.pid)
            # SIGKILL is delivered asynchronously: wait (briefly) until the tree is really gone,
            # so that "reaped" means gone for whoever restarts the job next.
            deadline = time.monotonic() + 2.0
            while time.monotonic() < deadline and (self._tree_alive() or self._group_alive()):
                await asyncio.sleep(0.02)

    def _group_alive(self) -> bool:
        try:
            os.killpg(self.pid, 0)  # type: ignore[arg-type]
            return True
        except (ProcessLookupError, PermissionError, TypeError):
            return False

    # ------------------------------------------------------------------ lifecycle
    @property
    def running(self) -> bool:
        return self.proc is not None and self.returncode is None

    async def wait(self) -> int:
        """The job's exit status, once its main process has exited and its tree is reaped."""
        if self._wait_task is None:
            self._wait_task = asyncio.ensure_future(self._wait())
        return await asyncio.shield(self._wait_task)

    async def _exited(self) -> None:
        """Until the main process has exited: woken once by its pidfd (Linux 5.3+), not a poll
        every 0.05 s all night (issue 30: that was the daemon loop's most frequent wake-up).
        asyncio's child watcher sets ``returncode`` just after; polled where pidfd is missing."""
        assert self.proc
        try:
            fd = os.pidfd_open(self.proc.pid)
        except OSError:  # already reaped, or no pidfd here
            fd = None
        if fd is not None:
            loop = asyncio.get_running_loop()
            gone: asyncio.Future[None] = loop.create_future()

            def readable() -> None:
                if not gone.done():
                    gone.set_result(None)
            loop.add_reader(fd, readable)
            try:
                if self.proc.returncode is None:
                    await gone
            finally:
                loop.remove_reader(fd)
                os.close(fd)
        while self.proc.returncode is None:
            await asyncio.sleep(0.05)

    async def _wait(self) -> int:
        assert self.proc
        # Not proc.wait(): in Python 3.11 it also waits for the pipe to close, which a
        # grandchild holding our stdout may never do. returncode is set on the exit itself.
        await self._exited()
        rc = self.proc.returncode
        assert rc is not None
        self._snapshot_tree()
        await self.reap_tree()
        # what the scan cannot see: a descendant that left the session and whose parent died
        # between two scans (a setsid grandchild born just before the exit) still has the token
        await end_processes(await asyncio.to_thread(marked, self.token, self.create_time),
                            f"left by job {self.pid}", term_s=1.0)
        with contextlib.suppress(OSError):
            (self.log_path.parent / TREE_FILE).unlink()
        if self._reader:
            try:  # the dying message is in the tail before anyone classifies
                await asyncio.wait_for(asyncio.shield(self._reader), READER_GRACE_S)
            except TimeoutError:
                log.warning("job %s exited but its output pipe stays open; not reading it further",
                            self.pid)
                self._reader.cancel()
            except Exception:  # noqa: BLE001 - the exit status matters more than the log
                log.exception("reading the job's output failed")
        if self._watcher:
            self._watcher.cancel()
        self.returncode = rc
        return rc

    def signal(self, sig: int) -> bool:
        if self.pid is None or self.returncode is not None:
            return False
        return signal_group(self.pid, sig)

    def wake(self) -> None:
        """SIGUSR1 to the main process only: a DataLoader worker started with spawn has no
        handler, and SIGUSR1's default action would kill it."""
        if self.pid is None or self.returncode is not None:
            return
        try:
            os.kill(self.pid, signal.SIGUSR1)
        except (ProcessLookupError, PermissionError):
            pass

    def hold(self) -> None:
        """SIGSTOP the whole group (for jobs that don't speak the control protocol)."""
        if self.signal(signal.SIGSTOP):
            self.stopped_by_signal = True

    def release(self) -> None:
        if self.signal(signal.SIGCONT):
            self.stopped_by_signal = False

    async def terminate(self, term_s: float = 10.0) -> int:
        """SIGTERM the group, wait ``term_s``, then SIGKILL. Returns the exit status.
        Descendants that left the group are reaped too (by ``wait``)."""
        if self.returncode is not None:
            return self.returncode
        if self.stopped_by_signal:
            self.release()  # a stopped process cannot act on SIGTERM
        self._snapshot_tree()
        self.signal(signal.SIGTERM)
        try:
            return await asyncio.wait_for(self.wait(), term_s)
        except TimeoutError:
            log.warning("job (pid %s) ignored SIGTERM for %.0f s; sending SIGKILL", self.pid, term_s)
            self._signal_tree(signal.SIGKILL)
            return await self.wait()


# ---------------------------------------------------------------------- a previous daemon's job
def record_tree(path: Path, pid: int, create_time: float | None, token: str,
                scope_unit: str | None) -> None:
    """Write what identifies the job's tree (see the module's docstring), atomically."""
    try:
        sid = os.getsid(pid)
    except OSError:
        sid = pid  # it leads a new session (start_new_session)
    rec = {"pid": pid, "create_time": create_time, "sid": sid, "token": token,
           "scope_unit": scope_unit}
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(json.dumps(rec))
        os.replace(tmp, path)
    except OSError as e:  # a full disk: the leader pid in the store is the fallback
        log.warning("cannot record the job's process tree in %s: %s", path, e.strerror)


def _environ_has(p: psutil.Process, token: str) -> bool:
    try:
        return p.environ().get(ENV_TOKEN) == token
    except (psutil.Error, OSError):
        return False


def marked(token: str, since: float | None) -> list[psutil.Process]:
    """Live processes (not zombies) whose environment carries ``token``, born at or after
    ``since`` (the job's start): an older process cannot be the job's."""
    if not token:
        return []
    out = []
    me = os.getpid()
    for p in psutil.process_iter(["create_time", "status"]):
        try:
            if p.pid == me or p.info["status"] == psutil.STATUS_ZOMBIE:
                continue
            if since is not None and p.info["create_time"] < since - 1.0:
                continue
        except (KeyError, TypeError):
            continue
        if _environ_has(p, token):
            out.append(p)
    return out


def leftovers(rec: dict) -> list[psutil.Process]:
    """What is left of a recorded job: the processes of its session (unless the session id now
    belongs to a newer process: then the job's session is gone) and those bearing its token."""
    sid, token = rec.get("sid"), str(rec.get("token") or "")
    since = rec.get("create_time")
    found = {p.pid: p for p in marked(token, since)}
    if isinstance(sid, int) and sid > 1:
        leader_ct = process_create_time(sid)
        reused = leader_ct is not None and since is not None and abs(leader_ct - float(since)) >= 0.05
        if not reused:
            for p in psutil.process_iter(["status"]):
                try:
                    if p.pid != os.getpid() and os.getsid(p.pid) == sid and \
                            p.info["status"] != psutil.STATUS_ZOMBIE:
                        found.setdefault(p.pid, p)
                except (OSError, psutil.Error):
                    continue
    return list(found.values())


async def end_processes(procs: list[psutil.Process], what: str, term_s: float = 10.0) -> list[int]:
    """SIGCONT + SIGTERM, up to ``term_s`` for them to go, then SIGKILL; the pids ended."""
    if not procs:
        return []
    log.warning("stopping %d process(es) %s: %s", len(procs), what,
                ", ".join(str(p.pid) for p in procs))
    for sig in (signal.SIGCONT, signal.SIGTERM):  # a SIGSTOPped process cannot act on SIGTERM
        for p in procs:
            with contextlib.suppress(psutil.Error):
                p.send_signal(sig)
    _, alive = await asyncio.to_thread(psutil.wait_procs, procs, term_s)
    for p in alive:
        with contextlib.suppress(psutil.Error):
            p.kill()
    if alive:
        await asyncio.to_thread(psutil.wait_procs, alive, 5.0)
    return [p.pid for p in procs]


async def end_leftovers(run_dir: Path) -> list[int]:
    """End what is left of the job recorded in ``run_dir`` (a daemon killed while it ran), by
    its session and token; then forget the record. The pids ended."""
    path = Path(run_dir) / TREE_FILE
    try:
        rec = json.loads(path.read_text())
    except (OSError, ValueError):
        return []
    ended: list[int] = []
    if isinstance(rec, dict):
        if rec.get("scope_unit"):
            await asyncio.to_thread(subprocess.run, ["systemctl", "--user", "stop",
                                                     str(rec["scope_unit"])],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        ended = await end_processes(await asyncio.to_thread(leftovers, rec),
                                    f"left by the previous daemon's job (pid {rec.get('pid')})")
    with contextlib.suppress(OSError):
        path.unlink()
    return ended
