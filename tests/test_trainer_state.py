"""State capture/restore (trainer.state) through a real checkpoint on disk: optimizer state
flattened to tensors before and after the first step, tied weights, scheduler, GradScaler, RNG
streams, data position. Each round trip is proven by continuing training identically."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from trainer.checkpoint import load_checkpoint, save_checkpoint
from trainer.state import capture, restore


class Tied(torch.nn.Module):
    """A tiny LM whose output layer shares the embedding matrix (as GPT-2 does)."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = torch.nn.Embedding(11, 8)
        self.drop = torch.nn.Dropout(0.3)
        self.out = torch.nn.Linear(8, 11, bias=False)
        self.out.weight = self.emb.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.drop(self.emb(x)))


class Loader:
    """A data position a job would save (the extra_state contract)."""

    def __init__(self) -> None:
        self.pos = 0
        self.order = (3, 1, 2)

    def state_dict(self) -> dict:
        return {"pos": self.pos, "order": self.order}

    def load_state_dict(self, d: dict) -> None:
        self.pos, self.order = d["pos"], d["order"]


def build(seed: int = 0):
    torch.manual_seed(seed)
    model = Tied()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, betas=(0.8, 0.95), weight_decay=0.1)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.05, total_steps=50)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0, growth_interval=2)
    return model, opt, sched, scaler


def train(model, opt, sched, scaler, steps: int) -> list[float]:
    """Steps that draw from every RNG: torch (data + dropout), python and numpy."""
    losses = []
    for _ in range(steps):
        x = torch.randint(0, 11, (4, 5))
        noise = random.random() + float(np.random.rand())
        loss = model(x).logsumexp(-1).mean() * (1 + 0.01 * noise)
        opt.zero_grad()
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        sched.step()
        losses.append(loss.item())
    return losses


def roundtrip(tmp_path, model, opt, sched, scaler, extra=None, step: int = 0):
    groups, meta = capture(model, opt, step=step, epoch=2, scheduler=sched, scaler=scaler, extra=extra)
    path = save_checkpoint(tmp_path / "ckpt", step, groups, meta)
    return load_checkpoint(path)


def seed_all(n: int) -> None:
    torch.manual_seed(n)
    random.seed(n)
    np.random.seed(n)


@pytest.mark.parametrize("warm_steps", [0, 3])
def test_restored_state_continues_training_identically(tmp_path, warm_steps):
    """Before the first step (empty optimizer state) and after some steps: a fresh model restored
    from the checkpoint trains on exactly like the original (same losses, same tensors)."""
    seed_all(1)
    a = build()
    train(*a, warm_steps)
    groups, meta = roundtrip(tmp_path, *a, step=warm_steps)
    if warm_steps == 0:
        assert groups["optimizer"] == {} and meta["optimizer"]["scalars"] == {}
    else:
        assert {"0.exp_avg", "0.exp_avg_sq", "0.step"} <= set(groups["optimizer"])

    expected = train(*a, 6)  # the uninterrupted run goes on (the RNGs are global: it goes first)
    b = build(seed=99)  # different init and RNG: everything must come from the checkpoint
    seed_all(99)
    restore(groups, meta, *b[:2], scheduler=b[2], scaler=b[3])
    got = train(*b, 6)
    assert got == expected
    for k, v in a[0].state_dict().items():
        assert torch.equal(v, b[0].state_dict()[k]), k
    sa, sb = a[1].state_dict(), b[1].state_dict()
    for pid, st in sa["state"].items():
        for k, v in st.items():
            assert torch.equal(v, sb["state"][pid][k]), (pid, k)
    assert sb["param_groups"] == sa["param_groups"]  # betas stay a tuple, lr matches
    assert type(sb["param_groups"][0]["betas"]) is tuple
    assert b[2].state_dict() == a[2].state_dict() and b[3].state_dict() == a[3].state_dict()


def test_tied_weights_are_stored_once_and_stay_tied_after_restore(tmp_path):
    a = build()
    train(*a, 2)
    groups, meta = roundtrip(tmp_path, *a, step=2)
    assert set(groups["model"]) == {"emb.weight", "out.weight"}
    assert meta["aliases"]["model"] == {"out.weight": "emb.weight"}  # one copy on disk
    b = build(seed=5)
    restore(groups, meta, *b[:2], scheduler=b[2], scaler=b[3])
    assert b[0].out.weight is b[0].emb.weight
    assert torch.equal(b[0].emb.weight, a[0].emb.weight)
    with torch.no_grad():
        b[0].emb.weight.add_(1.0)
    assert torch.equal(b[0].out.weight, b[0].emb.weight)


def test_rng_streams_resume_where_they_were(tmp_path):
    """python, numpy and torch CPU draws after restore equal the draws the original would make."""
    seed_all(7)
    model, opt, _, _ = build()
    groups, meta = capture(model, opt, step=0)
    path = save_checkpoint(tmp_path / "ckpt", 0, groups, meta)
    expected = (random.random(), float(np.random.rand()), torch.rand(3).tolist())
    seed_all(123)
    g, m = load_checkpoint(path)
    restore(g, m, model, opt)
    assert (random.random(), float(np.random.rand()), torch.rand(3).tolist()) == expected
    # RNG byte states are tensors (uint8), the Mersenne words JSON: nothing pickled
    assert g["rng"]["torch_cpu"].dtype == torch.uint8
    assert "__pickle__" not in json.dumps(m["rng"])


def test_data_position_epoch_and_versions_are_in_the_meta(tmp_path):
    loader = Loader()
    loader.pos, loader.order = 1234, (2, 0, 1)
    model, opt, sched, scaler = build()
    groups, meta = roundtrip(tmp_path, model, opt, sched, scaler, extra=loader, step=17)
    assert meta["step"] == 17 and meta["epoch"] == 2
    assert meta["versions"]["torch"] == torch.__version__ and "python" in meta["versions"]
    fresh = Loader()
    restore(groups, meta, model, opt, extra=fresh)
    assert (fresh.pos, fresh.order) == (1234, (2, 0, 1))


def test_a_checkpoint_of_another_model_is_refused_with_the_key_named(tmp_path):
    a = build()
    groups, meta = roundtrip(tmp_path, *a)
    other = torch.nn.Linear(3, 3)
    with pytest.raises(RuntimeError, match="emb.weight"):
        restore(groups, meta, other, None)
