"""Adopted checkpoints for unmodified scripts: real torch.save zip files (the tests may import
torch; daemon/adopt.py does not), a real kill mid-write, a real nanoGPT-habit script killed and
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

from daemon.adopt import Adopter, step_of, verify_file
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


def test_a_checkpoint_is_adopted_only_once_it_has_settled_and_its_zip_crcs_check_out(tmp_path):
    clock = Clock()
    a = make(tmp_path, clock)
    data = save_ckpt(tmp_path / "work/out/ckpt.pt", 250)
    assert a.observe(step=260) is None and not a.has_any()  # first sight: not settled yet
    clock.t += 1.0
    assert a.observe(step=270) is None  # stable for 1 s < settle_s
    clock.t += 1.5
    c = a.observe(step=280)
    assert c is not None and c.step == 250  # read from the checkpoint's iter_num, not the output
    assert c.relpath == "out/ckpt.pt" and c.verified == "zip-crc" and c.bytes == len(data)
    assert c.path == tmp_path / "state/adopted/run1/v_000001/out/ckpt.pt" and c.path.read_bytes() == data
    meta = json.loads((tmp_path / "state/adopted/run1/v_000001/meta.json").read_text())
    assert meta["step"] == 250 and meta["sha256"] == c.sha256 and meta["t"] == 1002.5
    assert a.has_any() and a.newest() == c
    clock.t += 10
    assert a.observe(step=300) is None  # unchanged: not adopted twice
    assert c.to_status(clock.t)["age_s"] == 10.0
    from daemon.progress import validate_record
    from daemon.status import JobFacts
    facts = JobFacts()
    facts.observe(validate_record(c.as_record()))  # status sees it as the newest checkpoint
    assert facts.checkpoint["step"] == 250 and facts.checkpoint["t"] == 1002.5


def test_a_file_rewritten_between_observations_restarts_the_settle_wait(tmp_path):
    clock = Clock()
    a = make(tmp_path, clock)
    save_ckpt(tmp_path / "work/out/ckpt.pt", 250)
    a.observe()
    clock.t += 1.9
    save_ckpt(tmp_path / "work/out/ckpt.pt", 500)  # rewritten: the wait starts over
    clock.t += 0.2
    assert a.observe() is None
    clock.t += 2.0
    assert a.observe().step == 500


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
    a.observe()
    clock.t += 3
    assert a.observe().step == 750


def test_keep_n_copies_newest_first(tmp_path):
    clock = Clock()
    a = make(tmp_path, clock, keep=3)
    for it in (100, 200, 300, 400, 500):
        save_ckpt(tmp_path / "work/out/ckpt.pt", it)
        a.observe()
        clock.t += 3
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
    a.observe()
    clock.t += 3
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


def test_a_file_that_cannot_be_checked_is_adopted_on_settling_alone(tmp_path):
    clock = Clock()
    a = Adopter(tmp_path / "work", "ckpt/*.bin", tmp_path / "store", clock=clock, settle_s=2.0)
    (tmp_path / "work/ckpt").mkdir(parents=True)
    (tmp_path / "work/ckpt/model.bin").write_bytes(b"\x00" * 100)
    a.observe(step=40)
    clock.t += 3
    c = a.observe(step=55)
    assert c.verified == "settled" and c.step == 40  # the step when the change was first seen


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
    a.observe()
    clock.t += 3
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
    code = "import sys, daemon.adopt, daemon.outputprogress; print('torch' in sys.modules)"
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
