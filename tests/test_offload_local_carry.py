"""The local backend carries the user's job like Modal does: a workdir outside this project
(minus exclusions), a declared data dir synced by manifest (a second night copies only what
changed), the adopted checkpoint restored at its relative path before resume_command, progress
parsed from output, the result home at the same path; a cancel settles before it is reported."""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

from daemon.cloud.offload import JobSpec
from daemon.cloud.offload.carry import Carry, job_excludes
from daemon.cloud.offload.local import LocalBackend
from daemon.job.adopt import Adopter, step_of
from tests.helpers import JOBS

ARGS = ["--out_dir=out", "--eval_interval=20", "--data=data/corpus.bin"]


def project(tmp_path: Path) -> tuple[Path, Carry]:
    w = tmp_path / "elsewhere/myproj"
    (w / "data").mkdir(parents=True)
    shutil.copy(JOBS / "nanogpt_like.py", w / "train.py")
    (w / "data/corpus.bin").write_bytes(bytes(range(256)) * 64)
    (w / "data/extra.bin").write_bytes(b"x" * 100)
    (w / ".gitignore").write_text("*.log\n")
    (w / "debug.log").write_text("noise")
    store = tmp_path / "state/adopted/run1"
    c = Carry(w.resolve(), job_excludes(w, None, ["data"], None, "out/ckpt.pt"), ("data",), "out/ckpt.pt",
              "nanogpt", store, 2)
    return w, c


def first_night(w: Path, store: Path) -> None:
    import torch

    model = torch.nn.Sequential(torch.nn.Embedding(65, 32), torch.nn.Linear(32, 65))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    (w / "out").mkdir(exist_ok=True)
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "iter_num": 20,
                "best_val_loss": 3.0, "config": {}}, w / "out/ckpt.pt")
    assert Adopter(w, "out/ckpt.pt", store, settle_s=0.0).observe(writer_stopped=True).step == 20


def wait_settled(b: LocalBackend, call_id: str, timeout: float = 90.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        st = b.poll(call_id)
        if st.state != "running":
            return st
        time.sleep(0.2)
    raise AssertionError("the remote run did not settle")


def test_failover_from_a_workdir_outside_the_project_with_data_and_the_result_home(tmp_path):
    w, c = project(tmp_path)
    first_night(w, c.adopted_store)
    (w / "out/ckpt.pt").write_bytes((w / "out/ckpt.pt").read_bytes()[:500])  # torn by the last kill
    b = LocalBackend(tmp_path / "vols", carry=c)
    up = b.upload("run1", None, [w / "out/ckpt.pt"])
    assert b.last_sync == {"work": {"files": 2, "bytes": (w / "train.py").stat().st_size
                                    + (w / ".gitignore").stat().st_size},
                           "data/data": {"files": 2, "bytes": 16384 + 100}}
    assert up.bytes > 16384
    work = tmp_path / "vols/run1/work"
    assert sorted(p.relative_to(work).as_posix() for p in work.rglob("*") if p.is_file()) == [
        ".gitignore", "train.py"]  # no debug.log (gitignore), no data, no checkpoint
    py = ["python", "train.py", *ARGS, "--max_iters=60"]
    call = b.launch("run1", JobSpec(command=py, resume_command=[*py, "--init_from=resume"], total_steps=60))
    st = wait_settled(b, call)
    assert st.state == "succeeded", st.error
    log = (tmp_path / "vols/run1/job.log").read_text()
    assert "Resuming training from out" in log and "data: data/corpus.bin" in log
    assert (work / "data").is_symlink() and (work / "data").resolve() == (tmp_path / "vols/data/data").resolve()
    assert st.step == 60 and st.total_steps == 60 and st.loss is not None  # progress parsed from output
    got = b.pull("run1", call, tmp_path / "ckpt-home")
    assert got == w / "out/ckpt.pt" and step_of(got) == 60  # home, at the path the script reads
    # the next night: one data file changed, only it is copied again
    (w / "data/extra.bin").write_bytes(b"y" * 100)
    b.upload("run2", None, [])
    assert b.last_sync["data/data"] == {"files": 1, "bytes": 100}


def test_a_cancel_terms_the_unmodified_job_and_poll_says_cancelled_only_once_settled(tmp_path):
    w, c = project(tmp_path)
    first_night(w, c.adopted_store)
    b = LocalBackend(tmp_path / "vols", carry=c, python=sys.executable)
    b.upload("run1", None, [])
    py = ["python", "train.py", *ARGS, "--max_iters=100000", "--sleep=0.05", "--save_on_term=True"]
    call = b.launch("run1", JobSpec(command=py, resume_command=[*py, "--init_from=resume"]))
    prog = tmp_path / "vols/run1/run/progress.jsonl"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (prog.exists() and '"step": 30' in prog.read_text()):
        time.sleep(0.1)
    b.cancel(call, grace_s=0.0)  # returns at once: the runner is still stopping the job
    assert b.poll(call).state == "running"
    st = wait_settled(b, call)
    assert st.state == "cancelled"
    status = json.loads((tmp_path / "vols/run1/status.json").read_text())
    saved = status["adopted"]["step"]
    assert saved >= 30 and saved == step_of(tmp_path / "vols/run1/work/out/ckpt.pt")  # the TERM save
    assert step_of(b.pull("run1", call, tmp_path / "home")) == saved


def test_carry_from_a_validated_config(tmp_path):
    from daemon.cloud.offload.carry import from_config
    from daemon.state import config as config_mod

    w = tmp_path / "proj"
    w.mkdir()
    (w / ".gitignore").write_text("*.log\n# c\n")
    cfg = config_mod.validate({"job": {"command": ["python", "train.py"], "workdir": str(w),
                                       "checkpoint_glob": "out/ckpt.pt", "progress_pattern": "nanogpt"},
                               "offload": {"data": ["data/owt"]}, "checkpoint": {"keep": 4}})
    config_mod.resolve_paths(cfg, tmp_path)
    c = from_config(cfg, tmp_path / "state/adopted/r1")
    assert c.workdir == w.resolve() and c.data == ("data/owt",) and c.keep == 4
    assert {"*.log", "/data/owt", "/out/ckpt.pt", "/checkpoints", ".git"} <= set(c.exclude)
    cfg["offload"]["exclude"] = ["wandb"]
    assert "*.log" not in from_config(cfg).exclude and "wandb" in from_config(cfg).exclude
