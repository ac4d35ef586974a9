"""How often one real reset is counted twice: the replays of tests/test_resets_replay.py (same
fixtures, poll intervals, 5 phases, same replay loop) run against whichever `daemon` package is
first on PYTHONPATH, so an older checkout can be measured with today's fixtures (README, "Measured
figures"). Usage, for the tree before the kernel-time grouping (7f1f1c7):
    git worktree add /tmp/before 7f1f1c7^
    PYTHONPATH=/tmp/before python bench/reset_replay_rates.py
    PYTHONPATH=. python bench/reset_replay_rates.py
    git worktree remove /tmp/before"""

from __future__ import annotations

import importlib.util
import inspect
import json
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
LOGS = REPO / "tests" / "fixtures" / "kernel_logs"
BOOT = 1_700_000_000.0
HW_EXCEPTION = "HW Exception by GPU node-1 (Agent handle: 0x5581e2c4a0f0) reason :GPU Hang\nAborted"
SEQUENCES = ["kfd_reset_7840u_journal.log", "mes1_respond_6_13.log", "mes_hang_780m_6_15.log",
             "mes_hang_780m_6_8.log", "mes_response_msg3_6_5.log", "ring_reset_escalates_6_12.log"]
INTERVALS = [0.5, 1.0, 2.0, 5.0]
PHASES = [0.0, 0.13, 0.37, 0.71, 0.93]

# the fixtures' kernel times come from this repo's parser (fixture timing only, not the detector)
spec = importlib.util.spec_from_file_location("kerneltime_fixture", REPO / "daemon" / "gpu" / "resets" / "kerneltime.py")
kt = importlib.util.module_from_spec(spec)
sys.modules["kerneltime_fixture"] = kt
spec.loader.exec_module(kt)

from daemon.gpu.resets import ResetDetector  # noqa: E402  (the tree under test)

NEW_API = "boot_time" in inspect.signature(ResetDetector.__init__).parameters


class Clock:
    def __init__(self, t):
        self.t = t

    def __call__(self):
        return self.t


def timed_lines(name):
    out = []
    for line in (LOGS / name).read_text().splitlines():
        st = kt.parse_stamp(line, 0.0)
        out.append((BOOT + st.value if st.kind == "mono" else st.value, line))
    return out


def replay(tmp, lines, interval, phase, job=None):
    log = Path(tmp) / "kern.log"
    log.write_text("")
    pending = sorted(lines, key=lambda x: x[0])
    clock = Clock(pending[0][0] - 1.0 + phase * interval)
    kw = {"boot_time": BOOT} if NEW_API else {}
    det = ResetDetector({"sources": ["kmsg", "sensor", "job"]}, kernel_log=str(log), clock=clock, **kw)
    events = []
    t_end = lines[-1][0] + 40
    while clock.t <= t_end:
        with open(log, "a") as f:
            while pending and pending[0][0] <= clock.t:
                f.write(pending.pop(0)[1] + "\n")
        if job is not None and job[0] <= clock.t:
            det.note_job_exit(job[1], clock.t)
            job = None
        events += det.poll()
        clock.t += interval
    return len(events)


def main():
    import daemon
    out = {"tree": str(Path(daemon.__file__).parent.parent), "per_interval": {}, "job_message": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for interval in INTERVALS:
            counts = [replay(tmp, timed_lines(n), interval, p) for n in SEQUENCES for p in PHASES]
            out["per_interval"][interval] = {
                "replays": len(counts), "twice": sum(c > 1 for c in counts),
                "missed": sum(c == 0 for c in counts),
                "twice_pct": round(100 * sum(c > 1 for c in counts) / len(counts)),
                "missed_pct": round(100 * sum(c == 0 for c in counts) / len(counts))}
            lines = timed_lines("kfd_reset_7840u_journal.log")
            jc = [replay(tmp, lines, interval, p, job=(lines[0][0] + 5.0, HW_EXCEPTION)) for p in PHASES]
            out["job_message"][interval] = {"replays": len(jc), "twice": sum(c > 1 for c in jc)}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
