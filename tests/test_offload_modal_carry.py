"""The Modal backend carries the user's job, checked against the real modal 1.6.4 SDK offline:
the workdir image layer with its exclusions (the files the SDK itself would upload), the data
volume mount; the remote body run in-process against tests/jobs/nanogpt_like.py (resume from the
adopted copy, progress parsed from output, a cancellation by InputCancellation); FunctionCall.get
outcomes classified by the SDK's own exception classes; pull never retries a missing file."""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
import time
import warnings
from pathlib import Path

import modal
import modal.exception as mx
import pytest

from daemon.cloud.offload import JobSpec, OffloadError
from daemon.cloud.offload.carry import Carry, job_excludes
from daemon.cloud.offload.cost import offload_estimate
from daemon.cloud.offload.modal_backend import (
    DATA_MOUNT,
    MOUNT,
    REMOTE_WORKDIR,
    ModalBackend,
    build_app,
    data_volume_name,
    launch_warnings,
)
from daemon.cloud.offload.remote import run_remote
from daemon.job.adopt import Adopter, step_of
from daemon.state import config as config_mod
from tests.helpers import JOBS

CFG = config_mod.defaults()["offload"] | {"backend": "modal", "timeout_s": 7200.0, "retries": 4}
SCRIPT = ["python", "train.py", "--out_dir=out", "--max_iters=60", "--eval_interval=20", "--data=data/corpus.bin"]


def user_workdir(tmp_path: Path) -> Path:
    """A user's project outside this repository, as it sits on disk after a night's work."""
    w = tmp_path / "myproj"
    (w / "configs").mkdir(parents=True)
    shutil.copy(JOBS / "nanogpt_like.py", w / "train.py")
    (w / "model.py").write_text("N_EMBD = 32\n")
    (w / "configs/small.yaml").write_text("n_layer: 2\n")
    (w / ".gitignore").write_text("*.log\nwandb/\n# comment\n")
    (w / "train.log").write_text("old log\n")
    (w / "wandb/run-1").mkdir(parents=True)
    (w / "wandb/run-1/events").write_text("x")
    (w / "data").mkdir()
    (w / "data/corpus.bin").write_bytes(os.urandom(4096))
    (w / "data/val.bin").write_bytes(os.urandom(1024))
    (w / "out").mkdir()
    (w / "out/ckpt.pt").write_bytes(b"PK\x03\x04not really")
    (w / ".git").mkdir()
    (w / ".git/HEAD").write_text("ref: refs/heads/main\n")
    (w / "__pycache__").mkdir()
    (w / "__pycache__/model.cpython-311.pyc").write_bytes(b"\x00")
    return w


def carry_for(w: Path, tmp_path: Path, exclude: list[str] | None = None) -> Carry:
    return Carry(w.resolve(), job_excludes(w, exclude, ["data"], None, "out/ckpt.pt"), ("data",), "out/ckpt.pt",
                 "nanogpt", tmp_path / "state/adopted/run1", 3)


def layer_files(fn) -> dict[str, str]:
    """What the SDK would upload for the workdir layer: remote path -> local relative path."""
    img = fn._spec_.image
    todo, seen = [img], set()
    while todo:
        o = todo.pop()
        if id(o) in seen:
            continue
        seen.add(id(o))
        load = o._load
        cells = dict(zip(load.__code__.co_freevars, load.__closure__ or (), strict=True))
        mf = cells.get("context_mount_function")
        mount = mf.cell_contents("2024.10") if mf is not None and mf.cell_contents is not None else None
        if mount is not None:
            dockerfile = cells["dockerfile_function"].cell_contents("2024.10").commands
            assert dockerfile == ["FROM base", "COPY . /"]  # a real layer, writable in the container
            out = {}
            for entry in mount._entries:
                for local, remote in entry.get_files_to_upload():
                    out[str(remote)] = Path(local).as_posix()
            return out
        todo.extend(o._deps() if o._deps else ())
    raise AssertionError("no workdir layer in the image")


def test_the_workdir_goes_as_an_image_layer_minus_gitignore_data_and_checkpoints(tmp_path):
    w = user_workdir(tmp_path)
    _, fn, vol, s, img, _ = build_app(CFG, "myproj-run1", carry_for(w, tmp_path))
    files = layer_files(fn)
    assert sorted(files) == [f"{REMOTE_WORKDIR}/.gitignore", f"{REMOTE_WORKDIR}/configs/small.yaml",
                             f"{REMOTE_WORKDIR}/model.py", f"{REMOTE_WORKDIR}/train.py"]
    assert files[f"{REMOTE_WORKDIR}/train.py"] == (w / "train.py").resolve().as_posix()
    assert fn._spec_.image._added_python_source_set == frozenset({"daemon", "trainer"})  # still shipped
    # the run's volume and the job's data volume, mounted where the body expects them
    assert sorted(fn._spec_.volumes) == [DATA_MOUNT, MOUNT]
    assert s.data_volume_name == data_volume_name(w.resolve()) and s.data == ("data",)
    assert repr(fn._spec_.volumes[MOUNT]) == repr(vol)


def test_offload_exclude_replaces_gitignore_but_data_and_checkpoints_stay_out(tmp_path):
    w = user_workdir(tmp_path)
    _, fn, *_ = build_app(CFG, "k", carry_for(w, tmp_path, exclude=["configs", "*.log"]))
    assert sorted(layer_files(fn)) == [f"{REMOTE_WORKDIR}/.gitignore", f"{REMOTE_WORKDIR}/model.py",
                                       f"{REMOTE_WORKDIR}/train.py", f"{REMOTE_WORKDIR}/wandb/run-1/events"]


def test_without_data_dirs_there_is_no_data_volume(tmp_path):
    w = user_workdir(tmp_path)
    c = Carry(w.resolve(), job_excludes(w, None), (), None, None)
    _, fn, *_ = build_app(CFG, "k", c)
    assert list(fn._spec_.volumes) == [MOUNT]


def _first_night(w: Path, store: Path) -> None:
    """The job ran at home to iter 20 (its ckpt.pt, as nanogpt_like.py writes it, adopted), then
    the GPU gave up. Written in-process: one torch start-up less per test."""
    import torch

    model = torch.nn.Sequential(torch.nn.Embedding(65, 32), torch.nn.Linear(32, 65))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    (w / "out").mkdir(exist_ok=True)
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "iter_num": 20,
                "best_val_loss": 3.0, "config": {}}, w / "out/ckpt.pt")
    a = Adopter(w, "out/ckpt.pt", store, settle_s=0.0)
    assert a.observe(writer_stopped=True).step == 20


def _container(tmp_path: Path, w: Path, c: Carry) -> tuple[Path, Path, dict]:
    """Stand-ins for what Modal provides: the image layer's files at a writable path, the run's
    volume seeded by upload (the newest adopted copy), the data volume."""
    job = tmp_path / "container/job"
    for rel in c.files():
        (job / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(w / rel, job / rel)
    vol = tmp_path / "container/vol"
    newest = sorted((c.adopted_store).iterdir())[-1]
    shutil.copytree(newest, vol / "adopted" / newest.name)
    data = tmp_path / "container/data"
    shutil.copytree(w / "data", data / "data")
    b = ModalBackend(CFG, carry=c)
    s = build_app(CFG, "run1", c)[3]
    spec = b.spec_for(JobSpec(command=SCRIPT, resume_command=[*SCRIPT, "--init_from=resume"], total_steps=60), s)
    assert spec["workdir"] == REMOTE_WORKDIR and spec["data_root"] == DATA_MOUNT
    return vol, job, spec | {"workdir": str(job), "data_root": str(data), "settle_s": 0.2}


def test_remote_body_resumes_the_users_script_from_its_adopted_checkpoint_in_its_own_workdir(tmp_path):
    w = user_workdir(tmp_path)
    (w / "out/ckpt.pt").unlink()
    c = carry_for(w, tmp_path)
    _first_night(w, c.adopted_store)
    vol, job, spec = _container(tmp_path, w, c)
    assert not (job / "out").exists() and not (job / "data").exists()  # excluded from the layer
    _, fn, *_ = build_app(CFG, "run1", c)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "executing locally without the mounted volume": intended
        res = fn.local(spec, str(vol), False)
    assert res["state"] == "succeeded" and res["returncode"] == 0
    log = (vol / "job.log").read_text()
    assert "Resuming training from out" in log  # resume_command, since a checkpoint was restored
    assert "data: data/corpus.bin" in log and (job / "data").is_symlink()  # the data volume, linked
    recs = [json.loads(x) for x in (vol / "run/progress.jsonl").read_text().splitlines()]
    prog = [r for r in recs if r["kind"] == "progress"]
    assert prog[0]["step"] == 20 and prog[-1]["step"] == 59 and prog[-1]["total_steps"] == 60  # parsed remotely
    assert recs[-1] == recs[-1] | {"kind": "eval", "step": 60}
    assert res["adopted"]["step"] == 60 and step_of(job / "out/ckpt.pt") == 60


@pytest.mark.slow
def test_a_cancellation_terms_the_job_which_checkpoints_then_the_volume_is_committed(tmp_path):
    """Modal's cancel = SIGUSR1 -> InputCancellation in the body (as the SDK's container entry
    point installs it). The job gets SIGTERM, saves, the save is adopted, then the commit runs,
    and the cancellation propagates."""
    w = user_workdir(tmp_path)
    (w / "out/ckpt.pt").unlink()
    c = carry_for(w, tmp_path)
    _first_night(w, c.adopted_store)
    vol, job, spec = _container(tmp_path, w, c)
    spec["command"] = [*SCRIPT, "--sleep=0.05", "--save_on_term=True"]
    spec["resume_command"] = [*spec["command"], "--init_from=resume"]
    commits: list[int | None] = []

    def commit() -> None:  # what is durable at each commit: the newest adopted step
        n = Adopter(job, "out/ckpt.pt", vol / "adopted").newest()
        commits.append(n.step if n else None)

    def cancel_input(signum, frame):  # modal/_container_entrypoint.py's handler
        raise mx.InputCancellation("Input was cancelled by user")

    def cancel_soon() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if "iter 31:" in (vol / "job.log").read_text() if (vol / "job.log").exists() else False:
                os.kill(os.getpid(), signal.SIGUSR1)
                return
            time.sleep(0.05)

    old = signal.signal(signal.SIGUSR1, cancel_input)
    try:
        threading.Thread(target=cancel_soon, daemon=True).start()
        with pytest.raises(mx.InputCancellation):
            run_remote(spec, str(vol), commit=commit, poll_s=0.1, term_grace_s=20.0)
    finally:
        signal.signal(signal.SIGUSR1, old)
    log = (vol / "job.log").read_text()
    assert log.rstrip().endswith("saving checkpoint to out")  # the job's own save on SIGTERM
    saved = step_of(job / "out/ckpt.pt")
    assert saved is not None and saved > 31
    assert commits and commits[-1] == saved  # the last commit made the TERM-time save durable
    assert Adopter(job, "out/ckpt.pt", vol / "adopted").newest().step == saved


@pytest.mark.slow
def test_a_sigterm_without_a_cancel_is_a_preemption_the_job_saves_and_the_daemon_relaunches(tmp_path):
    """The machine going away (Modal's preemption, a reboot of the box) TERMs the body: the job
    is TERMed once, saves, the save is adopted and committed, and the result says "preempted"."""
    w = user_workdir(tmp_path)
    (w / "out/ckpt.pt").unlink()
    c = carry_for(w, tmp_path)
    _first_night(w, c.adopted_store)
    vol, job, spec = _container(tmp_path, w, c)
    spec["command"] = [*SCRIPT, "--sleep=0.05", "--save_on_term=True"]
    spec["resume_command"] = [*spec["command"], "--init_from=resume"]
    commits: list[int | None] = []

    def commit() -> None:
        n = Adopter(job, "out/ckpt.pt", vol / "adopted").newest()
        commits.append(n.step if n else None)

    def term_soon() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if (vol / "job.log").exists() and "iter 25:" in (vol / "job.log").read_text():
                os.kill(os.getpid(), signal.SIGTERM)
                return
            time.sleep(0.05)

    threading.Thread(target=term_soon, daemon=True).start()
    res = run_remote(spec, str(vol), commit=commit, poll_s=0.1)
    assert res["state"] == "preempted" and res["returncode"] == 143
    tail = (vol / "job.log").read_text().rsplit("iter ", 1)[1]
    assert tail.count("saving checkpoint to out") == 1  # TERMed once: one save on the way out
    assert res["adopted"]["step"] > 25 and commits[-1] == res["adopted"]["step"]
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL or callable(signal.getsignal(signal.SIGTERM))


class FakeCall:
    """The boundary: modal.FunctionCall.from_id's object, with get() behaving as the SDK's does."""

    def __init__(self, outcomes: list):
        self.outcomes = outcomes
        self.cancelled = 0

    def get(self, timeout=None):
        o = self.outcomes.pop(0) if len(self.outcomes) > 1 else self.outcomes[0]
        if isinstance(o, BaseException):
            raise o
        return o

    def cancel(self, terminate_containers=False):
        self.cancelled += 1


@pytest.fixture
def calls(monkeypatch):
    made: dict[str, FakeCall] = {}
    monkeypatch.setattr(modal.FunctionCall, "from_id", staticmethod(lambda cid, client=None: made[cid]))
    return made


def test_a_job_oserror_is_the_jobs_failure_and_the_call_is_cancelled(calls):
    calls["fc-1"] = FakeCall([FileNotFoundError(2, "No such file or directory", "pythn")])
    st = ModalBackend(CFG).poll("fc-1")
    assert st.state == "failed" and "FileNotFoundError" in st.error and "pythn" in st.error
    assert calls["fc-1"].cancelled == 1  # no more billing for a job that cannot run


@pytest.mark.parametrize("exc", [mx.ServiceError("unavailable"), mx.InternalError("internal"),
                                 mx.ConnectionError("reset"), mx.TimeoutError("deadline"),
                                 mx.ResourceExhaustedError("rate limited")])
def test_modal_transport_errors_are_retryable_never_a_verdict_on_the_run(calls, exc):
    """How long to keep trying is the daemon's call (policy/remote.py: 10 min), not a count
    here: 50 rate-limited polls in a row still say nothing about the job, and never cancel it."""
    calls["fc-2"] = FakeCall([exc])
    b = ModalBackend(CFG)
    for _ in range(50):
        with pytest.raises(OffloadError) as e:
            b.poll("fc-2")
        assert e.value.retryable and type(exc).__name__ in str(e.value)
    assert calls["fc-2"].cancelled == 0


def test_polls_go_on_after_errors(calls):
    calls["fc-3"] = FakeCall([mx.ServiceError("x"), mx.ServiceError("x"), TimeoutError(), mx.ServiceError("x"),
                              mx.ServiceError("x"), TimeoutError()])
    b = ModalBackend(CFG)
    states = []
    for _ in range(6):
        try:
            states.append(b.poll("fc-3").state)
        except OffloadError:
            states.append("retry")
    assert states == ["retry", "retry", "running", "retry", "retry", "running"]


def test_outcomes_of_a_finished_call(calls):
    b = ModalBackend(CFG)
    calls["ok"] = FakeCall([{"state": "succeeded", "step": 60, "returncode": 0}])
    calls["slow"] = FakeCall([mx.FunctionTimeoutError("24h")])
    calls["infra"] = FakeCall([mx.InternalFailure("worker lost")])
    calls["bug"] = FakeCall([ValueError("shape mismatch")])
    assert (b.poll("ok").state, b.poll("ok").step) == ("succeeded", 60)
    assert b.poll("slow").state == "failed" and calls["slow"].cancelled == 0
    assert b.poll("infra").state == "preempted"
    assert b.poll("bug").state == "failed" and calls["bug"].cancelled == 1


def test_cancelled_is_reported_only_once_the_call_has_settled(calls):
    """After cancel() the body is still TERMing the job and committing: poll says running until
    get() gives the terminated outcome (RemoteError), then cancelled — and the daemon pulls."""
    calls["fc-4"] = FakeCall([TimeoutError(), TimeoutError(), mx.RemoteError("")])
    b = ModalBackend(CFG)
    b.cancel("fc-4")
    assert calls["fc-4"].cancelled == 1
    assert [b.poll("fc-4").state for _ in range(3)] == ["running", "running", "cancelled"]


def test_launch_turns_an_sdk_invalid_error_from_building_the_app_into_an_offload_error(monkeypatch, tmp_path):
    monkeypatch.setenv("MODAL_TOKEN_ID", "ak-x")
    monkeypatch.setenv("MODAL_TOKEN_SECRET", "as-x")
    b = ModalBackend(CFG | {"gpu": "A100-40GB:banana"})
    with pytest.raises(OffloadError, match="InvalidError.*banana") as e:
        b.launch("k", JobSpec(command=["python", "train.py"]))
    assert not e.value.retryable


def test_pull_fails_clearly_when_a_listed_file_is_missing_instead_of_retrying(monkeypatch):
    class Entry:
        def __init__(self, path):
            self.path = path

    class Vol:  # the SDK's Volume: read_file of a missing path raises the builtin FileNotFoundError
        def listdir(self, path):
            return {"/ckpt": [Entry("ckpt/step_000000100")],
                    "/ckpt/step_000000100": [Entry("ckpt/step_000000100/model.safetensors")]}[path]

        def read_file(self, path):
            raise FileNotFoundError(f"No such file: {path}")

    monkeypatch.setattr(modal.Volume, "from_name", staticmethod(lambda name, **kw: Vol()))
    with pytest.raises(OffloadError, match="no valid checkpoint") as e:
        ModalBackend(CFG).pull("k", "fc", Path("/tmp/nowhere-pull"))
    assert not e.value.retryable and not list(Path("/tmp/nowhere-pull").glob(".tmp-*"))
    shutil.rmtree("/tmp/nowhere-pull", ignore_errors=True)


class DirVolume:
    """The boundary: modal.Volume's client calls used by upload, backed by a directory."""

    def __init__(self, root: Path):
        self.root = root
        self.puts: list[str] = []

    def read_file(self, path):
        p = self.root / path.lstrip("/")
        if not p.is_file():
            raise FileNotFoundError(path)  # what the SDK raises for a missing path
        yield p.read_bytes()

    def listdir(self, path):
        d = self.root / path.lstrip("/")
        if not d.is_dir():
            raise FileNotFoundError(path)
        return [type("FileEntry", (), {"path": (d / n).relative_to(self.root).as_posix()})()
                for n in sorted(os.listdir(d))]

    def remove_file(self, path, recursive=False):
        (self.root / path.lstrip("/")).unlink()

    def batch_upload(self, force=False):
        vol = self

        class Batch:
            def __enter__(self):
                return self

            def __exit__(self, *exc):
                return False

            def put_file(self, local, remote):
                dest = vol.root / remote.lstrip("/")
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(local, dest)
                vol.puts.append(remote)

            def put_directory(self, local, remote):
                for f in sorted(Path(local).rglob("*")):
                    if f.is_file():
                        self.put_file(f, f"{remote}/{f.relative_to(local).as_posix()}")
        return Batch()


def test_upload_sends_data_once_by_manifest_and_the_adopted_copy_and_glob_files_at_their_paths(
        tmp_path, monkeypatch):
    monkeypatch.setenv("MODAL_TOKEN_ID", "ak-x")
    monkeypatch.setenv("MODAL_TOKEN_SECRET", "as-x")
    vols: dict[str, DirVolume] = {}
    monkeypatch.setattr(modal.Volume, "from_name", staticmethod(
        lambda name, **kw: vols.setdefault(name, DirVolume(tmp_path / "modal" / name))))
    w = user_workdir(tmp_path)
    (w / "out/ckpt.pt").unlink()
    c = carry_for(w, tmp_path)
    _first_night(w, c.adopted_store)
    b = ModalBackend(CFG, carry=c)
    b.upload("run1", None, [w / "out/ckpt.pt"])
    run, data = vols["nightshift-run1"], vols[data_volume_name(w.resolve())]
    assert sorted(run.puts) == ["/adopted/v_000001/meta.json", "/adopted/v_000001/out/ckpt.pt",
                                "/files/out/ckpt.pt"]
    assert sorted(data.puts) == ["/.nightshift/data-data.json", "/data/corpus.bin", "/data/val.bin"]
    assert b.last_sync["data/data"]["files"] == 2
    data.puts.clear()
    (w / "data/val.bin").write_bytes(b"changed")
    b.upload("run2", None, [])  # the next night: only what changed goes up
    assert sorted(data.puts) == ["/.nightshift/data-data.json", "/data/val.bin"]
    assert (data.root / "data/val.bin").read_bytes() == b"changed"


def test_pull_brings_the_newest_valid_adopted_copy_home_skipping_a_corrupt_newer_one(tmp_path, monkeypatch):
    vols: dict[str, DirVolume] = {}
    monkeypatch.setattr(modal.Volume, "from_name", staticmethod(
        lambda name, **kw: vols.setdefault(name, DirVolume(tmp_path / "modal" / name))))
    w = user_workdir(tmp_path)
    (w / "out/ckpt.pt").unlink()
    c = carry_for(w, tmp_path)
    remote_store = tmp_path / "modal/nightshift-run1/adopted"
    _first_night(w, remote_store)  # v_000001, step 20, as the remote body left it
    shutil.copytree(remote_store / "v_000001", remote_store / "v_000002")
    bad = remote_store / "v_000002/out/ckpt.pt"
    raw = bytearray(bad.read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # corrupted on the volume: same size, wrong bytes
    bad.write_bytes(bytes(raw))
    (w / "out/ckpt.pt").unlink()
    got = ModalBackend(CFG, carry=c).pull("run1", "fc", tmp_path / "ckpt-home")
    assert got == w.resolve() / "out/ckpt.pt" and step_of(got) == 20


def test_a_cpu_device_flag_going_to_a_paid_gpu_is_warned_about():
    assert launch_warnings(JobSpec(command=["python", "train.py", "--device=cpu"]), "A100-40GB")
    assert launch_warnings(JobSpec(command=["python", "-m", "trainer.reference", "--device", "cpu"]), "A100-40GB")
    assert not launch_warnings(JobSpec(command=["python", "train.py", "--device=cuda"]), "A100-40GB")


def test_the_cost_estimate_uses_the_measured_local_rate_and_the_speedup_or_says_it_has_none():
    prices, speed = {"A100-40GB": 2.10}, {"A100-40GB": 12.0}
    e = offload_estimate(41_200, "A100-40GB", prices, speed, local_steps_per_s=0.56)
    assert e.steps_per_s == pytest.approx(6.72) and e.seconds == pytest.approx(120 + 41_200 / 6.72)
    assert e.usd == pytest.approx(e.seconds * 2.10 / 3600) and "0.56 steps/s x 12" in e.basis
    assert offload_estimate(100, "A100-40GB", prices, speed, 0.5, remote_steps_per_s=6.9).steps_per_s == 6.9
    none = offload_estimate(100, "H100", prices, speed, local_steps_per_s=0.5)
    assert none.seconds is None and none.usd is None and "no speed-up known for H100" in none.basis
    assert "no measured local rate" in offload_estimate(100, "A100-40GB", prices, speed).basis
