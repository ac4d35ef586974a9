"""The local offload backend: the same flow as Modal with a separate process and a directory
standing in for the volume — for tests, benchmarks, and a second local GPU (pass e.g.
HIP_VISIBLE_DEVICES=1 in ``env``).

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

from daemon.control import JobControl
from daemon.jobproc import process_create_time, same_process_alive
from daemon.offload.base import (
    JobSpec,
    OffloadBackend,
    OffloadError,
    RemoteStatus,
    UploadResult,
    progress_summary,
)
from trainer.format import find_latest_valid, fsync_dir, verify


def _copytree(src: Path, dst: Path) -> int:
    """Copy a checkpoint dir to ``dst`` atomically (temp name, fsync, rename); return bytes."""
    tmp = dst.with_name(f".tmp-{dst.name}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp)
    total = 0
    for f in tmp.iterdir():
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
                 steps_per_s: float | None = None, python: str = sys.executable):
        self.root = Path(volume_dir)
        self.env = dict(env or {})
        self.steps_per_s = steps_per_s
        self.python = python

    def _vol(self, run_key: str) -> Path:
        return self.root / run_key

    def upload(self, run_key: str, checkpoint: Path | None, files: list[Path]) -> UploadResult:
        t0 = time.monotonic()
        vol = self._vol(run_key)
        (vol / "ckpt").mkdir(parents=True, exist_ok=True)
        total = 0
        if checkpoint is not None:  # only the newest valid checkpoint goes up, not the history
            total += _copytree(Path(checkpoint), vol / "ckpt" / Path(checkpoint).name)
        for f in files:
            (vol / "files").mkdir(exist_ok=True)
            shutil.copy2(f, vol / "files" / Path(f).name)
            total += Path(f).stat().st_size
        return UploadResult(total, time.monotonic() - t0)

    def launch(self, run_key: str, job: JobSpec) -> str:
        vol = self._vol(run_key)
        vol.mkdir(parents=True, exist_ok=True)
        (vol / "status.json").unlink(missing_ok=True)
        spec = job.to_dict()
        spec["env"] = {**spec["env"], **self.env}
        if self.steps_per_s:
            spec["env"]["NIGHTSHIFT_MAX_STEPS_PER_S"] = str(self.steps_per_s)
        spec["workdir"] = os.getcwd()
        (vol / "spec.json").write_text(json.dumps(spec))
        with open(vol / "remote.log", "ab") as log:
            p = subprocess.Popen([self.python, "-m", "daemon.offload.remote", "--spec", str(vol / "spec.json"),
                                  "--volume", str(vol)], stdout=log, stderr=subprocess.STDOUT,
                                 stdin=subprocess.DEVNULL, start_new_session=True,
                                 cwd=str(Path(__file__).resolve().parents[2]))
        ct = process_create_time(p.pid) or 0.0
        return f"local:{run_key}:{p.pid}:{ct:.3f}"

    @staticmethod
    def _parse(call_id: str) -> tuple[str, int, float]:
        try:
            _, key, pid, ct = call_id.split(":")
            return key, int(pid), float(ct)
        except ValueError:
            raise OffloadError(f"not a local call id: {call_id!r}") from None

    def poll(self, call_id: str) -> RemoteStatus:
        key, pid, ct = self._parse(call_id)
        vol = self._vol(key)
        recs = []
        p = vol / "run" / "progress.jsonl"
        if p.exists():
            for line in p.read_text().splitlines():
                try:
                    recs.append(json.loads(line))
                except ValueError:
                    pass
        prog = progress_summary(recs)
        status = vol / "status.json"
        if status.exists():
            st = json.loads(status.read_text())
            return RemoteStatus(st["state"], st.get("step") or prog["step"], prog["total_steps"], prog["loss"],
                                prog["steps_per_s"], st.get("error"))
        if same_process_alive(pid, ct):
            return RemoteStatus("running", prog["step"], prog["total_steps"], prog["loss"], prog["steps_per_s"])
        return RemoteStatus("preempted", prog["step"], prog["total_steps"], prog["loss"], None,
                            "the remote process ended without a result (preempted)")

    def cancel(self, call_id: str, grace_s: float = 30.0) -> None:
        """Ask the job for a final checkpoint and exit; then stop the remote process group."""
        key, pid, ct = self._parse(call_id)
        vol = self._vol(key)
        recs = (vol / "run" / "progress.jsonl")
        job_pid = None
        if recs.exists():
            for line in recs.read_text().splitlines():
                try:
                    r = json.loads(line)
                except ValueError:
                    continue
                if r.get("kind") == "start":
                    job_pid = r.get("pid")
        JobControl(vol / "run").send("exit", job_pid if job_pid and same_process_alive(job_pid, process_create_time(job_pid)) else None)
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and same_process_alive(pid, ct):
            time.sleep(0.2)
        if same_process_alive(pid, ct):
            try:
                os.killpg(pid, signal.SIGTERM)
            except (ProcessLookupError, PermissionError):
                pass

    def pull(self, run_key: str, call_id: str, dest_checkpoint_dir: Path) -> Path:
        info = find_latest_valid(self._vol(run_key) / "ckpt")
        if info is None:
            raise OffloadError("the remote volume has no valid checkpoint to bring home")
        dest = Path(dest_checkpoint_dir)
        dest.mkdir(parents=True, exist_ok=True)
        _copytree(info.path, dest / info.path.name)
        verify(dest / info.path.name)
        return dest / info.path.name
