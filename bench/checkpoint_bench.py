"""Issue 18's measurement: checkpoint I/O against the disk's limit and against torch, in
interleaved pairs (A B, then B A, ...) so a disk or a neighbour that changes speed from one
minute to the next hits both sides of a pair alike; each ratio is the median over the pairs,
with its min and max.

    .venv/bin/python bench/checkpoint_bench.py [--params 100e6] [--pairs 5] [--dir DIR] [--out FILE]
                                               [--only stall] [--batch 32]

The state is a stack of 2048x2048 linears with AdamW state (--params 100e6: 101M parameters,
1.21 GB). Per pair:
1. persist: trainer.checkpoint.save_checkpoint (safetensors written directly, xxh3 digests,
   fsync, atomic rename) against a plain write of the same bytes + fsync ("raw") and against
   torch.save + fsync; a raw write that also starts writeback as it goes is reported too.
   Every writer writes a new file (the previous one deleted first).
2. restore into the model and the optimizer: load_checkpoint (verified: sizes, headers, every
   digest) + trainer.state.restore, against torch.load + load_state_dict (unverified) and
   safetensors' load_file + load_state_dict (unverified); warm (files in the page cache) and
   cold (posix_fadvise DONTNEED on every file just before each run). Restore + one AdamW step
   is reported too, so no cost can hide in the first step (copy-on-write pages, say). In this
   process torch.load gets its memory from pages freed by the previous run; a real resume is a
   fresh process whose optimizer has no state, where every approach pays for new pages: that
   is measured too (a child process per run, warm files, restore and restore + one step).
3. stall: the training loop's wait for a two-phase save against a synchronous save of the
   same state. A loop iteration is forward + backward on a batch of --batch rows, then
   ``optimizer.step()``. With a two-phase save the loop captures the state and calls
   AsyncCheckpointer.snapshot (buffers, RNG, JSON), runs on through forward/backward while a
   thread copies parameters and optimizer state, and the next step waits for that copy:
   stall = capture + snapshot + that wait. The whole iteration's extra time against an
   iteration without a checkpoint (adjacent, same pair) is reported too
   (``loop_extra_vs_sync``): it also counts the copy's competition with forward/backward for
   the cores and memory. ``--only stall`` measures just this part and writes only its own
   figures, to its own file (default bench/results/checkpoint_stall.json): it never merges into
   an earlier run's JSON.
The JSON keeps each pair's values too (``per_pair``: every ratio, seconds and peak, in pair
order, e.g. the stall's fence waits), the load average before and after the run, and the
UTC start and end, so a claim such as "3 of 7 pairs slower" can be checked from the file.
Memory: peak extra = the peak resident set (VmHWM, reset through /proc/self/clear_refs) above
the larger of the resident sets before and after the operation, i.e. what existed only while
it ran, during our persist and our restore, against the largest tensor group. The peak above
the resident set before is reported too: for a restore it also counts the restored optimizer
state itself (the benchmark keeps the old state alive), an upper bound of what a resume adds.
Goals: persist >= 0.95x raw and >= 1x torch.save in every pair; restore <= 0.5x torch.load warm,
<= 1.0x cold, <= 1.0x safetensors; peak extra <= the largest group; stall <= 0.05x sync.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from trainer.checkpoint import AsyncCheckpointer, _start_writeback, load_checkpoint, save_checkpoint  # noqa: E402
from trainer.state import capture, load_optimizer_state, restore  # noqa: E402


def model_and_optimizer(n_params: float):
    # A stack of square linears: ~n_params parameters, AdamW state for all of them.
    d = 2048
    layers = max(1, round(n_params / (d * d + d)))
    model = torch.nn.Sequential(*[torch.nn.Linear(d, d) for _ in range(layers)])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    opt.step()  # materialize exp_avg / exp_avg_sq
    return model, opt


def _status(key: str) -> int:
    return int(re.search(rf"{key}:\s+(\d+)", Path("/proc/self/status").read_text()).group(1)) * 1024


def measured(fn: Callable[[], object]) -> tuple[float, int, int]:
    """(seconds, peak resident bytes above the larger of the resident sets before and after
    the call: memory that existed only during it; peak above the one before)."""
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := current RSS
    before = _status("VmRSS")
    t0 = time.perf_counter()
    fn()
    dt = time.perf_counter() - t0
    peak, after = _status("VmHWM"), _status("VmRSS")
    return dt, max(0, peak - max(before, after)), max(0, peak - before)


def evict(paths: list[Path]) -> None:
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def summary(xs: list[float]) -> dict[str, float]:
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs)}


def child(kind: str, n_params: float, ckpt: str, tfile: str) -> None:
    """A resume as it really happens, in a fresh process: build the model and an optimizer with
    no state, restore, take one step. Prints the times as JSON."""
    torch.set_num_threads(2)
    d = 2048
    model = torch.nn.Sequential(*[torch.nn.Linear(d, d) for _ in range(max(1, round(n_params / (d * d + d))))])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    t0 = time.perf_counter()
    if kind == "ours":
        g, m = load_checkpoint(ckpt)
        restore(g, m, model, opt)
        del g
    else:
        s = torch.load(tfile, weights_only=True)
        model.load_state_dict(s["model"])
        opt.load_state_dict(s["optimizer"])
        del s
    t1 = time.perf_counter()
    opt.step()
    t2 = time.perf_counter()
    print(json.dumps({"restore": t1 - t0, "restore_then_step": t2 - t0}))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--params", type=float, default=100e6)
    ap.add_argument("--pairs", type=int, default=5)
    ap.add_argument("--child", nargs=3, metavar=("KIND", "CKPT", "TORCH_FILE"), help=argparse.SUPPRESS)
    ap.add_argument("--dir", default=None, help="a directory on the disk to measure (default: temp)")
    ap.add_argument("--out", default=None, help="JSON file (default: bench/results/checkpoint.json, "
                    "or checkpoint_stall.json with --only stall)")
    ap.add_argument("--only", choices=("all", "stall"), default="all")
    ap.add_argument("--batch", type=int, default=32, help="rows per forward/backward in the stall loop")
    a = ap.parse_args()
    if a.child:
        return child(a.child[0], a.params, a.child[1], a.child[2])
    if a.out is None:
        a.out = str(ROOT / "bench" / "results" / ("checkpoint_stall.json" if a.only == "stall" else "checkpoint.json"))
    run_info = {"command": "bench/checkpoint_bench.py " + " ".join(sys.argv[1:]),
                "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "load_average_before": os.getloadavg()}
    torch.set_num_threads(2)
    model, opt = model_and_optimizer(a.params)
    groups, meta = capture(model, opt, step=1)
    group_bytes = {g: sum(t.numel() * t.element_size() for t in ts.values()) for g, ts in groups.items()}
    nbytes = sum(group_bytes.values())
    n_params = sum(p.numel() for p in model.parameters())
    baseline_opt = opt.state_dict()  # the optimizer is put back on it after every restore
    flat = [t.contiguous().view(-1).view(torch.uint8).numpy() for g in groups.values() for t in g.values()]
    times: dict[str, list[float]] = {k: [] for k in (
        "raw", "raw_early_writeback", "torch_save", "ours",
        "warm_ours", "warm_torch", "warm_safetensors", "cold_ours", "cold_torch", "cold_safetensors",
        "step_ours", "step_torch", "fresh_ours", "fresh_torch", "fresh_step_ours", "fresh_step_torch",
        "stall", "sync", "fence_wait", "step_plain", "step_with_snapshot", "fwd_bwd")}
    peaks: dict[str, list[int]] = {"persist": [], "restore": [], "torch_save": [], "torch_load": [],
                                   "restore_above_before": [], "torch_load_above_before": []}

    with tempfile.TemporaryDirectory(dir=a.dir) as tmp_s:
        tmp = Path(tmp_s)
        seq = iter(range(1_000_000))

        def fresh(name: str) -> Path:
            for old in tmp.glob(name + ".*"):
                old.unlink()
            return tmp / f"{name}.{next(seq)}"

        def raw(early: bool = False) -> None:
            fd = os.open(fresh("raw"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            pos = 0
            for b in flat:
                mv = memoryview(b)
                for i in range(0, len(mv), 64 << 20):
                    piece = mv[i:i + (64 << 20)]
                    n = len(piece)
                    while len(piece):
                        piece = piece[os.write(fd, piece):]
                    if early and _start_writeback:
                        _start_writeback(fd, pos, n)
                    pos += n
            os.fsync(fd)
            os.close(fd)

        def tsave() -> None:
            state = {"model": model.state_dict(), "optimizer": opt.state_dict()}
            with open(fresh("torch"), "wb") as f:
                torch.save(state, f)
                f.flush()
                os.fsync(f.fileno())

        steps = iter(range(10, 1_000_000))

        def ours() -> None:
            shutil.rmtree(tmp / "ckpt", ignore_errors=True)
            save_checkpoint(tmp / "ckpt", next(steps), groups, meta)

        def ckpt_files() -> list[Path]:
            return sorted(next((tmp / "ckpt").glob("step_*")).glob("*"))

        def load_ours() -> None:
            g, m = load_checkpoint(next((tmp / "ckpt").glob("step_*")))
            restore(g, m, model, opt)

        def load_torch() -> None:
            s = torch.load(next(tmp.glob("torch.*")), weights_only=True)
            model.load_state_dict(s["model"])
            opt.load_state_dict(s["optimizer"])

        def load_st() -> None:
            d = next((tmp / "ckpt").glob("step_*"))
            model.load_state_dict(load_file(d / "model.safetensors"))
            load_optimizer_state(opt, load_file(d / "optimizer.safetensors"), meta["optimizer"])

        def reset() -> None:
            opt.load_state_dict(baseline_opt)  # drop what the last restore put in (and its mappings)
            gc.collect()

        ck = AsyncCheckpointer(tmp / "async", keep=1)
        ck.snapshot(1, groups, meta, optimizer=opt)  # the first snapshot allocates its CPU buffers
        ck.wait()
        x = torch.randn(a.batch, 2048)

        def fwd_bwd() -> None:
            model(x).square().mean().backward()

        def plain() -> None:  # a loop iteration without a checkpoint
            t0 = time.perf_counter()
            fwd_bwd()
            times["fwd_bwd"].append(time.perf_counter() - t0)
            opt.step()
            times["step_plain"].append(time.perf_counter() - t0)

        def stall() -> None:
            t0 = time.perf_counter()
            g, m = capture(model, opt, step=next(steps))
            ck.snapshot(int(m["step"]), g, m, optimizer=opt)
            snap = time.perf_counter() - t0
            fwd_bwd()  # the copy runs meanwhile
            opt.step()  # waits for the copy (the step pre-hook) if it is still running
            times["step_with_snapshot"].append(time.perf_counter() - t0)
            times["fence_wait"].append(ck.fence_wait_s)
            times["stall"].append(snap + ck.fence_wait_s)
            ck.wait()

        def sync() -> None:
            t0 = time.perf_counter()
            save_checkpoint(tmp / "sync", next(steps), *capture(model, opt, step=1))
            times["sync"].append(time.perf_counter() - t0)

        for i in range(a.pairs):
            flip = i % 2 == 1  # A B, then B A: neither side always goes first
            if a.only == "stall":
                for fn in ((sync, stall, plain) if flip else (plain, stall, sync)):
                    fn()
                print(f"pair {i + 1}/{a.pairs}: " + ", ".join(f"{k} {v[-1]:.3f}" for k, v in times.items() if v),
                      flush=True)
                shutil.rmtree(tmp / "sync", ignore_errors=True)
                continue
            # persist
            order: list[tuple[str, Callable[[], None]]] = [
                ("raw", raw), ("ours", ours), ("torch_save", tsave), ("raw_early_writeback", lambda: raw(True))]
            for name, fn in (reversed(order) if flip else order):
                dt, peak, _ = measured(fn)
                times[name].append(dt)
                if name == "ours":
                    peaks["persist"].append(peak)
                elif name == "torch_save":
                    peaks["torch_save"].append(peak)
            # restore, warm (one untimed read of each first) then cold
            loads = [("ours", load_ours), ("torch", load_torch), ("safetensors", load_st)]
            files = {"ours": ckpt_files(), "safetensors": ckpt_files(), "torch": list(tmp.glob("torch.*"))}
            for _, fn in loads:
                fn()
                reset()
            for name, fn in (reversed(loads) if flip else loads):
                dt, peak, above = measured(fn)
                times[f"warm_{name}"].append(dt)
                if name == "ours":
                    peaks["restore"].append(peak)
                    peaks["restore_above_before"].append(above)
                elif name == "torch":
                    peaks["torch_load"].append(peak)
                    peaks["torch_load_above_before"].append(above)
                reset()
            for name, fn in (reversed(loads) if flip else loads):
                evict(files[name])
                dt, _, _ = measured(fn)
                times[f"cold_{name}"].append(dt)
                reset()
            # nothing may hide in the first step (pages still to copy out of a mapping, say):
            # restore + one AdamW step, warm, shows the whole bill.
            for name, fn in (reversed(loads[:2]) if flip else loads[:2]):
                t0 = time.perf_counter()
                fn()
                opt.step()
                times[f"step_{name}"].append(time.perf_counter() - t0)
                reset()
            # a real resume: a fresh process, an optimizer without state (warm files)
            for name in (("torch", "ours") if flip else ("ours", "torch")):
                out = subprocess.run([sys.executable, __file__, "--params", str(a.params), "--child", name,
                                      str(next((tmp / "ckpt").glob("step_*"))), str(next(tmp.glob("torch.*")))],
                                     capture_output=True, text=True, check=True).stdout
                got = json.loads(out.strip().splitlines()[-1])
                times[f"fresh_{name}"].append(got["restore"])
                times[f"fresh_step_{name}"].append(got["restore_then_step"])
            # stall
            for fn in ((sync, stall, plain) if flip else (plain, stall, sync)):
                fn()
            print(f"pair {i + 1}/{a.pairs}: " + ", ".join(f"{k} {v[-1]:.3f}" for k, v in times.items()),
                  flush=True)
            shutil.rmtree(tmp / "sync", ignore_errors=True)
        ck.close()

    run_info["finished_utc"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    run_info["load_average_after"] = os.getloadavg()
    per_pair: dict[str, dict] = {"ratios": {}, "seconds": {k: v for k, v in times.items() if v},
                                 "peak_bytes": {k: v for k, v in peaks.items() if v}}

    def ratio(num: str, den: str, name: str | None = None) -> dict[str, float]:
        xs = [x / y for x, y in zip(times[num], times[den], strict=True)]
        per_pair["ratios"][name or f"{num}/{den}"] = xs
        return summary(xs)

    loop_extra = [(w - p) / y for w, p, y in zip(
        times["step_with_snapshot"], times["step_plain"], times["sync"], strict=True)]
    per_pair["ratios"]["loop_extra_vs_sync"] = loop_extra
    stall_figures = {
        "stall_ratio": ratio("stall", "sync", "stall_ratio"),
        "loop_extra_vs_sync": summary(loop_extra),
        "stall_batch_rows": a.batch,
        "stall_seconds": {k: summary(times[k]) for k in (
            "stall", "fence_wait", "sync", "fwd_bwd", "step_plain", "step_with_snapshot")},
        "stall_command": run_info["command"],
        "stall_load_average": run_info["load_average_after"],
    }
    if a.only == "stall":
        # only this run's figures, never merged into an earlier run's file
        res = {**stall_figures, "pairs": a.pairs, "params": n_params, "run": run_info, "per_pair": per_pair}
        res["stall_verdict"] = "met" if res["stall_ratio"]["median"] <= 0.05 else "MISS"
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(res, indent=2) + "\n")
        st, lx = res["stall_ratio"], res["loop_extra_vs_sync"]
        print(f"stall: {st['median']:.3f} ({st['min']:.3f}-{st['max']:.3f}) of a synchronous save (goal <= 0.05); "
              f"the iteration's extra time {lx['median']:.3f} ({lx['min']:.3f}-{lx['max']:.3f}); seconds: "
              + ", ".join(f"{k} {v['median']:.3f}" for k, v in res["stall_seconds"].items()))
        return
    largest = max(group_bytes.values())
    peak_extra = max(max(peaks["persist"]), max(peaks["restore"]))
    res = {
        "params": n_params, "bytes": nbytes, "group_bytes": group_bytes, "pairs": a.pairs,
        "command": run_info["command"], "run": run_info,
        "seconds": {k: summary(v) for k, v in times.items() if v},
        "persist_GBps": {k: nbytes / 1e9 / statistics.median(times[k])
                         for k in ("raw", "raw_early_writeback", "torch_save", "ours")},
        # a ratio > 1 means ours is faster (persist) / costs less (restore, stall: ours / theirs)
        **{k: ratio(num, den, k) for k, (num, den) in {
            "persist_vs_raw": ("raw", "ours"),
            "persist_vs_raw_early_writeback": ("raw_early_writeback", "ours"),
            "persist_vs_torch_save": ("torch_save", "ours"),
            "restore_warm_vs_torch_load": ("warm_ours", "warm_torch"),
            "restore_cold_vs_torch_load": ("cold_ours", "cold_torch"),
            "restore_warm_vs_safetensors": ("warm_ours", "warm_safetensors"),
            "restore_cold_vs_safetensors": ("cold_ours", "cold_safetensors"),
            "restore_then_first_step_vs_torch_load": ("step_ours", "step_torch"),
            "restore_fresh_process_vs_torch_load": ("fresh_ours", "fresh_torch"),
            "restore_fresh_process_then_first_step_vs_torch_load": ("fresh_step_ours", "fresh_step_torch"),
        }.items()},
        **stall_figures,
        "stall_verdict": "met" if stall_figures["stall_ratio"]["median"] <= 0.05 else "MISS",
        "peak_extra_bytes": peak_extra,
        "peak_extra_bytes_by_phase": {k: max(v) for k, v in peaks.items()},
        "largest_group_bytes": largest,
        "peak_extra_vs_largest_group": peak_extra / largest,
        "per_pair": per_pair,
    }
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=2) + "\n")

    def fmt(k: str) -> str:
        r = res[k]
        return f"{r['median']:.2f} ({r['min']:.2f}-{r['max']:.2f})"

    gb = nbytes / 1e9
    print(f"{n_params / 1e6:.0f}M params, {gb:.2f} GB of model + AdamW state, {a.pairs} interleaved pairs")
    print(f"persist: {fmt('persist_vs_raw')} x raw write+fsync (goal >= 0.95), "
          f"{fmt('persist_vs_torch_save')} x torch.save (goal >= 1 in every pair); "
          f"{fmt('persist_vs_raw_early_writeback')} x raw with early writeback")
    print(f"restore (ours/theirs): warm {fmt('restore_warm_vs_torch_load')} of torch.load (goal <= 0.5), "
          f"cold {fmt('restore_cold_vs_torch_load')} (goal <= 1.0); vs safetensors warm "
          f"{fmt('restore_warm_vs_safetensors')}, cold {fmt('restore_cold_vs_safetensors')} (goal <= 1.0)")
    print(f"restore + first AdamW step: {fmt('restore_then_first_step_vs_torch_load')} of torch.load's; "
          f"in a fresh process (a real resume): restore {fmt('restore_fresh_process_vs_torch_load')}, "
          f"restore + first step {fmt('restore_fresh_process_then_first_step_vs_torch_load')}")
    print(f"stall: {fmt('stall_ratio')} of a synchronous save (goal <= 0.05)")
    print(f"peak extra memory: persist {max(peaks['persist']) / 1e6:.0f} MB, restore "
          f"{max(peaks['restore']) / 1e6:.0f} MB (torch.save {max(peaks['torch_save']) / 1e6:.0f} MB, "
          f"torch.load {max(peaks['torch_load']) / 1e6:.0f} MB); largest group {largest / 1e6:.0f} MB; "
          f"restore above the RSS before it {max(peaks['restore_above_before']) / 1e6:.0f} MB "
          f"(torch.load {max(peaks['torch_load_above_before']) / 1e6:.0f} MB)")


if __name__ == "__main__":
    main()
