"""Issue 2's measurement: one ~100M-parameter model with AdamW state (~1.2 GB), side by side.

    .venv/bin/python bench/checkpoint_bench.py [--params 100e6] [--dir /path/on/the/disk]

1. persist throughput: our writer (trainer.checkpoint.save_checkpoint: safetensors written
   directly, CRCs, fsync, atomic rename) against a raw sequential write of the same bytes with
   fsync (the disk's limit) and against torch.save (+ fsync);
2. training-loop stall per checkpoint: the two-phase save (AsyncCheckpointer.snapshot) against
   a synchronous save of the same state;
3. restore: load_checkpoint (verified) against torch.load.
Every writer fsyncs, so the page cache can't flatter one of them; each is run --repeat times
and the median kept. Goals: persist >= 0.85x raw and >= 2x torch.save; stall <= 0.15x sync;
restore <= 0.5x torch.load.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from trainer.checkpoint import AsyncCheckpointer, load_checkpoint, save_checkpoint  # noqa: E402
from trainer.state import capture  # noqa: E402


def model_and_optimizer(n_params: float):
    # A stack of square linears: ~n_params parameters, AdamW state for all of them.
    d = 2048
    layers = max(1, round(n_params / (d * d + d)))
    model = torch.nn.Sequential(*[torch.nn.Linear(d, d) for _ in range(layers)])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()  # materialize exp_avg / exp_avg_sq
    return model, opt


def timed(fn, repeat: int) -> float:
    out = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return statistics.median(out)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--params", type=float, default=100e6)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--dir", default=None, help="a directory on the disk to measure (default: temp)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "checkpoint.json"))
    a = ap.parse_args()
    torch.set_num_threads(2)
    model, opt = model_and_optimizer(a.params)
    groups, meta = capture(model, opt, step=1)
    nbytes = sum(t.numel() * t.element_size() for g in groups.values() for t in g.values())
    n_params = sum(p.numel() for p in model.parameters())
    with tempfile.TemporaryDirectory(dir=a.dir) as tmp_s:
        tmp = Path(tmp_s)
        flat = [t.contiguous().view(-1).view(torch.uint8).numpy() for g in groups.values() for t in g.values()]

        # Every writer writes a NEW file each time (a checkpoint always is one) and the previous
        # one is deleted first: overwriting an existing file is faster on this disk and would
        # flatter whoever gets to do it.
        seq = iter(range(1_000_000))

        def fresh(name: str) -> Path:
            for old in tmp.glob(name + ".*"):
                old.unlink()
            return tmp / f"{name}.{next(seq)}"

        def raw() -> None:
            fd = os.open(fresh("raw"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            for b in flat:
                mv = memoryview(b)
                while len(mv):
                    mv = mv[os.write(fd, mv):]
            os.fsync(fd)
            os.close(fd)

        def tsave() -> None:
            state = {"model": model.state_dict(), "optimizer": opt.state_dict()}
            with open(fresh("torch"), "wb") as f:
                torch.save(state, f)
                f.flush()
                os.fsync(f.fileno())

        step = iter(range(10, 10_000))

        def ours() -> None:
            import shutil
            shutil.rmtree(tmp / "ckpt", ignore_errors=True)
            save_checkpoint(tmp / "ckpt", next(step), groups, meta)

        t_raw = timed(raw, a.repeat)
        t_torch = timed(tsave, a.repeat)
        t_ours = timed(ours, a.repeat)

        # stall: what the training loop waits for, per checkpoint
        ck = AsyncCheckpointer(tmp / "async", keep=2)
        g, m = capture(model, opt, step=99)
        t0 = time.perf_counter()
        ck.snapshot(99, g, m)  # the first snapshot allocates its CPU buffers (page faults)
        first_stall = time.perf_counter() - t0
        ck.wait()
        stalls = []
        for i in range(a.repeat):
            g, m = capture(model, opt, step=100 + i)
            t0 = time.perf_counter()
            ck.snapshot(100 + i, g, m)
            stalls.append(time.perf_counter() - t0)
            ck.wait()
        ck.close()
        sync = timed(lambda: save_checkpoint(tmp / "sync", next(step), *capture(model, opt, step=1)), a.repeat)
        stall = statistics.median(stalls)

        last = sorted((tmp / "ckpt").glob("step_*"))[-1]
        t_load = timed(lambda: load_checkpoint(last), a.repeat)
        t_tload = timed(lambda: torch.load(next(tmp.glob("torch.*")), weights_only=True), a.repeat)

    gb = nbytes / 1e9
    res = {
        "params": n_params, "bytes": nbytes,
        "persist_GBps": {"raw_fsync": gb / t_raw, "ours": gb / t_ours, "torch_save": gb / t_torch},
        "persist_vs_raw": t_raw / t_ours, "persist_vs_torch_save": t_torch / t_ours,
        "stall_s": {"two_phase": stall, "two_phase_first": first_stall, "synchronous": sync},
        "stall_ratio": stall / sync,
        "restore_s": {"ours_verified": t_load, "torch_load": t_tload}, "restore_ratio": t_load / t_tload,
    }
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=2))
    print(f"{n_params / 1e6:.0f}M params, {gb:.2f} GB of model + AdamW state")
    print(f"persist: ours {gb / t_ours:.2f} GB/s, raw+fsync {gb / t_raw:.2f} GB/s, torch.save {gb / t_torch:.2f} GB/s"
          f" -> {res['persist_vs_raw']:.2f}x raw (goal >= 0.85), {res['persist_vs_torch_save']:.2f}x torch.save (goal >= 2)")
    print(f"stall: two-phase {stall:.3f} s (first, allocating: {first_stall:.3f} s) vs synchronous "
          f"{sync:.3f} s -> {res['stall_ratio']:.3f} (goal <= 0.15)")
    print(f"restore: ours (verified) {t_load:.3f} s vs torch.load {t_tload:.3f} s -> {res['restore_ratio']:.2f} (goal <= 0.5)")


if __name__ == "__main__":
    main()
