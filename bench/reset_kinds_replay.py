"""How many real-log replays give the wrong counts: every file of tests/data/amdgpu_logs/ (the
real excerpts of public bug threads, with the README's truth) replayed at its kernel timestamps at
polls of 0.5/1/2/5 s and 12 phases each (576 replays), plus N5's double reset stretched to gaps of
0.2-9 s, through whichever `daemon` package is first on PYTHONPATH (issue 26). A detector without
kinds (before issue 26) counts every event as a reset. Usage:
    PYTHONPATH=. python bench/reset_kinds_replay.py
    git worktree add /tmp/before <commit before issue 26> && \\
        PYTHONPATH=/tmp/before python bench/reset_kinds_replay.py
Writes bench/results/reset_kinds.json when run on this tree."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
LOGS = REPO / "tests" / "data" / "amdgpu_logs"
BOOT = 1_700_000_000.0
INTERVALS = [0.5, 1.0, 2.0, 5.0]
PHASES = [i / 12 for i in range(12)]
# file -> (resets, soft recoveries, faults): the README's truth
TRUTH = {"N1_780M_FW16_rocm5180_c6.log": (1, 0, 0), "N2_780M_FW16_rocm5180_c10.log": (1, 0, 0),
         "N4_780M_rocm5180_c14_double.log": (1, 0, 0), "N5_780M_rocm5180_c15_double.log": (1, 0, 0),
         "N7_780M_6018_74159.log": (1, 0, 0), "N8_navi33_steamos2802_dmesgT.log": (1, 0, 0),
         "N9_gfx9_dxvk4750_ringfailure.log": (1, 0, 0),
         "N12_gfx1201_therock2591_softrecovered.log": (0, 1, 0),
         "N14_gfx1150_therock1271_pagefault.log": (0, 0, 1), "B2_dgpu_amdgpu174_s3_ok.log": (0, 0, 0),
         "P1_dgpu_nixos223690_suspend_mode1.log": (1, 0, 0),
         "C1_composite_P1_with_entry.log": (0, 0, 0)}

spec = importlib.util.spec_from_file_location("kerneltime_fixture",
                                              REPO / "daemon" / "gpu" / "resets" / "kerneltime.py")
kt = importlib.util.module_from_spec(spec)
sys.modules["kerneltime_fixture"] = kt
spec.loader.exec_module(kt)

from daemon.gpu.resets import ResetDetector  # noqa: E402  (the tree under test)


class Clock:
    def __init__(self, t):
        self.t = t

    def __call__(self):
        return self.t


def timed(lines):
    out = []
    for line in lines:
        st = kt.parse_stamp(line, 0.0)
        out.append((BOOT + st.value if st.kind == "mono" else st.value, line))
    return out


def replay(tmp, lines, interval, phase):
    log = Path(tmp) / "kern.log"
    log.write_text("")
    pending = sorted(lines, key=lambda x: x[0])
    clock = Clock(pending[0][0] - 1.0 + phase * interval)
    det = ResetDetector({"sources": ["kmsg", "sensor", "job"]}, kernel_log=str(log), clock=clock,
                        boot_time=BOOT)
    out = []
    end = pending[-1][0] + 160.0
    while clock.t <= end:
        with open(log, "a") as f:
            while pending and pending[0][0] <= clock.t:
                f.write(pending.pop(0)[1] + "\n")
        out += det.poll()
        clock.t += interval
    latest = {getattr(e, "id", 0) or id(e): e for e in out}
    kinds = [getattr(e, "kind", "reset") for e in latest.values()]
    return kinds.count("reset"), kinds.count("soft_recovery"), kinds.count("fault")


def main():
    result = {"files": {}, "gaps": {}}
    wrong_total = n_total = 0
    with tempfile.TemporaryDirectory() as tmp:
        for name, truth in TRUTH.items():
            lines = timed((LOGS / name).read_text().splitlines())
            wrong = [f"{i}s/{p:.2f}: {got}" for i in INTERVALS for p in PHASES
                     if (got := replay(tmp, lines, i, p)) != truth]
            n = len(INTERVALS) * len(PHASES)
            result["files"][name] = {"replays": n, "wrong": len(wrong), "examples": wrong[:3]}
            wrong_total += len(wrong)
            n_total += n
        lines = timed((LOGS / "N5_780M_rocm5180_c15_double.log").read_text().splitlines())
        split = next(i for i, (_, line) in enumerate(lines) if "msg=REMOVE_QUEUE" in line)
        first, second = lines[:split], lines[split:]
        for gap in (0.2, 3.1, 5.5, 8.6, 9.0):
            dt = first[-1][0] + gap - second[0][0]
            moved = [(t + dt, re.sub(r"^\[\s*[\d.]+\]", f"[{t + dt - BOOT:12.6f}]", line))
                     for t, line in second]
            counts = [replay(tmp, first + moved, i, p)[0] for i in INTERVALS for p in PHASES[::3]]
            result["gaps"][str(gap)] = {"replays": len(counts),
                                        "counted_twice": sum(c == 2 for c in counts),
                                        "counted_once": sum(c == 1 for c in counts)}
    result["summary"] = f"{wrong_total} of {n_total} file replays wrong"
    print(json.dumps(result, indent=1))
    if Path(sys.modules["daemon"].__file__).resolve().parent.parent == REPO:
        (REPO / "bench" / "results" / "reset_kinds.json").write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
