"""The two-phase snapshot copies parameters and optimizer state in the background while the loop
runs on, and the optimizer's next step waits for that copy: the checkpoint of step k is exactly
the state of step k, whatever the loop did after the snapshot returned."""

from __future__ import annotations

import gc
import threading
import time

import torch

from trainer.checkpoint import AsyncCheckpointer, load_checkpoint
from trainer.state import capture


class GatedCheckpointer(AsyncCheckpointer):
    """The background copy starts only when the test opens the gate (a slow copy on demand)."""

    def __init__(self, *args, fail: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.gate = threading.Event()
        self.fail = fail

    def _copy(self, group, tensors, names, snap):
        if threading.current_thread() is not threading.main_thread():
            self.gate.wait(10)
            if self.fail:
                raise OSError("copy failed")
        super()._copy(group, tensors, names, snap)


def trained():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.BatchNorm1d(8), torch.nn.Linear(8, 2))
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    for _ in range(2):
        model(torch.randn(16, 8)).pow(2).sum().backward()
        opt.step()
        opt.zero_grad()
    return model, opt


def frozen(groups):
    return {g: {k: t.detach().clone() for k, t in ts.items()} for g, ts in groups.items()}


def test_snapshot_is_the_step_k_state_while_forward_backward_and_the_next_step_run_on(tmp_path):
    """Snapshot at step 2 with the background copy held back: forward (which moves BatchNorm's
    running stats) and backward run at once; the next optimizer.step blocks until the copy is
    done; the checkpoint on disk equals step 2's state bit for bit, and the step then happens."""
    model, opt = trained()
    groups, meta = capture(model, opt, step=2)
    want = frozen(groups)
    ck = GatedCheckpointer(tmp_path)
    ck.snapshot(2, groups, meta, optimizer=opt)

    model(torch.randn(16, 8)).pow(2).sum().backward()  # the loop goes on: no wait here
    assert not torch.equal(model[1].running_mean, want["model"]["1.running_mean"])
    stepper = threading.Thread(target=opt.step)
    stepper.start()
    time.sleep(0.2)
    assert stepper.is_alive(), "optimizer.step() must wait for the snapshot's copy"
    assert torch.equal(model[0].weight, want["model"]["0.weight"])
    ck.gate.set()
    stepper.join(10)
    ck.wait()
    assert not torch.equal(model[0].weight, want["model"]["0.weight"])  # the step did run

    loaded, m = load_checkpoint(tmp_path / "step_000000002")
    assert m["step"] == 2
    for g in ("model", "optimizer"):
        assert set(loaded[g]) == set(want[g])
        for k, t in want[g].items():
            assert torch.equal(loaded[g][k], t), f"{g}.{k} leaked a change made after the snapshot"
    assert ck.fence_wait_s > 0.1
    ck.close()


def test_a_parameter_changed_in_place_after_wait_copy_does_not_leak(tmp_path):
    """Code that edits optimized weights outside optimizer.step() calls wait_copy() first; the
    edit then stays out of the snapshot."""
    model, opt = trained()
    groups, meta = capture(model, opt, step=2)
    want = model[0].weight.detach().clone()
    ck = GatedCheckpointer(tmp_path)
    ck.snapshot(2, groups, meta, optimizer=opt)
    threading.Timer(0.1, ck.gate.set).start()
    assert ck.wait_copy() > 0
    with torch.no_grad():
        model[0].weight.add_(1.0)
    ck.wait()
    loaded, _ = load_checkpoint(tmp_path / "step_000000002")
    assert torch.equal(loaded["model"]["0.weight"], want)
    ck.close()


def test_without_an_optimizer_everything_is_copied_before_snapshot_returns(tmp_path):
    """No optimizer to fence: the snapshot copies every tensor itself, so a change right after
    it returns (the copy still held back would otherwise see it) stays out."""
    model, opt = trained()
    groups, meta = capture(model, opt, step=2)
    want = model[0].weight.detach().clone()
    ck = GatedCheckpointer(tmp_path)
    ck.snapshot(2, groups, meta)
    with torch.no_grad():
        model[0].weight.add_(1.0)
    ck.gate.set()
    ck.wait()
    loaded, _ = load_checkpoint(tmp_path / "step_000000002")
    assert torch.equal(loaded["model"]["0.weight"], want)
    ck.close()


def test_a_failed_background_copy_reports_and_never_blocks_the_next_step(tmp_path):
    """The copy raises: on_error names the step, the previous checkpoints stay, and the
    optimizer's next step runs instead of waiting forever."""
    model, opt = trained()
    errors = []
    ck = GatedCheckpointer(tmp_path, fail=True, on_error=lambda step, e: errors.append(step))
    ck.snapshot(2, *capture(model, opt, step=2), optimizer=opt)
    ck.gate.set()
    model(torch.randn(16, 8)).pow(2).sum().backward()
    opt.step()
    ck.wait()
    assert errors == [2] and isinstance(ck.last_error, OSError)
    assert not (tmp_path / "step_000000002").exists()
    ck.close()


def test_close_removes_the_step_hook(tmp_path):
    """After close the optimizer carries no hook of ours (a job that drops the checkpointer
    keeps a plain optimizer)."""
    model, opt = trained()
    ck = AsyncCheckpointer(tmp_path)
    ck.snapshot(2, *capture(model, opt, step=2), optimizer=opt)
    ck.wait()
    assert len(opt._optimizer_step_pre_hooks) == 1
    ck.close()
    assert len(opt._optimizer_step_pre_hooks) == 0


def test_an_optimizer_created_after_another_was_dropped_is_fenced_too(tmp_path):
    """The hook registry is weak: a new optimizer (which may get the dropped one's id) gets
    its own hook instead of passing for one already fenced."""
    model, opt = trained()
    ck = AsyncCheckpointer(tmp_path)
    ck.snapshot(2, *capture(model, opt, step=2), optimizer=opt)
    ck.wait()
    del opt
    gc.collect()
    opt2 = torch.optim.SGD(model.parameters(), lr=0.1)
    ck.snapshot(3, *capture(model, opt2, step=3), optimizer=opt2)
    ck.wait()
    assert len(opt2._optimizer_step_pre_hooks) == 1
    ck.close()
