"""Issue 13, item 5 for real: a read-only state dir and a full disk, made with real tmpfs mounts
(this machine runs as root, so chmod alone would not bite). The daemon must run the job anyway,
say what is wrong and what to do, keep checkpoints where they belong, and stay reachable."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from daemon.job.jobproc import JobProcess
from daemon.state.lock import acquire_state_lock, fallback_dir
from tests.helpers import free_port, kill_group, nightshift, start_daemon, wait_for, write_config
from tests.test_trainer_resume import SMALL


def _mount(target: Path, opts: str) -> None:
    target.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(target)],
                       capture_output=True, text=True)
    if r.returncode != 0:  # the one thing a container may truly not allow
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip()}): needs CAP_SYS_ADMIN")


@pytest.fixture
def mounts():
    done: list[Path] = []

    def mount(target: Path, opts: str) -> Path:
        _mount(target, opts)
        done.append(target)
        return target

    yield mount
    for t in reversed(done):
        subprocess.run(["umount", "-l", str(t)], capture_output=True)


def _full(mount, target: Path) -> Path:
    """A 256 KiB tmpfs filled to the last page: an empty file can still be created, no data."""
    mount(target, "size=256k,mode=0700")
    with open(target / "filler", "wb", buffering=0) as f, pytest.raises(OSError):
        while True:
            f.write(b"\0" * 4096)
    return target


def _progress(run_dir: Path) -> list[dict]:
    p = run_dir / "progress.jsonl"
    if not p.exists():
        return []
    return [json.loads(x) for x in p.read_text().splitlines() if x.strip()]


@pytest.mark.parametrize("how", ["read-only", "full"])
def test_lock_falls_back_keyed_by_the_state_dirs_real_path_and_still_excludes(tmp_path, mounts, how,
                                                                               monkeypatch):
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "rt"))
    (tmp_path / "rt").mkdir()
    state = tmp_path / "state"
    if how == "read-only":
        mounts(state, "ro,mode=0700")
    else:
        _full(mounts, state)
    lock = acquire_state_lock(state)
    try:
        assert lock.fallback is not None and lock.path.parent == fallback_dir(state)
        assert str(lock.path).startswith(str(tmp_path / "rt" / "nightshift"))
        # another process on the same dir, reached through a symlink, is kept out by the same lock
        (tmp_path / "alias").symlink_to(state)
        code = ("import sys; from daemon.state.lock import acquire_state_lock, StateDirLocked\n"
                f"try:\n acquire_state_lock({str(tmp_path / 'alias')!r})\n"
                "except StateDirLocked as e:\n print(e.pid); sys.exit(75)\n")
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           env={**os.environ, "XDG_RUNTIME_DIR": str(tmp_path / "rt")})
        assert r.returncode == 75 and r.stdout.strip() == str(os.getpid()), r.stdout + r.stderr
    finally:
        lock.release()


def test_a_daemon_that_can_write_its_state_dir_also_holds_the_fallback_lock(tmp_path, monkeypatch):
    """So one started while the dir was read-only (fallback only) and one started after it was
    made writable again can never both run."""
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    lock = acquire_state_lock(tmp_path / "state")
    try:
        assert lock.fallback is None and lock.path == tmp_path / "state" / "daemon.lock"
        import fcntl
        fd = os.open(fallback_dir(tmp_path / "state") / "daemon.lock", os.O_RDWR)
        with pytest.raises(BlockingIOError):
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.close(fd)
    finally:
        lock.release()


@pytest.mark.slow
@pytest.mark.parametrize("how", ["read-only", "full"])
def test_daemon_on_an_unwritable_state_dir_runs_the_job_says_why_and_stays_controllable(
        tmp_path, mounts, how):
    rt = tmp_path / "rt"
    rt.mkdir()
    env = {"XDG_RUNTIME_DIR": str(rt)}
    state = tmp_path / "state"
    if how == "read-only":
        mounts(state, "ro,mode=0700")
    else:
        _full(mounts, state)
    port = free_port()
    job = [sys.executable, "-m", "trainer.reference", "--steps", "100000", *SMALL,
           "--max-steps-per-s", "20"]
    cfg = write_config(tmp_path, {"job": {"command": job}, "api": {"enabled": True, "port": port},
                                  "checkpoint": {"interval": 20}})
    d = start_daemon(cfg, env=env)
    run_dir = fallback_dir(state, env) / "runs" / "1"
    try:
        # the job trains: its run files are in the fallback dir, its checkpoints where configured
        wait_for(lambda: d.poll() is not None or any(r.get("step", 0) >= 40 for r in _progress(run_dir)),
                 120, interval=0.5, what="training on an unwritable state dir")
        assert d.poll() is None, d.stdout.read()
        wait_for(lambda: list((tmp_path / "ckpt" / "run-1").glob("step_*")), 60,
                 what="a checkpoint in the configured checkpoint_dir")
        # the CLI finds the daemon (api.json) and its token in the same fallback dir
        st = nightshift("status", "--json", "-c", str(cfg), env=env, timeout=60)
        assert st.returncode == 0, st.stdout + st.stderr
        status = json.loads(st.stdout)
        assert status["step"] and status["store"]["problem"] and str(state) in status["store"]["problem"]
        p = nightshift("pause", "-c", str(cfg), env=env, timeout=60)
        assert p.returncode == 0, p.stdout + p.stderr
        wait_for(lambda: any(r["kind"] == "held" for r in _progress(run_dir)), 60, what="held")
        lg = nightshift("logs", "-n", "5", "-c", str(cfg), env=env, timeout=60)  # the job's output
        assert lg.returncode == 0 and lg.stdout.strip(), lg.stdout + lg.stderr
    finally:
        if d.poll() is None:
            d.terminate()
            try:
                d.wait(60)
            except subprocess.TimeoutExpired:
                kill_group(d)
        out = d.stdout.read()
    assert f"cannot write the state dir {state}" in out and "Fix:" in out
    assert str(fallback_dir(state, env)) in out
    assert "Traceback" not in out, out


def test_job_log_that_cannot_be_reopened_at_rotation_does_not_stop_the_output_reader(tmp_path,
                                                                                       mounts):
    """A disk that fills mid-run: rotation cannot reopen job.log. The reader used to die there,
    the pipe filled and the job blocked. Here the tmpfs runs out of inodes (a new file fails with
    ENOSPC) while the open job.log keeps its own."""
    logs = mounts(tmp_path / "logs", "size=8m,nr_inodes=64,mode=0700")
    code = ("import sys, time\n"
            "for i in range(20): print(f'early {i} ' + 'y' * 40, flush=True)\n"
            "time.sleep(1.5)\n"  # the disk fills here
            "for i in range(20000): print(f'line {i:06d} ' + 'y' * 40)\n"  # ~1 MB: the pipe would fill
            "print('finished', flush=True)\n")
    lines: list[str] = []

    def fill_inodes() -> int:
        n = 0
        while True:
            try:
                (logs / f"filler-{n}").touch()
            except OSError:
                return n
            n += 1

    async def main():
        job = JobProcess([sys.executable, "-c", code], cwd=tmp_path, env=dict(os.environ),
                         log_path=logs / "job.log", scope=False, tree_poll_s=0.1,
                         log_max_bytes=16 * 1024, on_line=lines.append)
        await job.start()
        await asyncio.sleep(0.8)
        assert (logs / "job.log").exists() and fill_inodes() > 0
        return await asyncio.wait_for(job.wait(), 60)

    assert asyncio.run(main()) == 0
    assert lines[-1] == "finished" and "line 019999 " + "y" * 40 in lines
