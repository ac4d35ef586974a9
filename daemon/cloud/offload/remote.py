"""The remote side of an offload: put the job's checkpoints back in place, run the same command in
the job's own workdir, keep its checkpoints safe on the volume, commit as it goes. The body of
the Modal function, and the process the local and SSH backends start
(`python -m daemon.cloud.offload.remote --spec FILE --volume DIR`).

The volume (``volume_root``)::

    ckpt/step_*/        trainer/ checkpoints (NIGHTSHIFT_CHECKPOINT_DIR)
    run/progress.jsonl  progress: the job's own (trainer/), or parsed from its output
                        (``progress_pattern``, daemon.job.outputprogress)
    run/summary.json    what the daemon polls (a few hundred bytes, however long the run): the
                        last progress record, the newest checkpoint's step, and "state": "running",
                        or "final" with the result once the last commit is on its way (written
                        just before each commit, so it lands with the data it describes)
    adopted/v_*/        a script's own checkpoints (``checkpoint_glob``), adopted like at home
                        (daemon.job.adopt): settled, verified, versioned; seeded by the daemon
    files/<relpath>     checkpoint files the daemon sent, placed at their relative paths
    job.log

``spec`` keys: command, resume_command, env, total_steps, checkpoint_interval; optional
``workdir`` (the job's working directory: Modal's image layer, the local/SSH copy; default the
volume root), ``data`` + ``data_root`` (each data dir is linked at its relative path from the
data volume), ``checkpoint_glob``, ``progress_pattern``, ``keep``, ``settle_s``.

A preempted attempt (killed at any moment) is simply run again: it restores the newest adopted
copy / resumes from the newest valid trainer checkpoint. A cancellation (Modal's
``FunctionCall.cancel()`` raises ``InputCancellation`` here from its SIGUSR1 handler; the local
runner gets SIGTERM) stops the job with SIGTERM to its process group, waits at most
``term_grace_s`` (then SIGKILL), adopts what it left, commits, and re-raises or reports
"cancelled" (a SIGTERM without the backend's ``cancel_requested`` mark is a preemption:
"preempted") — so the checkpoint written on the way out reaches the daemon, and the daemon pulls
only after the call has settled.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # types only: the body imports what it runs where it runs it
    from daemon.cloud.offload.base import RemoteResult, RemoteSpec
    from daemon.job.progress import ProgressRecord

import daemon

log = logging.getLogger("nightshift.remote")
# The directory holding daemon/ and trainer/ (the shipped sources), found from the top package,
# not by counting this module's depth: moving it between packages must not change what it names.
PROJECT = Path(daemon.__file__).resolve().parent.parent
CANCEL_MARK = "cancel_requested"  # in the volume: a SIGTERM that follows it is a cancel
SUMMARY = "summary.json"  # in run/: what the daemon reads each poll (O(1) in the run's length)
PROGRESS_KEYS = ("step", "total_steps", "loss", "steps_per_s")


def write_summary(run_dir: Path, last: ProgressRecord | None, checkpoint_step: int | None,
                  state: str = "running", result: str | None = None) -> None:
    """The poll's whole answer, replaced atomically (the daemon never reads half of it)."""
    data = {"t": time.time(), "state": state, "result": result, "checkpoint_step": checkpoint_step,
            **{k: (last or {}).get(k) for k in PROGRESS_KEYS}}
    tmp = run_dir / (SUMMARY + ".tmp")
    try:
        tmp.write_text(json.dumps(data))
        os.replace(tmp, run_dir / SUMMARY)
    except OSError as e:  # progress is best effort; the checkpoint and the commit are what count
        log.warning("cannot write %s: %s", SUMMARY, e)


FINAL_S = 15.0  # on an interrupt (Modal's preemption: SIGINT, SIGKILL ~30 s later): checkpoint + commit
COMMIT_RESERVE_S = 5.0  # of FINAL_S, kept for the commit: the job gets the rest to save


def _guarded(commit: Callable[[], None], attempts: int = 3) -> Callable[..., bool]:
    """The volume commit, never fatal: a failed commit is retried at once (final; no sleeps:
    on the way out every second counts, and the SDK's commit already backs off inside) or left
    for the next one; with ``deadline`` (monotonic) the final commit runs in a thread and is
    given up at the deadline. Returns whether it succeeded; ``failures`` counts."""
    def once() -> bool:
        try:
            commit()
            return True
        except Exception as e:  # noqa: BLE001 - an SDK/network failure; the job goes on
            run.failures += 1  # type: ignore[attr-defined]
            log.warning("volume commit failed (%s)", e)
            return False

    def run(final: bool = False, deadline: float | None = None) -> bool:
        for _ in range(attempts if final else 1):
            if deadline is None:
                if once():
                    return True
                continue
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            got: list[bool] = []
            t = threading.Thread(target=lambda out=got: out.append(once()), daemon=True, name="final-commit")
            t.start()
            t.join(left)
            if got and got[0]:
                return True
            if not got:
                log.warning("the final commit did not finish within its %.0f s budget", FINAL_S)
                return False
        return False
    run.failures = 0  # type: ignore[attr-defined]
    return run


def _place_sent_files(files_dir: Path, workdir: Path) -> list[str]:
    """The checkpoint files the daemon sent go to their relative paths in the workdir."""
    placed: list[str] = []
    if not files_dir.is_dir():
        return placed
    from daemon.job.adopt import place
    for f in sorted(p for p in files_dir.rglob("*") if p.is_file()):
        rel = f.relative_to(files_dir).as_posix()
        place(f, workdir / rel)
        placed.append(rel)
    return placed


def _stop(proc: subprocess.Popen, grace_s: float, kill_wait_s: float = 5.0) -> None:
    """SIGTERM to the job's process group, a bounded wait, then SIGKILL."""
    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, kill_wait_s)):
        if proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


class _Output(threading.Thread):
    """Copies the job's output to job.log and, with a pattern, progress records to progress.jsonl."""

    def __init__(self, proc: subprocess.Popen, log_path: Path, progress_path: Path, pattern: str | None,
                 total_steps: int | None):
        super().__init__(daemon=True, name="job-output")
        from daemon.job.outputprogress import OutputProgress
        self.proc, self.log_path, self.progress_path = proc, log_path, progress_path
        self.parser = OutputProgress(pattern, total_steps=total_steps) if pattern else None
        self.records = 0
        self.last: ProgressRecord | None = None  # the newest record parsed from the output

    @property
    def step(self) -> int | None:
        return self.parser.step if self.parser else None

    def run(self) -> None:
        assert self.proc.stdout is not None
        with open(self.log_path, "ab") as log_f, open(self.progress_path, "a", buffering=1) as prog:
            for raw in iter(self.proc.stdout.readline, b""):
                log_f.write(raw)
                log_f.flush()
                if self.parser is None:
                    continue
                rec = self.parser.feed(raw.decode(errors="replace"))
                if rec is not None:
                    prog.write(json.dumps(rec) + "\n")
                    self.records += 1
                    self.last = rec


def run_remote(spec: RemoteSpec, volume_root: str, commit: Callable[[], None] = lambda: None,
               poll_s: float = 0.5, term_grace_s: float = 20.0, commit_every_s: float = 60.0) -> RemoteResult:
    from daemon.cloud.offload.carry import link_data
    from daemon.job.adopt import Adopter
    from daemon.job.progress import ProgressTail
    from trainer.format import find_latest_valid

    vol = Path(volume_root)
    ckpt_dir, run_dir = vol / "ckpt", vol / "run"
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    workdir = Path(spec.get("workdir") or vol)
    workdir.mkdir(parents=True, exist_ok=True)
    save = _guarded(commit)
    data, data_root = spec.get("data"), spec.get("data_root")
    if data and data_root:
        link_data(workdir, Path(data_root), data)
    placed = _place_sent_files(vol / "files", workdir)
    adopter = None
    restored = None
    if checkpoint_glob := spec.get("checkpoint_glob"):
        adopter = Adopter(workdir, checkpoint_glob, vol / "adopted", keep=int(spec.get("keep") or 3),
                          settle_s=float(spec.get("settle_s") or 2.0), log=log.info)
        restored = adopter.restore_newest()  # the newest valid copy, in place, before the command
    info = find_latest_valid(ckpt_dir)
    resume = info is not None or restored is not None
    resume_command = spec.get("resume_command")
    command = resume_command if resume and resume_command else spec["command"]
    if command and command[0] in ("python", "python3"):
        command = [sys.executable, *command[1:]]
    env = {**os.environ, **(spec.get("env") or {}), "NIGHTSHIFT_RUN_DIR": str(run_dir),
           "NIGHTSHIFT_CHECKPOINT_DIR": str(ckpt_dir), "NIGHTSHIFT_RESUME": str(info.path) if info else ""}
    # the shipped sources (daemon/, trainer/) must be importable by the job the container starts
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PROJECT), env.get("PYTHONPATH", "")) if p)
    env.pop("NIGHTSHIFT_SIM_GPU", None)  # the cloud GPU is not the flaky local one
    if spec.get("total_steps"):
        env["NIGHTSHIFT_TOTAL_STEPS"] = str(spec["total_steps"])
    if spec.get("checkpoint_interval"):
        env["NIGHTSHIFT_CHECKPOINT_INTERVAL"] = str(spec["checkpoint_interval"])
    if spec.get("data_root"):
        env["NIGHTSHIFT_DATA_DIR"] = str(spec["data_root"])
    (run_dir / "control.json").unlink(missing_ok=True)
    tail = ProgressTail(run_dir / "progress.jsonl", from_end=True)
    log.info("running %s in %s (resume: %s; placed %s)", command, workdir,
             (info.path.name if info else None) or (restored.relpath if restored else None), placed or "-")
    proc = subprocess.Popen(command, cwd=str(workdir), env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    out = _Output(proc, vol / "job.log", run_dir / "progress.jsonl", spec.get("progress_pattern"),
                  spec.get("total_steps"))
    out.start()
    terminated = threading.Event()

    term_at: list[float] = []

    def forward(signum: int, frame: FrameType | None) -> None:  # preemption / local cancel: let the job save
        if terminated.is_set():
            return  # once: a second TERM would hit a script in its own save-on-TERM handler
        terminated.set()
        term_at.append(time.monotonic())
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except (ProcessLookupError, PermissionError):
            pass
    old_term = None
    if threading.current_thread() is threading.main_thread():
        old_term = signal.signal(signal.SIGTERM, forward)
    done = cooperative = False
    last_commit, seen = time.monotonic(), 0
    last: ProgressRecord | None = None  # the newest progress record (the summary's)
    ckpt_step: int | None = info.step if info else None

    def summary(state: str = "running", result: str | None = None) -> None:
        newest = adopter.newest() if adopter is not None else None
        step = ckpt_step if ckpt_step is not None else (newest.step if newest else None)
        write_summary(run_dir, last if last is not None else out.last, step, state, result)

    def absorb() -> bool:
        nonlocal done, cooperative, last, ckpt_step
        durable = False
        for rec in tail.read():
            kind = rec.get("kind")
            if kind == "progress":
                last = rec
            elif kind == "checkpoint" and isinstance(step := rec.get("step"), int):
                ckpt_step = step
            durable = durable or kind == "checkpoint"
            done = done or kind == "done"
            cooperative = cooperative or (kind == "start" and bool(rec.get("protocol")))
        return durable

    try:
        while True:
            try:
                rc = proc.wait(timeout=poll_s)
                break
            except subprocess.TimeoutExpired:
                pass
            if term_at and time.monotonic() - term_at[0] > term_grace_s:
                _stop(proc, 0.0)  # TERMed a grace ago and still running: bounded, so KILL
            durable = absorb()
            if adopter is not None and adopter.observe(out.step) is not None:
                durable = True
            if durable or (out.records != seen and time.monotonic() - last_commit >= commit_every_s):
                summary()
                save(False)  # durable and visible to the daemon's poll/pull
                last_commit, seen = time.monotonic(), out.records
    except BaseException as exc:
        # Modal's cancellation (InputCancellation, from its SIGUSR1 handler), an interrupt
        # (preemption: SIGINT, SIGKILL ~30 s later): the job's checkpoint on the way out must
        # reach the volume before we go, all within FINAL_S, nothing sleeping on the way
        deadline = time.monotonic() + FINAL_S
        _stop(proc, max(0.5, min(term_grace_s, FINAL_S - COMMIT_RESERVE_S)), kill_wait_s=1.0)
        out.join(timeout=max(0.1, min(1.0, deadline - COMMIT_RESERVE_S - time.monotonic())))
        if adopter is not None:
            adopter.observe(out.step, writer_stopped=True)
        absorb()
        # Modal's preemption is SIGINT (KeyboardInterrupt here): the input is run again
        cancel = type(exc).__name__ == "InputCancellation" or (vol / CANCEL_MARK).exists()
        summary("final", "cancelled" if cancel else "preempted")
        save(True, deadline=deadline)
        if not out.is_alive() and proc.stdout is not None:
            proc.stdout.close()
        raise
    finally:
        if old_term is not None:
            signal.signal(signal.SIGTERM, old_term)
    out.join(timeout=5.0)
    if not out.is_alive() and proc.stdout is not None:
        proc.stdout.close()
    absorb()
    if adopter is not None:
        adopter.observe(out.step, writer_stopped=True)
    if done or (rc == 0 and not cooperative and not terminated.is_set()):
        state = "succeeded"
    elif terminated.is_set():
        # SIGTERM: the backend's cancel (it leaves cancel_requested first) or the machine going
        # away (a preempted container): "preempted" makes the daemon launch again, resuming
        state = "cancelled" if (vol / CANCEL_MARK).exists() else "preempted"
    elif rc == 0 and cooperative:
        state = "cancelled"  # a trainer/ job's exit command, after its final checkpoint
    else:
        state = "failed"
    summary("final", state)  # the marker lands with the last commit: the call has settled
    committed = save(True)
    final = find_latest_valid(ckpt_dir)
    newest = adopter.newest() if adopter is not None else None
    return {"state": state, "returncode": rc,
            "step": final.step if final else (newest.step if newest else out.step),
            "final_checkpoint": str(final.path) if final else None,
            "adopted": {"relpath": newest.relpath, "step": newest.step, "version": newest.version}
            if newest else None,
            "committed": committed,
            "error": None if state in ("succeeded", "cancelled") else _tail(vol / "job.log")}


def _tail(path: Path, n: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


VMSTAT = "/proc/vmstat"  # its oom_kill counter: how the box says its kernel OOM-killed something


def oom_kills(path: str | None = None) -> int | None:
    """The kernel's OOM-kill count on this box (Linux >= 4.13), None when unreadable."""
    try:
        for line in Path(path or os.environ.get("NIGHTSHIFT_VMSTAT") or VMSTAT).read_text().splitlines():
            if line.startswith("oom_kill "):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return None


def main() -> int:
    ap = argparse.ArgumentParser(prog="python -m daemon.cloud.offload.remote")
    ap.add_argument("--spec", required=True)
    ap.add_argument("--volume", required=True)
    a = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s remote: %(message)s")
    spec = json.loads(Path(a.spec).read_text())
    t0 = time.monotonic()
    ooms = oom_kills()
    (Path(a.volume) / "oom_start.json").write_text(json.dumps({"oom_kill": ooms}))  # for the daemon's poll
    res: RemoteResult
    try:
        res = run_remote(spec, a.volume)
    except OSError as e:  # the command could not start (a missing executable): the job's failure
        res = {"state": "failed", "returncode": None, "step": None, "error": f"cannot start the job: {e}"}
    res["seconds"] = time.monotonic() - t0
    # the job killed by SIGKILL while the kernel's OOM count grew: the job's own death (it needs
    # more memory than the box has), not the box going away; counted apart by the daemon
    after = oom_kills()
    res["oom_killed"] = bool(res.get("returncode") == -signal.SIGKILL and ooms is not None
                             and after is not None and after > ooms)
    tmp = Path(a.volume) / "status.json.tmp"
    tmp.write_text(json.dumps(res))
    os.replace(tmp, Path(a.volume) / "status.json")
    return 0 if res["state"] == "succeeded" else 1


if __name__ == "__main__":
    sys.exit(main())

