"""Issue 18's benchmarks still run: each script as a subprocess at a tiny size, its JSON checked
for the keys the README quotes and for finite, positive values. No speed is asserted.

bench/api_bench.py is not run here: it starts the real daemon and waits for the reference job
to train (about 10 s on this box before the first window), then needs windows of a few seconds
each so that every window holds at least two progress records (with --window 1 a window can
hold fewer and rate() divides by zero). That is 15 s or more, not a smoke test's few seconds.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _run(*args: str) -> None:
    r = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]


def _ratio(res: dict, key: str, pairs: int) -> None:
    r = res[key]
    assert all(math.isfinite(r[k]) and r[k] > 0 for k in ("median", "min", "max")), (key, r)
    assert r["min"] <= r["median"] <= r["max"], (key, r)
    got = res["per_pair"]["ratios"][key]
    assert len(got) == pairs and min(got) == r["min"] and max(got) == r["max"], (key, got)


def _load(x: list) -> None:
    assert len(x) == 3 and all(math.isfinite(v) and v >= 0 for v in x), x


@pytest.mark.slow
def test_checkpoint_bench_runs_and_keeps_per_pair_values(tmp_path):
    out = tmp_path / "checkpoint.json"
    # one 2048x2048 linear (4.2M parameters, 50 MB with AdamW state), one pair
    _run("bench/checkpoint_bench.py", "--params", "4e6", "--pairs", "1", "--batch", "4",
         "--dir", str(tmp_path), "--out", str(out))
    res = json.loads(out.read_text())
    assert res["pairs"] == 1 and res["params"] > 0 and res["bytes"] > 0
    for key in ("persist_vs_raw", "persist_vs_torch_save", "restore_warm_vs_torch_load",
                "restore_cold_vs_torch_load", "restore_warm_vs_safetensors", "restore_cold_vs_safetensors",
                "restore_then_first_step_vs_torch_load", "restore_fresh_process_vs_torch_load",
                "restore_fresh_process_then_first_step_vs_torch_load", "stall_ratio"):
        _ratio(res, key, 1)
    assert all(math.isfinite(v) for v in res["loop_extra_vs_sync"].values())  # may be < 0
    assert all(math.isfinite(v) and v > 0 for v in res["persist_GBps"].values())
    assert res["largest_group_bytes"] > 0 and math.isfinite(res["peak_extra_vs_largest_group"])
    assert res["peak_extra_bytes"] >= 0
    for k in ("persist", "restore", "restore_above_before", "torch_load_above_before"):
        assert res["peak_extra_bytes_by_phase"][k] >= 0
    assert res["peak_extra_bytes_by_phase"]["restore_above_before"] >= res["peak_extra_bytes_by_phase"]["restore"]
    assert len(res["per_pair"]["seconds"]["fence_wait"]) == 1
    for k, summ in res["seconds"].items():  # a fence wait may be 0: the copy finished in time
        assert all(math.isfinite(x) and (x > 0 or k == "fence_wait") for x in summ.values()), (k, summ)
    assert res["stall_verdict"] in ("met", "MISS")
    _load(res["run"]["load_average_before"])
    _load(res["run"]["load_average_after"])
    assert res["run"]["command"].startswith("bench/checkpoint_bench.py --params 4e6")


@pytest.mark.slow
def test_checkpoint_bench_stall_only_does_not_merge_into_an_older_file(tmp_path):
    out = tmp_path / "checkpoint.json"
    out.write_text(json.dumps({"persist_vs_raw": {"median": 9.0}, "seconds": {"stall": {}}}))
    _run("bench/checkpoint_bench.py", "--params", "4e6", "--pairs", "2", "--batch", "4", "--only", "stall",
         "--dir", str(tmp_path), "--out", str(out))
    res = json.loads(out.read_text())
    assert "persist_vs_raw" not in res and "seconds" not in res  # nothing left from the older file
    _ratio(res, "stall_ratio", 2)
    assert len(res["per_pair"]["seconds"]["fence_wait"]) == 2
    assert res["run"]["command"] == res["stall_command"]
    _load(res["run"]["load_average_before"])


@pytest.mark.slow  # a real uvicorn under a load generator for tens of seconds
def test_api_cost_split_runs(tmp_path):
    out = tmp_path / "split.json"
    # 200 requests per variant: ~0.1 CPU-s, several ticks of the CPU clock, so no variant reads 0
    _run("bench/api_cost_split.py", "--requests", "200", "--rounds", "1", "--out", str(out))
    res = json.loads(out.read_text())
    assert res["requests_per_round"] == 200 and res["status_json_bytes"] > 0
    for v in ("floor", "fast", "routed", "uncached"):
        m = res["cpu_ms_per_request"][v]
        assert all(math.isfinite(x) and x > 0 for x in m.values()), (v, m)
    _load(res["load_average"])
