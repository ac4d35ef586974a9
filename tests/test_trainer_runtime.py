"""trainer.runtime in-process with real files: resume falls back past a corrupt checkpoint with a
reason, interval checkpoints and progress records, skip ranges, env errors that say what to fix."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
import torch

from trainer.runtime import Runtime, parse_skip


@pytest.fixture(autouse=True)
def _isolated(monkeypatch, tmp_path):
    """Runtime installs a SIGUSR1 handler and reads NIGHTSHIFT_*: keep both local to a test."""
    old = signal.getsignal(signal.SIGUSR1)
    for k in ("NIGHTSHIFT_RESUME", "NIGHTSHIFT_TOTAL_STEPS", "NIGHTSHIFT_SKIP_STEPS",
              "NIGHTSHIFT_CHECKPOINT_INTERVAL"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("NIGHTSHIFT_RUN_DIR", str(tmp_path / "run"))
    monkeypatch.setenv("NIGHTSHIFT_CHECKPOINT_DIR", str(tmp_path / "ckpt"))
    yield
    signal.signal(signal.SIGUSR1, old)


def make(**kw) -> Runtime:
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    return Runtime(model, opt, total_steps=kw.pop("total_steps", 10), **kw)


def train(rt: Runtime, start: int, end: int) -> None:
    for step in range(start, end):
        if rt.skip(step):
            rt.step_end(step + 1)
            continue
        loss = rt.model(torch.ones(3, 4)).pow(2).mean()
        rt.optimizer.zero_grad()
        loss.backward()
        rt.optimizer.step()
        rt.step_end(step + 1, loss=loss.item(), samples=3)


def records(tmp: Path, kind: str) -> list[dict]:
    lines = (tmp / "run" / "progress.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == kind]


def test_interval_checkpoints_progress_and_done_records(tmp_path):
    rt = make(checkpoint_interval=4)
    assert rt.resume() == 0
    train(rt, 0, 10)
    rt.finish(metrics={"val_loss": 1.5})
    assert sorted(r["step"] for r in records(tmp_path, "checkpoint")) == [4, 8, 10]
    assert records(tmp_path, "progress")[0]["step"] == 1  # the first step always reports
    done = records(tmp_path, "done")[0]
    assert done["step"] == 10 and Path(done["checkpoint"]).is_dir()
    start = records(tmp_path, "start")[0]
    assert start["protocol"] == 2 and start["resumed_from"] is None


def test_resume_skips_a_bit_flipped_newest_checkpoint_and_says_why(tmp_path, capsys):
    rt = make(checkpoint_interval=3)
    rt.resume()
    train(rt, 0, 6)
    rt.finish()
    newest = tmp_path / "ckpt" / "step_000000006" / "model.safetensors"
    data = bytearray(newest.read_bytes())
    data[-1] ^= 0xFF
    newest.write_bytes(bytes(data))

    rt2 = make()
    assert rt2.resume() == 3
    err = capsys.readouterr().err
    assert "step_000000006" in err and "checksum mismatch" in err
    assert records(tmp_path, "start")[-1]["resumed_from"].endswith("step_000000003")
    rt2.finish()


def test_an_unusable_nightshift_resume_falls_back_to_the_newest_valid(tmp_path, monkeypatch, capsys):
    rt = make(checkpoint_interval=5)
    rt.resume()
    train(rt, 0, 5)
    rt.finish()
    monkeypatch.setenv("NIGHTSHIFT_RESUME", str(tmp_path / "nowhere"))
    rt2 = make()
    assert rt2.resume() == 5
    assert "NIGHTSHIFT_RESUME" in capsys.readouterr().err
    rt2.finish()


def test_skipped_steps_still_count_and_train_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("NIGHTSHIFT_SKIP_STEPS", "2-4")
    rt = make()
    rt.resume()
    train(rt, 0, 2)
    before = rt.model.weight.detach().clone()
    train(rt, 2, 5)
    assert torch.equal(rt.model.weight, before) and rt.step == 5
    train(rt, 5, 6)
    assert not torch.equal(rt.model.weight, before)
    rt.finish()


def test_bad_environment_values_name_the_variable():
    assert parse_skip("120-170, 300-310,400") == [(120, 170), (300, 310), (400, 400)]
    with pytest.raises(ValueError, match="NIGHTSHIFT_SKIP_STEPS.*'x-3'"):
        parse_skip("x-3")
    with pytest.raises(ValueError, match="ends before it starts"):
        parse_skip("9-3")


def test_a_bad_checkpoint_interval_env_is_refused(monkeypatch):
    monkeypatch.setenv("NIGHTSHIFT_CHECKPOINT_INTERVAL", "auto")
    with pytest.raises(ValueError, match="NIGHTSHIFT_CHECKPOINT_INTERVAL='auto'"):
        make()
