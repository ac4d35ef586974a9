"""`python -m trainer.probe [--device cuda|cpu]`: does the GPU run a tiny kernel? Exit 0 if yes.

The daemon runs this after a GPU reset (daemon.gpu.probe, with a timeout) before restarting the job:
a 780M often refuses compute for a while after a reset, and a job started too early just dies
again. ``cuda`` is ROCm/HIP under a ROCm build of torch.

Under the simulated GPU ($NIGHTSHIFT_SIM_GPU = its root) it asks the simulation instead, without
importing torch (fast): compute is refused while the simulation is resetting.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

N = 1024


def sim_ok(root: str) -> bool:
    """The simulated GPU's answer: daemon.gpu.simgpu.probe if it exists, else its marker file."""
    try:
        from daemon.gpu.simgpu import probe
    except ImportError:
        return not (Path(root) / ".resetting").exists()
    return bool(probe(root))


def run_kernel(device: str) -> tuple[bool, str]:
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        return False, "no GPU visible to torch (torch.cuda.is_available() is False)"
    x = torch.arange(N, dtype=torch.float32, device=device)
    y = float((x * 2).sum().item())  # .item() synchronises: a hung queue shows up here
    ok = y == N * (N - 1)
    return ok, f"probe on {device}: {'ok' if ok else f'wrong result {y}'}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m trainer.probe",
                                 description="Exit 0 if the GPU runs a tiny kernel.")
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    a = ap.parse_args(argv)
    sim = os.environ.get("NIGHTSHIFT_SIM_GPU")
    if sim:
        if not sim_ok(sim):
            print("simulated GPU: still resetting, compute refused")
            return 1
        print("simulated GPU: ok")
        return 0
    try:
        ok, detail = run_kernel(a.device)
    except Exception as e:  # any failure of the device is the answer, not a crash to debug
        ok, detail = False, f"probe on {a.device} failed: {type(e).__name__}: {e}"
    print(detail)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
