"""`python -m trainer.probe [--device cuda|cpu]`: does the GPU run a tiny kernel? Exit 0 if yes.

Under the simulated GPU ($NIGHTSHIFT_SIM_GPU) it asks the simulation instead: the device fails
while it is resetting, like a 780M that refuses compute after a reset.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m trainer.probe")
    ap.add_argument("--device", default="cuda")
    a = ap.parse_args(argv)
    sim = os.environ.get("NIGHTSHIFT_SIM_GPU")
    if sim:
        if (Path(sim) / ".resetting").exists() or (Path(sim) / "dead").exists():
            print("simulated GPU: still resetting, compute refused")
            return 1
        print("simulated GPU: ok")
        return 0
    import torch

    if a.device == "cuda" and not torch.cuda.is_available():
        print("no GPU visible to torch")
        return 1
    x = torch.arange(1024, dtype=torch.float32, device=a.device)
    y = float((x * 2).sum().item())
    if a.device == "cuda":
        torch.cuda.synchronize()
    ok = y == 1024 * 1023
    print(f"probe on {a.device}: {'ok' if ok else 'wrong result'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
