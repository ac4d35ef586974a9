"""Checkpoint storage under faults: corruption is skipped with a reason; a full disk keeps the
previous checkpoint usable and the training state untouched; state round-trips exactly."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file

from tests.helpers import ROOT
from trainer.checkpoint import load_checkpoint, save_checkpoint
from trainer.format import (
    CorruptCheckpoint,
    apply_retention,
    cleanup_stale_tmp,
    find_latest_valid,
    list_checkpoints,
    verify,
)
from trainer.state import capture, restore


def groups(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return {"model": {"w": torch.randn(64, 64, generator=g), "b": torch.randn(64, generator=g)},
            "optimizer": {"0.exp_avg": torch.randn(64, 64, generator=g)}}


def test_truncated_newest_is_skipped_for_the_previous_with_a_clear_message(tmp_path):
    save_checkpoint(tmp_path, 10, groups(1), {})
    newest = save_checkpoint(tmp_path, 20, groups(2), {})
    f = newest / "model.safetensors"
    os.truncate(f, f.stat().st_size - 100)
    msgs: list[str] = []
    info = find_latest_valid(tmp_path, log=msgs.append)
    assert info is not None and info.step == 10
    assert len(msgs) == 1 and "step_000000020" in msgs[0] and "truncated" in msgs[0]


def test_bit_flipped_newest_is_skipped_by_checksum(tmp_path):
    save_checkpoint(tmp_path, 10, groups(1), {})
    newest = save_checkpoint(tmp_path, 20, groups(2), {})
    f = newest / "optimizer.safetensors"
    data = bytearray(f.read_bytes())
    data[-5] ^= 0x10
    f.write_bytes(bytes(data))
    msgs: list[str] = []
    assert find_latest_valid(tmp_path, log=msgs.append).step == 10
    assert "checksum mismatch in optimizer.safetensors" in msgs[0]
    with pytest.raises(CorruptCheckpoint):
        load_checkpoint(newest)


def test_files_stay_loadable_by_the_safetensors_library_and_ties_survive(tmp_path):
    emb = torch.nn.Embedding(10, 4)
    head = torch.nn.Linear(4, 10, bias=False)
    head.weight = emb.weight
    model = torch.nn.Sequential(emb, head)
    g = {"model": dict(model.state_dict()) | {"bf": torch.randn(3, dtype=torch.bfloat16),
                                               "scalar": torch.tensor(2.5), "empty": torch.zeros(0, 3),
                                               "strided": torch.randn(4, 6).t()}}
    p = save_checkpoint(tmp_path, 1, g, {})
    lib = load_file(str(p / "model.safetensors"))
    assert torch.equal(lib["strided"], g["model"]["strided"])
    got, _ = load_checkpoint(p)
    for k, v in g["model"].items():
        assert torch.equal(got["model"][k], v), k
    assert got["model"]["0.weight"] is got["model"]["1.weight"]


def test_optimizer_state_round_trips_before_and_after_the_first_step():
    torch.manual_seed(0)
    model = torch.nn.Linear(5, 3)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, 2)
    for stepped in (False, True):
        if stepped:
            model(torch.randn(2, 5)).sum().backward()
            opt.step()
            sched.step()
        g, meta = capture(model, opt, step=1, scheduler=sched)
        m2 = torch.nn.Linear(5, 3)
        o2 = torch.optim.AdamW(m2.parameters(), lr=0.5)
        s2 = torch.optim.lr_scheduler.StepLR(o2, 2)
        restore(g, meta, m2, o2, scheduler=s2)
        assert (len(o2.state) == 0) == (not stepped)
        for p1, p2 in zip(model.parameters(), m2.parameters(), strict=True):
            assert torch.equal(p1, p2)
            for k, v in opt.state[p1].items():
                assert torch.equal(torch.as_tensor(v), torch.as_tensor(o2.state[p2][k]))
        assert o2.param_groups[0]["lr"] == opt.param_groups[0]["lr"]
        assert s2.state_dict() == sched.state_dict()


def test_rng_state_restored_exactly():
    torch.manual_seed(3)
    model = torch.nn.Linear(2, 2)
    g, meta = capture(model, None, step=0)
    a = (torch.rand(3), __import__("random").random())
    restore(g, meta, model, None)
    b = (torch.rand(3), __import__("random").random())
    assert torch.equal(a[0], b[0]) and a[1] == b[1]


FULL_DISK_CHILD = textwrap.dedent("""
    import resource, signal, sys, torch
    from trainer.checkpoint import AsyncCheckpointer
    ckpt_dir, limit = sys.argv[1], int(sys.argv[2])
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)   # writes past the limit fail with EFBIG
    small = {"model": {"w": torch.ones(1000)}}
    big = {"model": {"w": torch.ones(1000), "x": torch.arange(2_000_000, dtype=torch.float32)}}
    errors = []
    ck = AsyncCheckpointer(ckpt_dir, on_error=lambda s, e: errors.append((s, repr(e))))
    ck.snapshot(1, small, {}); ck.wait()
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    before = big["model"]["x"].clone()
    ck.snapshot(2, big, {}); ck.wait()
    assert torch.equal(before, big["model"]["x"]), "training state changed"
    print("ERRORS", errors)
""")


def test_full_disk_during_persist_keeps_previous_checkpoint_and_reports(tmp_path):
    r = subprocess.run([sys.executable, "-c", FULL_DISK_CHILD, str(tmp_path), str(1 << 20)],
                       cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "ERRORS [(2," in r.stdout and ("File too large" in r.stdout or "EFBIG" in r.stdout
                                            or "No space" in r.stdout)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_000000001"]
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".tmp-")]  # nothing half-written
    assert find_latest_valid(tmp_path).step == 1


def test_retention_keeps_newest_k_plus_best(tmp_path):
    for step, val in ((1, 0.5), (2, 0.9), (3, 0.8), (4, 0.7), (5, 0.6)):
        save_checkpoint(tmp_path, step, groups(step), {"metrics": {"val_loss": val}})
    removed = apply_retention(tmp_path, keep=2, best_metric="val_loss")
    assert sorted(p.name for p in list_checkpoints(tmp_path)) == [
        "step_000000001", "step_000000004", "step_000000005"]
    assert len(removed) == 2


def test_stale_temp_dirs_of_dead_writers_are_removed(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    (tmp_path / f".tmp-step_000000009-{dead}").mkdir()
    (tmp_path / f".tmp-step_000000009-{os.getpid()}").mkdir()
    removed = cleanup_stale_tmp(tmp_path)
    assert [p.name for p in removed] == [f".tmp-step_000000009-{dead}"]


def test_verify_rejects_missing_meta(tmp_path):
    p = save_checkpoint(tmp_path, 3, groups(), {})
    (p / "meta.json").unlink()
    with pytest.raises(CorruptCheckpoint, match="meta.json is missing"):
        verify(p)
