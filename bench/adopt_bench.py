"""Adopted checkpoints and progress parsing, timed: what an unmodified script costs the daemon.

    .venv/bin/python bench/adopt_bench.py [--mib 190] [--out bench/results/adopt.json]

A real torch.save zip of ``--mib`` MiB: the idle poll (nothing changed), the adoption (copy,
zip CRC check, sha256, fsync, rename), restoring it over a torn file; then OutputProgress's
throughput per preset. The daemon itself never imports torch; this bench does, to write the file.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

from daemon.job.adopt import Adopter
from daemon.job.outputprogress import OutputProgress

ROOT = Path(__file__).resolve().parents[1]


class Clock:
    t = 0.0

    def __call__(self) -> float:
        return self.t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mib", type=int, default=190)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "adopt.json"),
                    help="where the results go (the README's row quotes this file)")
    a = ap.parse_args()
    load = os.getloadavg()[0]  # the machine is shared: the figures are read against this
    out: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as td:
        w = Path(td) / "work"
        (w / "out").mkdir(parents=True)
        torch.save({"model": {"w": torch.randn(a.mib * 2**18)}, "iter_num": 500}, w / "out/ckpt.pt")
        size = (w / "out/ckpt.pt").stat().st_size
        clock = Clock()
        ad = Adopter(w, "out/ckpt.pt", Path(td) / "store", keep=2, clock=clock)
        t0 = time.perf_counter()
        c = ad.observe()  # a complete zip is adopted the poll it is first seen (issue 25)
        out["adopt_s"] = time.perf_counter() - t0
        assert c is not None and c.step == 500
        t0 = time.perf_counter()
        for _ in range(100):
            ad.observe()
        out["idle_observe_ms"] = (time.perf_counter() - t0) * 10
        data = (w / "out/ckpt.pt").read_bytes()
        (w / "out/ckpt.pt").write_bytes(data[: size // 2])
        t0 = time.perf_counter()
        assert ad.restore_newest().step == 500
        out["restore_over_torn_s"] = time.perf_counter() - t0
        out["ckpt_mib"] = size / 2**20
    lines = {
        "nanogpt": [f"iter {i}: loss {2 + 1 / (i + 1):.4f}, time 84.31ms, mfu 4.45%" for i in range(50_000)],
        "tqdm": [f"\r 12%|█▏        | {i}/50000 [00:10<01:20, 11.2it/s, loss=2.31]" for i in range(50_000)],
        "hf": [f"{{'loss': {2 + 1 / (i + 1):.4f}, 'grad_norm': 1.2, 'learning_rate': 5e-05, 'epoch': 0.5}}"
               for i in range(50_000)],
    }
    for name, ls in lines.items():
        op = OutputProgress(name)
        op.feed("\r  0%|          | 0/50000 [00:00<?, ?it/s]")
        t0 = time.perf_counter()
        for line in ls:
            op.feed(line)
        out[f"{name}_lines_per_s"] = len(ls) / (time.perf_counter() - t0)
    res = {k: round(v, 3) for k, v in out.items()} | {
        "load_1m_before": round(load, 2), "load_1m_after": round(os.getloadavg()[0], 2),
        "cpus": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
        "command": "bench/adopt_bench.py --mib " + str(a.mib)}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
