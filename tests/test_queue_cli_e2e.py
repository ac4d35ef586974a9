"""Issue 16 through the real CLI against a live daemon (real uvicorn on a loopback port, real
child processes): `nightshift queue add --name --env K=V -- cmd`, `nightshift queue`,
`queue move`, `queue remove`, `nightshift runs` (table and --json), and the run-end
notification (a real webhook on loopback) carrying the run's fingerprint line."""

from __future__ import annotations

import http.server
import json
import sys
import threading

import pytest

from tests.helpers import (
    api_answers,
    free_port,
    kill_group,
    nightshift,
    start_daemon,
    wait_for,
    write_config,
)

# A script job (no torch: fast) whose nanoGPT-style lines give the daemon its losses. BUMP=1
# makes the loss climb after the middle; a gate file holds the first run open while the test
# edits the queue.
JOB = """
import os, sys, time
n, gate = int(sys.argv[1]), (sys.argv[2] if len(sys.argv) > 2 else "")
bump = float(os.environ.get("BUMP", "0"))
for i in range(n):
    loss = 3.0 - i * 0.02 + (bump * (i - n // 2) * 0.1 if i > n // 2 else 0.0)
    print(f"iter {i}: loss {loss:.4f}, time 5.00ms, mfu 1.00%", flush=True)
    time.sleep(0.02)
while gate and not os.path.exists(gate):
    time.sleep(0.05)
"""


class Hook(http.server.BaseHTTPRequestHandler):
    got: list[dict] = []

    def do_POST(self):  # noqa: N802 - the http.server name
        Hook.got.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *a):
        pass


@pytest.mark.slow
def test_queue_and_runs_cli_against_a_live_daemon_and_the_fingerprint_notification(tmp_path):
    Hook.got = []
    hook = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=hook.serve_forever, daemon=True).start()
    job, gate = tmp_path / "job.py", tmp_path / "gate"
    job.write_text(JOB)
    py = [sys.executable, str(job)]
    port = free_port()
    cfg = write_config(tmp_path, {
        "job": {"command": [*py, "40", str(gate)], "progress_pattern": "nanogpt", "total_steps": 40,
                "heartbeat_timeout_s": 120.0},
        "divergence": {"enabled": False}, "daemon": {"exit_when_done": False},
        "notify": {"webhook_url": f"http://127.0.0.1:{hook.server_port}/hook", "min_interval_s": 0.0,
                   "events": ["finished", "failed"]},
        "api": {"enabled": True, "port": port}})
    c = ["-c", str(cfg)]

    def cli(*args: str, code: int = 0) -> str:
        r = nightshift(*args, *c, timeout=60) if args[0] != "queue" or len(args) == 1 or args[1] != "add" \
            else nightshift(args[0], *c, *args[1:], timeout=60)
        assert r.returncode == code, (args, r.stdout, r.stderr)
        return r.stdout + r.stderr

    d = start_daemon(cfg)
    try:
        # Not `nightshift queue`: it reads the queue from disk with no daemon, before the token exists.
        wait_for(lambda: api_answers(port), 60, interval=0.3, what="the daemon's API")
        assert "the queue is empty" in cli("queue")
        assert "queued 'climb' as #1, position 1" in cli("queue", "add", "--name", "climb", "--env", "BUMP=1",
                                                         "--", *py, "40")
        assert "#2" in cli("queue", "add", "--name", "extra", "--", *py, "40")
        assert "#3" in cli("queue", "add", "--name", "third", "--env", "A=1", "--env", "B=x=y", "--", *py, "30")
        narrow = cli("queue").splitlines()  # 80 columns: the common start once, each entry's own words
        assert narrow[0] == "every command starts:" and narrow[2].strip() == str(job), narrow
        # 80 columns, but one word longer than that (the job's path under pytest's tmp dir with
        # an xdist worker's name in it) is shown whole on its own line, never cut
        assert narrow[3].split() == ["#", "POS", "NAME", "ARGUMENTS"] and \
            all(len(x) <= 80 or " " not in x.strip() for x in narrow), narrow
        assert narrow[4].split()[2:] == ["climb", "40", "env:", "BUMP"], narrow
        table = cli("queue", "--wide").splitlines()
        assert table[0].split() == ["#", "POS", "NAME", "COMMAND", "ENV"]
        assert [r.split()[2] for r in table[1:]] == ["climb", "extra", "third"]
        # env values may be secrets: the queue names the keys, the values are redacted
        assert table[1].rstrip().endswith("BUMP=<redacted>") and "A=<redacted> B=<redacted>" in table[3]
        assert "#3 is now number 1" in cli("queue", "move", "3", "1")
        assert "removed #2" in cli("queue", "remove", "2")
        assert [r.split()[2] for r in cli("queue", "--wide").splitlines()[1:]] == ["third", "climb"]
        assert "no waiting run #2" in cli("queue", "remove", "2", code=1)
        assert "is not K=V" in cli("queue", "add", "--env", "NOPE", "--", "x", code=2)
        assert "give the command after --" in cli("queue", "add", "--name", "x", code=2)
        gate.touch()  # the first run ends; the queue runs: third, then climb

        def all_done():
            r = nightshift("runs", *c, "--json", "--against", "2", timeout=30)
            runs = json.loads(r.stdout)["runs"] if r.returncode == 0 else []
            return runs if len(runs) == 3 and all(x["ended"] for x in runs) else None
        runs = wait_for(all_done, 120, interval=0.5, what="the queue to run")
        wait_for(lambda: len(Hook.got) >= 3, 30, what="three run-end notifications")
        text = cli("runs", "--against", "2", "--wide").splitlines()
        narrow = cli("runs", "--against", "2").splitlines()
    finally:
        kill_group(d)
        hook.shutdown()
    want = {"id", "name", "state", "command", "changes", "steps", "best_loss", "best_step", "climb_step",
            "final_loss", "backend", "cost_usd", "started", "ended", "total_steps", "workdir", "config_hash",
            "changes_against", "curve"}
    assert all(set(r) == want for r in runs)
    assert [r["name"] for r in runs][1:] == ["third", "climb"] and all(r["state"] == "succeeded" for r in runs)
    third, climb = runs[1], runs[2]
    # what differs from run 2 (`runs --against 2`: third, the queue's first after the move)
    # (env values may be shown redacted: the names say what changed)
    assert third["changes"] == [] and climb["changes"][0] == "40 (was 30)"
    assert sorted(c.split("=")[0] for c in climb["changes"][1:]) == ["BUMP", "without A", "without B"]
    assert climb["climb_step"] is not None and 20 <= climb["climb_step"] <= 30
    assert third["climb_step"] is None and third["best_step"] >= 25
    assert text[0].split()[:4] == ["ID", "NAME", "STATE", "STEPS"]
    assert all(len(x) <= 80 or " " not in x.strip() for x in narrow), narrow  # a long path: whole
    assert narrow[0].startswith("changes against run 2 (third)") and narrow[3].split()[:3] == ["ID", "NAME", "STATE"]
    assert "40 (was 30)" in "\n".join(narrow) and "the baseline" in "\n".join(narrow)
    assert all(0 < len(r["curve"]) <= 200 for r in runs)
    assert "climb" in text[3] and "BUMP=" in text[3] and "no climb" in text[2] and text[2].rstrip().endswith("-")
    msgs = {m["message"].split(" (")[0]: m for m in Hook.got}
    assert all(m["kind"] == "finished" for m in Hook.got)
    for r in runs:
        [m] = [m["message"] for m in Hook.got if m["message"].startswith(f"run {r['id']} ")]
        assert f"best loss {r['best_loss']:.4g} at step {r['best_step']}" in m, m
        assert ("no climb" in m) == (r["climb_step"] is None)
        if r["climb_step"] is not None:
            assert f"climb from step {r['climb_step']}" in m
    assert msgs
