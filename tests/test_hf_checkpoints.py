"""Issue 25: Hugging Face Trainer's `checkpoint-N` directories. HF resumes by itself
(`resume_from_checkpoint=True`: `get_last_checkpoint(output_dir)`, the highest N), so copying an
older run's checkpoint aside was not enough: left in place, it was the one resumed. Starting
from an output dir as users have it: an earlier run's checkpoint-N dirs, a half-written one, one
with a zeroed file. Real files (safetensors header, zip, JSON); no torch needed."""

from __future__ import annotations

import json
import os
import re
import zipfile
from pathlib import Path

from daemon.core.restorechain import found_message, restore_for_start
from daemon.job.adopt import Adopter

# transformers.trainer_utils.get_last_checkpoint, verbatim in behaviour (transformers is not a
# dependency): the checkpoint-N directory with the highest N, whatever is inside it
_RE = re.compile(r"^checkpoint\-(\d+)$")


def get_last_checkpoint(folder: Path) -> str | None:
    content = os.listdir(folder)
    ckpts = [p for p in content if _RE.search(p) is not None and os.path.isdir(os.path.join(folder, p))]
    if not ckpts:
        return None
    return max(ckpts, key=lambda x: int(_RE.search(x).groups()[0]))  # type: ignore[union-attr]


class Clock:
    t = 1_000_000.0

    def __call__(self) -> float:
        return self.t


def hf_save(d: Path, step: int, *, finished: bool = True, zeros: bool = False) -> None:
    """What Trainer._save_checkpoint leaves: weights, optimizer (torch.save: a zip), and
    trainer_state.json last."""
    d.mkdir(parents=True)
    header = json.dumps({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}).encode()
    st = len(header).to_bytes(8, "little") + header + bytes(range(16))
    (d / "model.safetensors").write_bytes(b"\0" * len(st) if zeros else st)
    with zipfile.ZipFile(d / "optimizer.pt", "w") as z:
        z.writestr("archive/data.pkl", f"step {step}".encode())
    if finished:
        (d / "trainer_state.json").write_text(json.dumps({"global_step": step}))


def test_an_output_dir_as_users_have_it_leaves_hf_only_this_runs_good_checkpoint(tmp_path):
    out = tmp_path / "work" / "out"
    hf_save(out / "checkpoint-500", 500)  # an earlier run's, complete
    hf_save(out / "checkpoint-1000", 1000)
    hf_save(out / "checkpoint-1500", 1500, finished=False)  # its last save, cut by a power-off
    hf_save(out / "checkpoint-1200", 1200, zeros=True)  # a file zeroed by the power-off
    clock = Clock()
    a = Adopter(tmp_path / "work", "out/checkpoint-*", tmp_path / "store", clock=clock, claim_found=True)
    restored, found = restore_for_start(a)  # before the first start
    assert restored is None
    # before: all four stayed in out/ (copied aside): HF resumed the half-written checkpoint-1500
    assert get_last_checkpoint(out) is None, sorted(os.listdir(out))
    assert sorted(f.relpath for f in found) == [f"out/checkpoint-{n}" for n in (1000, 1200, 1500, 500)]
    assert all(f.moved for f in found) and (out / ".nightshift-before-checkpoint-1000" / "trainer_state.json").exists()
    msg = found_message(next(f for f in found if f.relpath == "out/checkpoint-1000"), 1)
    assert "moved aside to out/.nightshift-before-checkpoint-1000" in msg and "(step 1000)" in msg
    assert "`mv out/.nightshift-before-checkpoint-1000 out/checkpoint-1000`" in msg
    # this run: two good saves, a divergence after step 250, then a save from diverged weights,
    # and one cut mid-write by a kill
    hf_save(out / "checkpoint-200", 200)
    a.observe(200)
    hf_save(out / "checkpoint-250", 250)
    a.observe(250)
    hf_save(out / "checkpoint-300", 300)
    a.observe(300)
    a.mark_suspect_after(260, "written after the last normal loss (step 260) before the NaN at step 270")
    hf_save(out / "checkpoint-350", 350, finished=False)
    restored, _ = restore_for_start(a)
    assert restored is not None and restored.relpath == "out/checkpoint-250"
    # before: the suspect checkpoint-300 stayed in out/ and HF resumed it
    assert get_last_checkpoint(out) == "checkpoint-250", sorted(os.listdir(out))
    assert (out / ".nightshift-suspect-checkpoint-300" / "trainer_state.json").exists()
    assert (out / ".nightshift-torn-checkpoint-350").is_dir()
    assert sorted(p for p in os.listdir(out) if _RE.match(p)) == ["checkpoint-200", "checkpoint-250"]


def test_a_dir_chosen_with_resume_from_is_this_runs_own(tmp_path):
    """`nightshift run --new --resume-from out/checkpoint-1000`: the run was started from it on
    purpose; it must not be moved aside as an older run's."""
    out = tmp_path / "work" / "out"
    hf_save(out / "checkpoint-1000", 1000)
    hf_save(out / "checkpoint-500", 500)
    a = Adopter(tmp_path / "work", "out/checkpoint-*", tmp_path / "store", clock=Clock(), claim_found=True)
    a.own(out / "checkpoint-1000")
    restored, found = restore_for_start(a)
    assert [f.relpath for f in found] == ["out/checkpoint-500"]
    assert restored is not None and restored.step == 1000 and get_last_checkpoint(out) == "checkpoint-1000"
    b = Adopter(tmp_path / "work", "out/checkpoint-*", tmp_path / "store", clock=Clock(), claim_found=True)
    assert b.newest().step == 1000  # a restarted daemon reads the same record


def test_nightshift_checkpoints_shows_what_was_moved_aside_and_why(tmp_path):
    from daemon.commands import ckptcmd
    out = tmp_path / "work" / "out"
    hf_save(out / "checkpoint-1000", 1000)
    a = Adopter(tmp_path / "work", "out/checkpoint-*", tmp_path / "store", clock=Clock(), claim_found=True)
    restore_for_start(a)
    hf_save(out / "checkpoint-200", 200)
    a.observe(200)
    hf_save(out / "checkpoint-300", 300)
    a.observe(300)
    a.mark_suspect_after(250, "written after the last normal loss (step 250) before the NaN at step 260")
    restore_for_start(a)
    got = {(e.kind, e.step, e.state) for e in ckptcmd.adopted_entries(a)}
    assert ("before", 1000, "found before the run") in got and ("aside", 300, "suspect") in got
    assert ("adopted", 300, "suspect") in got and ("adopted", 200, "good") in got
