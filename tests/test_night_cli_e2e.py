"""Issue 28 through the real CLI against a real daemon (real uvicorn on loopback, the real
reference job): a run started from [job], two runs queued with `queue add`, [job] edited
between daemon restarts (history unchanged, no resurrection, never past a run's total),
`cancel` mid-run (durable checkpoint, the queue moves on), `logs -f` across the run change,
and `runs`/`events`/`queue`/`logs`/`status` with the daemon stopped."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading

import pytest

from tests.helpers import (
    ROOT,
    free_port,
    kill_group,
    nightshift,
    start_daemon,
    wait_for,
    write_config,
)

SMALL = ["--d-model", "32", "--layers", "1", "--heads", "2", "--ctx", "16", "--batch", "8",
         "--eval-every", "10", "--checkpoint-interval", "10", "--max-steps-per-s", "20"]


@pytest.mark.slow
@pytest.mark.timeout(900)  # four torch job starts and three daemon starts: minutes on a loaded box
def test_a_night_through_the_cli_history_restart_cancel_follow_and_the_morning_after(tmp_path):
    ref = [sys.executable, "-m", "trainer.reference", *SMALL]
    port = free_port()

    def config(steps: str):
        return write_config(tmp_path, {"job": {"command": [*ref, "--steps", steps], "heartbeat_timeout_s": 120.0},
                                       "daemon": {"exit_when_done": False},
                                       "api": {"enabled": True, "port": port}})
    cfg = config("400")
    c = ["-c", str(cfg)]

    def cli(*args: str, code: int = 0) -> str:
        r = nightshift(*args, timeout=120)
        assert r.returncode == code, (args, r.stdout, r.stderr)
        return r.stdout

    def runs() -> list[dict]:
        r = nightshift("runs", *c, "--json", timeout=60)
        return json.loads(r.stdout)["runs"] if r.returncode == 0 else []

    def status() -> dict:
        r = nightshift("status", *c, "--json", timeout=60)
        return json.loads(r.stdout) if r.returncode == 0 else {}

    d = start_daemon(cfg)
    follow = None
    reader = threading.Thread()
    try:
        wait_for(lambda: (status().get("step") or 0) >= 20, 180, interval=0.5, what="run 1 at step 20")
        cli("queue", *c, "add", "--name", "b", "--", *ref, "--steps", "30", "--lr", "1e-3")
        cli("queue", *c, "add", "--name", "c", "--", *ref, "--steps", "30")
        d.send_signal(signal.SIGTERM)
        assert d.wait(timeout=120) == 128 + signal.SIGTERM, d.stdout.read()
        d.stdout.close()
        cfg = config("40")  # [job] edited: a 40-step run now
        d = start_daemon(cfg)
        wait_for(lambda: status().get("state") == "running", 180, interval=0.5, what="run 1 continued")
        first = runs()
        assert first[0]["command"][-2:] == ["--steps", "400"], first[0]  # history unchanged
        said = cli("events", *c, "--kind", "run", "--limit", "50")
        assert "[job] changed since run 1 began" in said and "nightshift run --new" in said, said
        resumed_at = status()["step"]
        assert resumed_at < 400
        wait_for(lambda: (status().get("step") or 0) >= resumed_at + 8, 180, interval=0.5,
                 what="run 1 training again after the restart")
        follow = subprocess.Popen([sys.executable, "-m", "daemon.cli", "logs", "-f", "-n", "1", *c], cwd=ROOT,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                  start_new_session=True)
        out = cli("cancel", *c)
        assert "cancelled" in out.lower() and "after a checkpoint at step" in out, out
        step = int(out.split("after a checkpoint at step ")[1].split()[0].rstrip(";.,"))
        from trainer.format import find_latest_valid
        ck = find_latest_valid(tmp_path / "ckpt" / "run-1")
        assert ck is not None and ck.step == step  # durable before the run ended
        seen: list[str] = []  # read by a thread: a blocking readline would escape wait_for's bound
        reader = threading.Thread(target=lambda: seen.extend(iter(follow.stdout.readline, "")), daemon=True)
        reader.start()
        wait_for(lambda: any("──── run 2 (b:" in line for line in seen), 180, interval=0.2,
                 what="logs -f to move on to run 2")

        def ended():
            rs = runs()
            return rs if len(rs) == 3 and all(r["ended"] for r in rs) else None
        rs = wait_for(ended, 300, interval=1.0, what="runs 2 and 3 to finish")
        assert [(r["name"], r["state"]) for r in rs] == [("job", "cancelled"), ("b", "succeeded"),
                                                          ("c", "succeeded")]
        assert rs[0]["steps"] == step and all(r["steps"] == 30 for r in rs[1:])  # never past the total
        assert rs[1]["changes"] == ["--steps 30 (was 400)", "--lr 1e-3"], rs[1]
        table = cli("runs", *c)  # 80 columns, each run's own changes in full
        assert all(len(line) <= 80 for line in table.splitlines()), table
        assert "--steps 30 (was 400); --lr 1e-3" in " ".join(table.split()), table
        seeds = cli("runs", *c, "--narrow")
        assert all(len(line) <= 40 for line in seeds.splitlines()), seeds
    finally:
        if follow is not None:
            kill_group(follow)
            follow.wait()
            if reader.ident is not None:
                reader.join(10)
            follow.stdout.close()
        d.send_signal(signal.SIGTERM)
        try:
            d.wait(timeout=60)
        finally:
            kill_group(d)
            d.stdout.close()
    # the morning after: the daemon is gone, the night is on disk
    r = nightshift("runs", *c, timeout=60)
    assert r.returncode == 0 and "not running" in r.stderr and "cancelled" in r.stdout, r.stdout + r.stderr
    assert "cancelled" in cli("events", *c, "--kind", "cancelled")
    assert "the queue is empty" in cli("queue", *c)
    assert cli("logs", *c, "-n", "3").strip()
    r = nightshift("status", *c, timeout=60)
    assert r.returncode == 1 and "last known" in r.stdout and "c (run 3)" in r.stdout, r.stdout
