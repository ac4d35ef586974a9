"""The benchmarks' CPU-time reader (bench/procstat.py) and supervise_bench.py's per-step figures,
on real child processes (small Python ones, no torch): CPU seconds from /proc, a command pinned
to one CPU keeping its pid, a sampler that follows a process to its end, and the job's window
read from its own progress records."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from bench.procstat import CpuSampler, cpu_at, cpu_s, pinned
from bench.supervise_bench import undisturbed, window

BURN = "import time\nend = time.process_time() + {s}\nwhile time.process_time() < end: pass"


def test_cpu_s_counts_a_busy_childs_cpu_and_says_when_it_is_gone():
    p = subprocess.Popen([sys.executable, "-c", BURN.format(s=0.5) + "\nimport sys; sys.stdin.read()"],
                         stdin=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while cpu_s(p.pid) < 0.5:
            assert time.monotonic() < deadline, f"the child burned only {cpu_s(p.pid)} s of CPU in 60 s"
            time.sleep(0.05)
        assert cpu_s(p.pid) < 5
    finally:
        p.communicate(b"")
    with pytest.raises(OSError):
        cpu_s(p.pid)


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="one CPU: nothing to pin apart")
def test_a_pinned_command_runs_on_that_cpu_alone_under_its_own_pid():
    cpu = max(os.sched_getaffinity(0))
    out = subprocess.run(pinned([sys.executable, "-c", "import os; print(os.getpid(), sorted(os.sched_getaffinity(0)))"],
                                cpu), capture_output=True, text=True, check=True).stdout
    p = subprocess.Popen(pinned([sys.executable, "-c", "import os; print(os.getpid())"], cpu),
                         stdout=subprocess.PIPE, text=True)
    assert out.split(" ", 1)[1].strip() == f"[{cpu}]"
    assert int(p.communicate()[0]) == p.pid  # exec'd: the job's pid is the one its starter sees
    assert pinned(["x"], None) == ["x"]


def test_the_sampler_follows_a_process_to_its_end():
    p = subprocess.Popen([sys.executable, "-c", BURN.format(s=0.3)])
    sampler = CpuSampler(p.pid, every_s=0.02)
    p.wait()
    samples = sampler.stop()
    assert samples, "no sample taken"
    assert all(b[1] >= a[1] and b[0] >= a[0] for a, b in zip(samples, samples[1:], strict=False))
    assert 0.2 <= samples[-1][1] <= 2.0


def test_cpu_at_interpolates_between_samples_and_clamps_outside():
    s = [(10.0, 1.0), (11.0, 2.0), (13.0, 2.5)]
    assert cpu_at(s, 10.0) == 1.0 and cpu_at(s, 10.5) == 1.5 and cpu_at(s, 11.0) == 2.0
    assert cpu_at(s, 12.0) == 2.25
    assert cpu_at(s, 9.0) == 1.0 and cpu_at(s, 14.0) == 2.5  # before the first, after the last
    assert cpu_at([], 1.0) is None


def test_window_is_the_rate_and_cpu_per_step_of_the_same_records(tmp_path):
    """From the record 10% in (warm-up) to the last one written at a step (the final eval, not
    a checkpoint record, which says when a save of an older step ended); if CPU sampling began
    later, from the first record after it."""
    prog = tmp_path / "progress.jsonl"
    lines = [{"kind": "progress", "step": i, "t": 100.0 + i / 10} for i in range(0, 100, 10)]
    lines.append({"kind": "checkpoint", "step": 50, "t": 110.5})  # a save of step 50, ending late
    lines.append({"kind": "eval", "step": 100, "t": 111.0})  # the last 10 steps took 2 s
    prog.write_text("".join(json.dumps(r) + "\n" for r in lines))
    samples = [(100.0 + k / 10, 0.005 * k) for k in range(0, 120)]  # 50 ms of CPU a second
    rate, per_step = window(prog, samples)
    assert rate == pytest.approx(90 / 10.0)  # steps 10 (t 101) to 100 (t 111)
    assert per_step == pytest.approx(0.5 / 90)
    late = [x for x in samples if x[0] >= 105.0]  # sampling from step 50 on
    rate, per_step = window(prog, late)
    assert rate == pytest.approx(50 / 6.0) and per_step == pytest.approx(0.3 / 50)
    assert window(prog, [])[1] is None


def test_undisturbed_pairs_are_those_whose_jobs_had_their_cpu_on_both_sides():
    """Share = steps/s x CPU s/step: 300 steps/s at 3.3 ms is 99% of the CPU; at 100 steps/s
    the same 3.3 ms is 33%: a neighbour took two thirds of it."""
    pairs = [{"bare": 300.0, "supervised": 297.0, "ratio": 0.99, "bare_cpu_ms_per_step": 3.3,
              "supervised_cpu_ms_per_step": 3.3},
             {"bare": 300.0, "supervised": 100.0, "ratio": 1 / 3, "bare_cpu_ms_per_step": 3.3,
              "supervised_cpu_ms_per_step": 3.3},
             {"bare": 272.8, "supervised": 300.0, "ratio": 1.1, "bare_cpu_ms_per_step": 3.3,  # 0.9002
              "supervised_cpu_ms_per_step": 3.3},
             {"bare": 300.0, "supervised": 300.0, "ratio": 1.0, "bare_cpu_ms_per_step": None,
              "supervised_cpu_ms_per_step": 3.3}]
    got = undisturbed(pairs)
    assert got == {"undisturbed_pairs": 2, "undisturbed_ratio": pytest.approx(1.045),
                   "undisturbed_ratios": [0.99, 1.1]}
    assert pairs[1]["supervised_cpu_share"] == pytest.approx(0.33) and pairs[3]["bare_cpu_share"] is None
