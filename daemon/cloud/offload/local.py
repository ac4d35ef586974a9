"""The local offload backend: the same flow as Modal with a separate process and a directory
standing in for the volume — for tests, benchmarks, and a second local GPU (pass e.g.
HIP_VISIBLE_DEVICES=1 in ``env``).

It carries the job like Modal does (daemon.cloud.offload.carry): the job's workdir, minus exclusions,
is copied into the run's volume (``<root>/<run_key>/work``, by manifest: a relaunch copies only
what changed); each ``[offload] data`` dir is synced by manifest to ``<root>/data/<rel>``,
shared by every run, so a second night copies only what changed, and linked into the copy at its
relative path; the daemon's newest adopted checkpoint goes to ``adopted/``, the glob files to
``files/``; the command runs with cwd = the copied workdir (daemon.cloud.offload.remote). ``pull``
brings the newest trainer checkpoint and the newest adopted copy home to their paths.

The remote process is started detached (own session), so it survives a daemon restart; its
call id holds the pid and the process start time, so re-attaching never mistakes a recycled pid.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from daemon.cloud.offload.base import (
    JobSpec,
    OffloadBackend,
    OffloadError,
    RemoteStatus,
    UploadResult,
    progress_summary,
)
from daemon.cloud.offload.carry import Carry, manifest_name, newest_adopted_dir, sync_dir
from daemon.cloud.offload.remote import CANCEL_MARK, PROJECT
from daemon.job.control import JobControl
from daemon.job.jobproc import process_create_time, same_process_alive
from trainer.format import find_latest_valid, fsync_dir, verify


def _copytree(src: Path, dst: Path) -> int:
    """Copy a checkpoint dir to ``dst`` atomically (temp name, fsync, rename); return bytes."""
    tmp = dst.with_name(f".tmp-{dst.name}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp)
    total = 0
    for f in tmp.rglob("*"):
        if f.is_file():
            total += f.stat().st_size
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
    if dst.exists():
        shutil.rmtree(dst)
    os.rename(tmp, dst)
    fsync_dir(dst.parent)
    return total


class LocalBackend(OffloadBackend):
    name = "local"

    def __init__(self, volume_dir: str | os.PathLike, env: dict[str, str] | None = None,
                 steps_per_s: float | None = None, python: str = sys.executable,
                 carry: Carry | None = None, cancel_grace_s: float = 30.0):
        self.root = Path(volume_dir)
        self.env = dict(env or {})
        self.steps_per_s = steps_per_s
        self.python = python
        self.carry = carry
        self.cancel_grace_s = cancel_grace_s
        self.last_sync: dict[str, dict[str, int]] = {}

    def _vol(self, run_key: str) -> Path:
        return self.root / run_key

    def upload(self, run_key: str, checkpoint: Path | None, files: list[Path]) -> UploadResult:
        t0 = time.monotonic()
        vol = self._vol(run_key)
        (vol / "ckpt").mkdir(parents=True, exist_ok=True)
        total = 0
        if checkpoint is not None:  # only the newest valid checkpoint goes up, not the history
            total += _copytree(Path(checkpoint), vol / "ckpt" / Path(checkpoint).name)
        c = self.carry
        if c is not None:
            n, b = sync_dir(c.workdir, vol / "work", vol / "manifests" / "work.json", c.exclude)
            self.last_sync = {"work": {"files": n, "bytes": b}}
            total += b
            for rel in c.data:
                n, b = sync_dir(c.workdir / rel, self.root / "data" / rel,
                                self.root / "manifests" / manifest_name(rel))
                self.last_sync[f"data/{rel}"] = {"files": n, "bytes": b}
                total += b
            newest = newest_adopted_dir(c.adopted_store)
            if newest is not None and not (vol / "adopted" / newest.name).exists():
                (vol / "adopted").mkdir(parents=True, exist_ok=True)
                total += _copytree(newest, vol / "adopted" / newest.name)
        shutil.rmtree(vol / "files", ignore_errors=True)
        for f in files:  # a script's own checkpoint files, at their relative paths
            rel = self._rel(Path(f))
            dest = vol / "files" / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(f, dest)
            total += Path(f).stat().st_size
        return UploadResult(total, time.monotonic() - t0)

    def _rel(self, f: Path) -> str:
        if self.carry is not None and f.resolve().is_relative_to(self.carry.workdir):
            return f.resolve().relative_to(self.carry.workdir).as_posix()
        return f.name

    def launch(self, run_key: str, job: JobSpec) -> str:
        vol = self._vol(run_key)
        vol.mkdir(parents=True, exist_ok=True)
        (vol / "status.json").unlink(missing_ok=True)
        (vol / CANCEL_MARK).unlink(missing_ok=True)  # cleared here, before the runner exists: no race
        spec = job.to_dict()
        spec["env"] = {**spec["env"], **self.env}
        if self.steps_per_s:
            spec["env"]["NIGHTSHIFT_MAX_STEPS_PER_S"] = str(self.steps_per_s)
        c = self.carry
        if c is not None:
            spec.update({"workdir": str(vol / "work"), "data": list(c.data), "data_root": str(self.root / "data"),
                         "checkpoint_glob": c.checkpoint_glob, "progress_pattern": c.progress_pattern,
                         "keep": c.keep})
        else:
            spec["workdir"] = os.getcwd()
        (vol / "spec.json").write_text(json.dumps(spec))
        with open(vol / "remote.log", "ab") as log:
            p = subprocess.Popen([self.python, "-m", "daemon.cloud.offload.remote", "--spec", str(vol / "spec.json"),
                                  "--volume", str(vol)], stdout=log, stderr=subprocess.STDOUT,
                                 stdin=subprocess.DEVNULL, start_new_session=True,
                                 cwd=str(PROJECT))
        ct = process_create_time(p.pid) or 0.0
        return f"local:{run_key}:{p.pid}:{ct:.3f}"

    @staticmethod
    def _parse(call_id: str) -> tuple[str, int, float]:
        try:
            _, key, pid, ct = call_id.split(":")
            return key, int(pid), float(ct)
        except ValueError:
            raise OffloadError(f"not a local call id: {call_id!r}") from None

    @staticmethod
    def _records(vol: Path) -> list[dict]:
        recs = []
        p = vol / "run" / "progress.jsonl"
        if p.exists():
            for line in p.read_text(errors="replace").splitlines():
                try:
                    recs.append(json.loads(line))
                except ValueError:
                    pass
        return recs

    def poll(self, call_id: str) -> RemoteStatus:
        """"running" until the runner has finished: "cancelled" is reported only once the call
        has settled (its final checkpoint is on the volume), so a pull after it is complete."""
        key, pid, ct = self._parse(call_id)
        vol = self._vol(key)
        prog = progress_summary(self._records(vol))
        status = vol / "status.json"
        if status.exists():
            st = json.loads(status.read_text())
            return RemoteStatus(st["state"], st.get("step") or prog["step"], prog["total_steps"], prog["loss"],
                                prog["steps_per_s"], st.get("error"))
        if same_process_alive(pid, ct):
            return RemoteStatus("running", prog["step"], prog["total_steps"], prog["loss"], prog["steps_per_s"])
        return RemoteStatus("preempted", prog["step"], prog["total_steps"], prog["loss"], None,
                            "the remote process ended without a result (preempted)")

    def cancel(self, call_id: str, grace_s: float | None = None) -> None:
        """Ask for a final checkpoint and exit: a trainer/ job through its control file, any other
        job by SIGTERM to the runner (which TERMs the job, adopts what it saved, commits). Returns
        once the runner has ended or the grace has passed; poll says when it has settled."""
        key, pid, ct = self._parse(call_id)
        vol = self._vol(key)
        start = next((r for r in reversed(self._records(vol)) if r.get("kind") == "start"), None)
        job_pid = start.get("pid") if start else None
        cooperative = bool(start and start.get("protocol") and job_pid
                           and same_process_alive(job_pid, process_create_time(job_pid)))
        if cooperative:
            JobControl(vol / "run").command("exit", job_pid)
        elif same_process_alive(pid, ct):
            (vol / CANCEL_MARK).touch()  # the runner reports the TERM as a cancel, not a preemption
            os.kill(pid, signal.SIGTERM)  # once: the runner TERMs the job and bounds the wait itself
        deadline = time.monotonic() + (self.cancel_grace_s if grace_s is None else grace_s)
        while time.monotonic() < deadline and same_process_alive(pid, ct):
            time.sleep(0.2)
        if cooperative and same_process_alive(pid, ct):  # the exit command was not obeyed in time
            try:
                os.kill(pid, signal.SIGTERM)
            except (ProcessLookupError, PermissionError):
                pass

    def pull(self, run_key: str, call_id: str, dest_checkpoint_dir: Path) -> Path:
        """The newest valid trainer checkpoint into ``dest_checkpoint_dir``, and the newest valid
        adopted copy back to its relative path in the job's workdir; returns the first of them."""
        vol = self._vol(run_key)
        got: Path | None = None
        info = find_latest_valid(vol / "ckpt")
        if info is not None:
            dest = Path(dest_checkpoint_dir)
            dest.mkdir(parents=True, exist_ok=True)
            _copytree(info.path, dest / info.path.name)
            verify(dest / info.path.name)
            got = dest / info.path.name
        if self.carry is not None and self.carry.checkpoint_glob:
            from daemon.job.adopt import Adopter
            remote = Adopter(vol / "work", self.carry.checkpoint_glob, vol / "adopted", keep=self.carry.keep)
            c = remote.restore_newest(self.carry.workdir)  # verified (sha256, zip CRCs), placed atomically
            got = got or (self.carry.workdir / c.relpath if c else None)
        if got is None:
            raise OffloadError("the remote volume has no valid checkpoint to bring home")
        return got
