"""Adopted checkpoints for unmodified scripts: real torch.save zip files (the tests may import
torch; daemon/job/adopt.py does not), a real kill mid-write, a real nanoGPT-habit script killed and
resumed from the restored copy."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from daemon.job.adopt import Adopter, Unverifiable, step_of, verify_file
from tests.helpers import JOBS


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def save_ckpt(path: Path, iter_num: int, n: int = 2000) -> bytes:
    """What nanoGPT's torch.save writes (a zip), straight onto the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(iter_num)
    torch.save({"model": {"w": torch.randn(n)}, "optimizer": {"state": {0: {"step": torch.tensor(5.0)}}},
                "iter_num": iter_num, "best_val_loss": 1.5, "config": {"max_iters": 5000}}, path)
    bump_mtime(path)
    return path.read_bytes()


def bump_mtime(path: Path) -> None:
    st = path.stat()  # coarse-mtime filesystems: make each rewrite visibly newer
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10_000_000))


def make(tmp_path: Path, clock: Clock, keep: int = 3, glob: str = "out/ckpt.pt") -> Adopter:
    return Adopter(tmp_path / "work", glob, tmp_path / "state" / "adopted" / "run1", keep=keep, clock=clock,
                   settle_s=2.0)


def test_a_complete_zip_is_adopted_at_first_sight_without_a_settling_wait(tmp_path):
    """Issue 25: saves 2.5 s apart were never adopted under the 2 s "settled" rule. A torch zip
    whose central directory and CRCs check out is complete: it is adopted the poll it is seen."""
    clock = Clock()
    a = make(tmp_path, clock)
    data = save_ckpt(tmp_path / "work/out/ckpt.pt", 250)
    c = a.observe(step=280)
    assert c is not None and c.step == 250  # read from the checkpoint's iter_num, not the output
    assert c.relpath == "out/ckpt.pt" and c.verified == "zip-crc" and c.bytes == len(data)
    assert c.path == tmp_path / "state/adopted/run1/v_000001/out/ckpt.pt" and c.path.read_bytes() == data
    meta = json.loads((tmp_path / "state/adopted/run1/v_000001/meta.json").read_text())
    assert meta["step"] == 250 and meta["sha256"] == c.sha256 and meta["t"] == 1000.0
    assert a.has_any() and a.newest() == c
    clock.t += 10
    assert a.observe(step=300) is None  # unchanged: not adopted twice
    assert c.to_status(clock.t)["age_s"] == 10.0
    save_ckpt(tmp_path / "work/out/ckpt.pt", 500)  # the next save, 0.5 s later: adopted at once
    assert a.observe().step == 500
    from daemon.job.progress import validate_record
    from daemon.job.status import JobFacts
    facts = JobFacts()
    facts.observe(validate_record(c.as_record()))  # status sees it as the newest checkpoint
    assert facts.checkpoint["step"] == 250 and facts.checkpoint["t"] == 1000.0


def test_a_file_that_cannot_be_checked_waits_for_quiet_and_a_rewrite_restarts_the_wait(tmp_path):
    clock = Clock()
    a = Adopter(tmp_path / "work", "out/*.dat", tmp_path / "store", clock=clock, settle_s=2.0)
    p = tmp_path / "work/out/model.dat"
    p.parent.mkdir(parents=True)
    p.write_bytes(b"a" * 100)
    assert a.observe() is None  # first sight: not settled yet
    clock.t += 1.9
    p.write_bytes(b"b" * 120)  # rewritten: the wait starts over
    bump_mtime(p)
    clock.t += 0.2
    assert a.observe() is None
    clock.t += 1.0
    assert a.observe() is None  # quiet for 1 s < settle_s
    clock.t += 1.5
    c = a.observe(step=7)
    assert c.verified == "settled" and c.bytes == 120


def test_a_torn_zip_is_refused_once_and_the_next_good_save_is_adopted(tmp_path):
    clock = Clock()
    logs: list[str] = []
    a = Adopter(tmp_path / "work", "out/ckpt.pt", tmp_path / "store", clock=clock, settle_s=2.0, log=logs.append)
    p = tmp_path / "work/out/ckpt.pt"
    data = save_ckpt(p, 250)
    p.write_bytes(data[: len(data) // 2])  # truncated mid-file, as after a kill mid-save
    a.observe()
    clock.t += 3
    assert a.observe() is None and not a.has_any()
    assert "not a complete zip archive" in a.last_refusal and len(logs) == 1
    clock.t += 3
    assert a.observe() is None and len(logs) == 1  # reported once, not every poll
    # a member whose bytes rot but whose central directory is intact: the CRC catches it
    raw = bytearray(save_ckpt(p, 500))
    i = raw.index(b"iter_num")
    raw[i + 20] ^= 0xFF
    p.write_bytes(bytes(raw))
    bump_mtime(p)
    a.observe()
    clock.t += 3
    assert a.observe() is None and "CRC" in a.last_refusal or "zip" in a.last_refusal
    save_ckpt(p, 750)
    assert a.observe().step == 750  # complete: adopted at first sight


def test_zeros_or_random_bytes_in_a_pt_file_are_not_a_torch_zip_and_never_adopted(tmp_path):
    """Issue 25: a ckpt.pt overwritten with zeros or random bytes of the same size (a power cut
    after a GPU hang) was adopted as "settled" and put back ahead of two good copies."""
    clock = Clock()
    a = make(tmp_path, clock)
    p = tmp_path / "work/out/ckpt.pt"
    for it in (250, 500):
        save_ckpt(p, it)
        assert a.observe().step == it
    size = p.stat().st_size
    for junk in (b"\x00" * size, os.urandom(size)):
        p.write_bytes(junk)
        bump_mtime(p)
        assert a.observe() is None
        clock.t += 3
        assert a.observe() is None and "not a torch zip" in a.last_refusal
        assert [c.step for c in a.candidates()] == [500, 250]
    c = a.restore()
    assert c.step == 500 and step_of(p) == 500 and verify_file(p) == "zip-crc"
    for suffix in (".pt", ".pth", ".bin", ".ckpt"):
        q = tmp_path / f"junk{suffix}"
        q.write_bytes(b"\x00" * 64)
        with pytest.raises(Unverifiable, match="not a torch zip"):
            verify_file(q)


def test_keep_n_copies_newest_first(tmp_path):
    clock = Clock()
    a = make(tmp_path, clock, keep=3)
    for it in (100, 200, 300, 400, 500):
        save_ckpt(tmp_path / "work/out/ckpt.pt", it)
        assert a.observe().step == it
    store = tmp_path / "state/adopted/run1"
    assert sorted(os.listdir(store)) == ["v_000003", "v_000004", "v_000005"]
    assert [step_of(store / v / "out/ckpt.pt") for v in ("v_000003", "v_000004", "v_000005")] == [300, 400, 500]


def test_a_kill_mid_write_costs_one_interval_restore_puts_the_last_good_copy_back_in_place(tmp_path):
    """A real process rewriting ckpt.pt in place (open 'wb', like torch.save) is SIGKILLed
    halfway: the torn file is never adopted and restore_newest puts step 250 back."""
    clock = Clock()
    a = make(tmp_path, clock)
    p = tmp_path / "work/out/ckpt.pt"
    save_ckpt(p, 250, n=200_000)
    assert a.observe().step == 250
    new = tmp_path / "new.pt"
    save_ckpt(new, 500, n=200_000)
    writer = subprocess.Popen([sys.executable, "-c", (
        "import sys, time\n"
        "data = open(sys.argv[1], 'rb').read()\n"
        "with open(sys.argv[2], 'wb') as f:\n"
        "    for i in range(0, len(data), 65536):\n"
        "        f.write(data[i:i + 65536]); f.flush()\n"
        "        if i >= len(data) // 2: print('half', flush=True); time.sleep(60)\n"), str(new), str(p)],
        stdout=subprocess.PIPE, text=True)
    assert writer.stdout.readline().strip() == "half"
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    assert 0 < p.stat().st_size < new.stat().st_size
    a.observe()
    clock.t += 3
    assert a.observe() is None and a.newest().step == 250  # the torn file is not the newest
    c = a.restore_newest()
    assert c.step == 250 and step_of(p) == 250 and verify_file(p) == "zip-crc"
    assert torch.load(p, map_location="cpu")["iter_num"] == 250  # the script can resume from it
    assert not [n for n in os.listdir(p.parent) if n.startswith(".nightshift")]  # no temp left
    clock.t += 3
    assert a.observe() is None  # our own restore is not adopted as a new version


def test_restore_skips_a_corrupted_stored_copy_for_the_next_older_one(tmp_path):
    clock = Clock()
    logs: list[str] = []
    a = Adopter(tmp_path / "work", "out/ckpt.pt", tmp_path / "store", clock=clock, settle_s=2.0, log=logs.append)
    p = tmp_path / "work/out/ckpt.pt"
    for it in (250, 500):
        save_ckpt(p, it)
        a.observe()
        clock.t += 3
        a.observe()
    stored = tmp_path / "store/v_000002/out/ckpt.pt"
    raw = bytearray(stored.read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # bit rot in the store, same size
    stored.write_bytes(bytes(raw))
    p.unlink()
    c = a.restore_newest()
    assert c.version == 1 and step_of(p) == 250
    assert any("v_000002" in m and "checksum" in m for m in logs)


def test_restore_adopts_a_newer_valid_file_the_dead_job_left_before_it_settled(tmp_path):
    """The job saved at 500 and was killed 1 s later: the file verifies, so it is the one kept."""
    clock = Clock()
    a = make(tmp_path, clock)
    p = tmp_path / "work/out/ckpt.pt"
    save_ckpt(p, 250)
    a.observe()
    clock.t += 3
    a.observe()
    data = save_ckpt(p, 500)
    clock.t += 1
    c = a.restore_newest()
    assert c.step == 500 and c.version == 2 and p.read_bytes() == data


def test_a_file_that_cannot_be_checked_is_adopted_on_settling_alone_and_never_preferred(tmp_path):
    clock = Clock()
    a = Adopter(tmp_path / "work", "ckpt/*", tmp_path / "store", clock=clock, settle_s=2.0)
    (tmp_path / "work/ckpt").mkdir(parents=True)
    save_ckpt(tmp_path / "work/ckpt/a.pt", 30)
    assert a.observe(step=35).step == 30
    (tmp_path / "work/ckpt/model.dat").write_bytes(b"\x00" * 100)
    a.observe(step=40)
    clock.t += 3
    c = a.observe(step=55)
    assert c.verified == "settled" and c.step == 40  # the step when the change was first seen
    # newer, but it could not be checked: a restore tries the verified copy first
    assert [x.relpath for x in a.candidates()] == ["ckpt/a.pt", "ckpt/model.dat"]


def test_a_new_adopter_on_the_same_store_does_not_adopt_the_same_file_again(tmp_path):
    clock = Clock()
    a = make(tmp_path, clock)
    save_ckpt(tmp_path / "work/out/ckpt.pt", 250)
    a.observe()
    clock.t += 3
    a.observe()
    b = make(tmp_path, clock)  # the daemon restarted
    b.observe()
    clock.t += 3
    assert b.observe() is None and b.newest().version == 1


def test_hf_checkpoint_dirs_are_adopted_whole_and_a_torn_one_is_moved_aside_on_restore(tmp_path):
    clock = Clock()
    a = Adopter(tmp_path / "work", "out/checkpoint-*", tmp_path / "store", clock=clock, settle_s=2.0)
    good = tmp_path / "work/out/checkpoint-500"
    save_ckpt(good / "optimizer.pt", 500)
    (good / "trainer_state.json").write_text(json.dumps({"global_step": 500}))
    c = a.observe()
    assert c.step == 500 and c.relpath == "out/checkpoint-500" and c.verified == "contents"
    torn = tmp_path / "work/out/checkpoint-1000"
    save_ckpt(torn / "optimizer.pt", 1000)  # killed before trainer_state.json was written
    clock.t += 3
    assert a.observe() is None
    a.restore_newest()
    assert not torn.exists() and (tmp_path / "work/out/.nightshift-torn-checkpoint-1000").is_dir()
    assert sorted(p.name for p in (tmp_path / "work/out").glob("checkpoint-*")) == ["checkpoint-500"]


def test_adopt_does_not_import_torch():
    code = "import sys, daemon.job.adopt, daemon.job.outputprogress; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def _losses(out: str) -> dict[int, str]:
    return {int(m[1]): m[2] for m in re.finditer(r"iter (\d+): loss (\S+),", out)}


@pytest.mark.slow
def test_nanogpt_like_killed_mid_run_resumes_from_the_restored_copy_with_identical_losses(tmp_path):
    """The script, unmodified, under an Adopter polled like the daemon does; SIGKILL after its
    second save; ckpt.pt torn on top; restore; --init_from=resume reproduces the reference."""
    work = tmp_path / "work"
    work.mkdir()
    args = [sys.executable, str(JOBS / "nanogpt_like.py"), "--out_dir=out", "--max_iters=60",
            "--eval_interval=20", "--log_interval=1"]
    ref = subprocess.run(args, cwd=work, capture_output=True, text=True, check=True).stdout
    (work / "out/ckpt.pt").unlink()
    a = Adopter(work, "out/ckpt.pt", tmp_path / "store", keep=2, clock=time.monotonic, settle_s=0.2)
    job = subprocess.Popen(args + ["--sleep=0.03"], cwd=work, stdout=subprocess.PIPE, text=True)
    seen = ""
    for line in job.stdout:
        seen += line
        a.observe()
        if line.startswith("iter 45:"):
            break
    job.kill()
    job.wait()
    a.observe()
    time.sleep(0.25)
    a.observe()
    assert a.newest().step == 40
    p = work / "out/ckpt.pt"
    p.write_bytes(p.read_bytes()[:1000])  # and torn on top, as by a kill mid-save
    assert a.restore_newest().step == 40
    resumed = subprocess.run(args + ["--init_from=resume"], cwd=work, capture_output=True, text=True,
                             check=True).stdout
    r, ref_l = _losses(resumed), _losses(ref)
    assert min(r) == 40 and all(r[i] == ref_l[i] for i in r)  # bit-identical from the resumed iter


def test_a_file_there_before_the_run_is_never_adopted_but_kept_aside_until_the_job_rewrites_it(tmp_path):
    """Issue 25: an out/ckpt.pt left by an earlier run (nanoGPT's quickstart leaves one) was
    adopted by a new run and resumed. It is an older run's: copied aside, never adopted."""
    clock = Clock()
    p = tmp_path / "work/out/ckpt.pt"
    old = save_ckpt(p, 600)
    a = Adopter(tmp_path / "work", "out/ckpt.pt", tmp_path / "store", clock=clock, claim_found=True)
    assert a.observe() is None and a.restore() is None and not a.has_any()
    [found] = a.take_found()
    assert found.relpath == "out/ckpt.pt" and found.step == 600 and found.kept.read_bytes() == old
    assert p.read_bytes() == old  # left where it was: not ours to move
    clock.t += 10
    b = Adopter(tmp_path / "work", "out/ckpt.pt", tmp_path / "store", clock=clock, claim_found=True)
    assert b.observe(writer_stopped=True) is None and not b.take_found()  # a restarted daemon knows it too
    save_ckpt(p, 50)  # the run's own job writes it: now it is this run's
    assert b.observe().step == 50


def test_the_restore_chain_skips_failed_copies_and_with_none_left_a_torn_file_goes_aside(tmp_path):
    clock = Clock()
    a = make(tmp_path, clock)
    p = tmp_path / "work/out/ckpt.pt"
    for it in (100, 200, 300):
        save_ckpt(p, it)
        assert a.observe().step == it
    assert a.restore().step == 300
    a.mark_failed(3, "the job could not load it")
    assert a.newest().step == 200 and a.restore().step == 200 and step_of(p) == 200
    a.mark_failed(2, "x")
    a.mark_failed(1, "y")
    assert a.newest() is None and a.newest_any().mark == "failed"
    assert a.set_aside("out/ckpt.pt", "no copy loads").name == ".nightshift-bad-ckpt.pt" and not p.exists()
    p.write_bytes(save_ckpt(tmp_path / "x.pt", 400)[:500])  # torn, and no copy to put back
    assert a.restore() is None
    assert not p.exists() and (p.parent / ".nightshift-torn-ckpt.pt").exists()


def test_copies_past_the_last_normal_loss_are_suspect_and_not_restored_but_kept(tmp_path):
    clock = Clock()
    a = make(tmp_path, clock, keep=2)
    p = tmp_path / "work/out/ckpt.pt"
    for it in (100, 200, 300):
        save_ckpt(p, it)
        a.observe()
    marked = a.mark_suspect_after(249, "non-finite loss at step 260")
    assert [c.step for c in marked] == [300]
    save_ckpt(p, 400)  # written after the divergence: suspect too
    assert a.observe().mark == "suspect"
    assert a.newest().step == 200 and a.restore().step == 200
    assert [c.step for c in a._versions()] == [400, 300, 200]  # the last good copy is not pushed out


def test_the_chain_marks_the_copy_that_did_not_load_and_with_none_left_moves_the_file_aside(tmp_path):
    """daemon/restorechain.judge_exit on a real store: v2 put back and not loaded -> older (v1);
    v1 not loaded either -> a fresh start, the file moved aside; with --resume-from -> fail."""
    from daemon.core.restorechain import judge_exit
    from daemon.policy.scriptckpt import Resumed
    clock = Clock()
    a = make(tmp_path, clock)
    p = tmp_path / "work/out/ckpt.pt"
    for it in (100, 200):
        save_ckpt(p, it)
        a.observe()
    err = "Traceback (most recent call last):\n  File x\nRuntimeError: size mismatch for wte.weight"
    c = a.restore()
    d = judge_exit(a, Resumed(c.relpath, c.version, c.step), "code_error", None, err, fresh_allowed=True)
    assert d.action == "older" and "(step 200) does not load: RuntimeError: size mismatch" in d.reason
    c = a.restore()
    assert c.step == 100
    d = judge_exit(a, Resumed(c.relpath, c.version, c.step), "code_error", None, err, fresh_allowed=True)
    assert d.action == "fresh" and "1 older copy failed too" in d.reason
    assert not p.exists() and (p.parent / ".nightshift-bad-ckpt.pt").exists() and a.newest() is None
    b = make(tmp_path / "b", clock)
    save_ckpt(tmp_path / "b/work/out/ckpt.pt", 300)
    b.observe()
    c = b.restore()
    (tmp_path / "b/work/out/ckpt.pt").write_bytes(b"\0" * 100)  # what is in place is not a zip at all
    d = judge_exit(b, Resumed(c.relpath, c.version, c.step), "code_error", None, err, fresh_allowed=False)
    assert d.action == "fail" and "does not load: not a torch zip" in d.reason
    assert "every copy failed to load" in d.reason


def test_copies_of_the_next_attempt_are_not_suspect_and_a_suspect_copy_can_be_chosen_on_purpose(tmp_path):
    """Issue 25: the window closes when the next attempt starts from the last good copy; what
    that attempt writes (step 300 again, from good weights) was marked suspect forever by its
    step. `nightshift restore --force` (Adopter.choose) puts a suspect copy back on purpose."""
    clock = Clock()
    a = make(tmp_path, clock, keep=3)
    p = tmp_path / "work/out/ckpt.pt"
    for it in (100, 200, 300):
        save_ckpt(p, it)
        a.observe()
    a.mark_suspect_after(249, "non-finite loss at step 260")
    save_ckpt(p, 400)  # the diverged attempt's last save
    assert a.observe().mark == "suspect"
    assert a.restore().step == 200 and a.close_suspect()
    save_ckpt(p, 300, n=2100)  # the next attempt, from step 200's good weights
    again = a.observe()
    assert again.step == 300 and again.mark is None and a.newest().version == again.version
    v400 = next(c for c in a._versions() if c.step == 400)
    assert [c.version for c in a.choose(v400.version, "newer than the copy restored on purpose")] == [again.version]
    assert a.newest().step == 400 and a.restore().step == 400 and step_of(p) == 400
    marks = {c.version: c.mark for c in a._versions()}
    assert marks[again.version] == "set aside" and marks[v400.version] is None


def test_a_crash_after_the_resumed_script_saved_again_does_not_fail_the_copy(tmp_path):
    """No progress_pattern: attempt_step is None. The resumed job saved step 300 (adopted), then
    crashed: the copy it resumed from (step 200) loaded; it is not marked failed, nothing older
    is put back over the job's newer save."""
    from daemon.core.restorechain import judge_exit
    from daemon.policy.scriptckpt import Resumed
    clock = Clock()
    a = make(tmp_path, clock)
    p = tmp_path / "work/out/ckpt.pt"
    for it in (100, 200):
        save_ckpt(p, it)
        a.observe()
        clock.t += 10
    c = a.restore()
    clock.t += 10
    save_ckpt(p, 300)
    assert a.observe().step == 300
    err = "Traceback (most recent call last):\n  File x\nRuntimeError: CUDA error: an illegal memory access"
    d = judge_exit(a, Resumed(c.relpath, c.version, c.step), "code_error", None, err, fresh_allowed=True)
    assert d.action == "none" and all(v.mark is None for v in a._versions())
    assert a.restore().step == 300
