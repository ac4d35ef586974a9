"""Issue 31, item 6: `--resume-from PATH` with a typo, a corrupt or a pickled PATH trained from
step 0 while the daemon said "resuming from PATH". Now PATH is verified before anything starts,
and a checkpoint the job then skips is a problem and an event."""

from __future__ import annotations

import asyncio
import json
import pickle

import pytest

from daemon import cli
from daemon.job.resume import BadResumePath, check_resume_path, skipped_resume
from tests.harness import Behaviour, Harness, config, write_checkpoint
from tests.helpers import write_config


@pytest.fixture
def ckpts(tmp_path):
    base = tmp_path / "checkpoints" / "run-1"
    for step in (100, 200):
        write_checkpoint(base / f"step_{step:09d}", step)
    return base


def test_a_good_checkpoint_is_accepted_as_its_real_path(ckpts):
    assert check_resume_path(str(ckpts / "step_000000200")) == (ckpts / "step_000000200").resolve()


def test_a_typo_names_what_is_there(ckpts):
    with pytest.raises(BadResumePath, match="no such file or directory") as e:
        check_resume_path(str(ckpts / "step_00000200"))
    assert "step_000000200" in str(e.value)  # the neighbours, to spot the typo


def test_a_corrupt_checkpoint_is_refused_before_starting(ckpts):
    w = ckpts / "step_000000200" / "weights.bin"
    data = bytearray(w.read_bytes())
    data[3] ^= 0xFF  # a flipped byte: the size is right, the checksum is not
    w.write_bytes(bytes(data))
    with pytest.raises(BadResumePath, match="does not verify"):
        check_resume_path(str(ckpts / "step_000000200"))


def test_a_pickled_checkpoint_is_refused_and_never_unpickled(ckpts, tmp_path):
    d = ckpts / "step_000000200"
    meta = json.loads((d / "meta.json").read_text())
    meta["scheduler"] = {"fn": {"__pickle__": "gASVAAAAAAAAAAB9lC4="}}  # format 1's tag
    (d / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(BadResumePath, match="refused: .*pickle"):
        check_resume_path(str(d))
    pt = tmp_path / "ckpt.pt"  # nanoGPT's torch.save file: a pickle
    pt.write_bytes(pickle.dumps({"model": [1, 2, 3]}))
    with pytest.raises(BadResumePath, match="a pickle .*never loaded"):
        check_resume_path(str(pt))


def test_a_directory_of_checkpoints_points_at_its_newest(ckpts):
    with pytest.raises(BadResumePath, match="step_000000200"):
        check_resume_path(str(ckpts))


def test_run_with_a_bad_path_exits_before_starting_anything(tmp_path, capsys):
    cfg = write_config(tmp_path, {"job": {"command": ["sleep", "60"]}})
    assert cli.main(["run", "-c", str(cfg), "--resume-from", str(tmp_path / "nope")]) == 1
    err = capsys.readouterr().err
    assert "--resume-from" in err and "no such file" in err and "Traceback" not in err
    assert not (tmp_path / "state").exists()  # no lock, no store, no run, no job


def test_skipped_resume_rule():
    assert skipped_resume("", {"protocol": 2, "resumed_from": None}) is None
    assert skipped_resume("/c/step_1", {"protocol": 2, "resumed_from": "/c/step_1"}) is None
    assert skipped_resume("/c/step_1", {"resumed_from": None}) is None  # a script: not said
    fresh = skipped_resume("/c/step_1", {"protocol": 2, "resumed_from": None, "step": 0})
    assert fresh and "/c/step_1" in fresh and "fresh at step 0" in fresh
    older = skipped_resume("/c/step_2", {"protocol": 2, "resumed_from": "/c/step_1", "step": 1})
    assert older and "/c/step_1" in older and "instead" in older


def test_a_job_that_skips_the_given_checkpoint_is_a_problem_and_an_event(tmp_path, ckpts):
    start = {"kind": "start", "step": 0, "resumed_from": None, "protocol": 2}

    async def go():
        cfg = config(tmp_path, job={"command": ["skipper"]})
        h = Harness(tmp_path, cfg, {"skipper": Behaviour(script=[(0.2, "record", start),
                                                                 (600.0, "exit", 0)])})
        sup = await h.open(resume_from=str(ckpts / "step_000000200"))
        await h.run(3)
        assert "resume" in sup.problems and "fresh at step 0" in sup.problems["resume"]
        assert any("step_000000200" in m for m in h.events("resume_skipped"))
        assert "fresh at step 0" in json.dumps(sup.face.snapshot.get("problems"))
    asyncio.run(go())


def test_a_job_that_resumes_the_given_checkpoint_raises_nothing(tmp_path, ckpts):
    async def go():
        cfg = config(tmp_path, job={"command": ["trainer"]})
        h = Harness(tmp_path, cfg, {"trainer": Behaviour(trainer=True, steps=300)})
        sup = await h.open(resume_from=str(ckpts / "step_000000200"))
        await h.run(3)
        assert "resume" not in sup.problems and not h.events("resume_skipped")
        assert any("from" in m and "step_000000200" in m for m in h.events("resumed"))
    asyncio.run(go())


def old_ckpt_pt(path, iter_num: int) -> None:
    """nanoGPT's ckpt.pt as torch.save writes it: a zip whose data.pkl holds iter_num."""
    import zipfile
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("ckpt/data.pkl", pickle.dumps({"iter_num": iter_num, "model": [1, 2]}))


def test_resume_from_a_scripts_own_checkpoint_is_accepted_and_the_run_owns_it(tmp_path):
    """Issue 25: the `found` event says "to continue from it on purpose: nightshift run --new
    --resume-from out/ckpt.pt", and --resume-from refused every file ("a pickle ... not a
    checkpoint directory"). A checkpoint_glob match is now verified as what it claims, and the
    run adopts it as its own (an HF checkpoint-N dir is not moved aside as an older run's)."""
    from daemon.core import parts as build
    from daemon.job.resume import check_script_resume
    work = tmp_path / "work"
    pt = work / "out" / "ckpt.pt"
    old_ckpt_pt(pt, 600)
    assert check_script_resume(str(pt), str(work), "out/ckpt.pt") == pt.resolve()
    assert check_script_resume("out/ckpt.pt", str(work), "out/ckpt.pt") == pt.resolve()  # as the event says it
    assert check_script_resume(str(tmp_path / "ckpts"), str(work), "out/ckpt.pt") is None  # a trainer's
    (work / "out" / "zeros.pt").write_bytes(b"\0" * 500)
    with pytest.raises(BadResumePath, match="does not verify: zeros.pt: not a torch zip"):
        check_script_resume(str(work / "out" / "zeros.pt"), str(work), "out/*.pt")

    async def go():
        cfg = config(tmp_path, job={"command": ["train"], "resume_command": ["train", "--init_from=resume"],
                                    "workdir": str(work), "checkpoint_glob": "out/ckpt.pt"})
        h = Harness(tmp_path, cfg, {"train": Behaviour(script=[(1.0, "line", "iter 600: loss 1.0")])},
                    make_adopter=lambda run_id: build.adopter(cfg, run_id, h.clock))
        sup = await h.open(resume_from=str(pt.resolve()))
        await h.run(3)
        assert h.spawned[0] == ["train", "--init_from=resume"]
        assert h.events("found") == []  # not "an older run's": chosen on purpose
        assert sup.current.adopter is not None and sup.current.adopter.newest().step == 600
    asyncio.run(go())
