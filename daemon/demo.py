"""`nightshift demo`: the whole story on a simulated GPU, in a few minutes on 2 CPU cores.

The reference job trains under the real daemon; the simulated 780M heats under its load, the
daemon pauses it before the reset temperature (no step lost), it cools and resumes; then a
GPU reset is injected, the job dies with ROCm's message, the daemon probes the GPU, resumes
from the newest checkpoint and the job finishes. The terminal shows it as it happens.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from daemon import config as config_mod

STEPS_FULL, STEPS_FAST = 900, 300


def demo_config(workdir: Path, steps: int, port: int) -> dict[str, Any]:
    raw = {
        "job": {"name": "demo", "command": [sys.executable, "-m", "trainer.reference",
                                            "--steps", str(steps)],
                "checkpoint_dir": "checkpoints", "heartbeat_timeout_s": 60.0},
        "daemon": {"state_dir": "state", "exit_when_done": True, "log_level": "warning"},
        "gpu": {"sensor": "simulated", "poll_interval_s": 0.5,
                # One real second is a simulated minute: the chip heats in ~15 s of load.
                "simulated": {"time_scale": 60.0, "ambient_c": 45.0, "load_c": 60.0,
                              "tau_heat_s": 240.0, "tau_cool_s": 200.0, "reset_at_c": 97.0,
                              "reset_after_s": 300.0, "reset_duration_s": 60.0, "seed": 7.0}},
        "thermal": {"pause_at_c": 88.0, "resume_at_c": 74.0, "tctl_pause_at_c": 95.0,
                    "min_cooldown_s": 3.0, "max_cooldown_s": 60.0},
        "resets": {"sources": ["auto"], "cooldown_s": 2.0, "probe": True, "probe_timeout_s": 60.0,
                   "window_s": 3600.0, "offload_after": 5},
        "checkpoint": {"interval": 25, "keep": 3},
        "divergence": {"enabled": True, "action": "alert"},
        "api": {"enabled": True, "host": "127.0.0.1", "port": port},
    }
    cfg = config_mod.validate(raw, "<demo>")
    config_mod.resolve_paths(cfg, workdir)
    return cfg


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Screen:
    """Prints what happens: each event once, and a status line every two seconds."""

    def __init__(self, daemon: Any, out=sys.stdout):
        self.d = daemon
        self.out = out
        self.seen = 0
        self.t0 = time.monotonic()
        self.last_line = 0.0

    def clock(self) -> str:
        s = int(time.monotonic() - self.t0)
        return f"{s // 60:02d}:{s % 60:02d}"

    def line(self) -> str:
        st = self.d.status()
        t = st["temps"]["edge_c"]
        step = f"{st['step'] or 0}/{st['total_steps'] or '?'}"
        loss = f"{st['loss']:.3f}" if st["loss"] is not None else "-"
        temp = f"{t:5.1f}C" if t is not None else "  ?  "
        return f"[{self.clock()}] {st['state']:<10} step {step:<9} edge {temp}  loss {loss}"

    def update(self) -> None:
        for ev in reversed(self.d.store.events(None, limit=50)):
            if ev["id"] <= self.seen:
                continue
            self.seen = ev["id"]
            if ev["kind"] in ("state", "run"):
                msg = ev["message"]
            else:
                msg = f"{ev['kind']}: {ev['message']}"
            print(f"[{self.clock()}] * {msg}", file=self.out, flush=True)
        if time.monotonic() - self.last_line >= 2.0:
            self.last_line = time.monotonic()
            print(self.line(), file=self.out, flush=True)


async def _drive(d: Any, screen: Screen, inject_at_step: int) -> None:
    injected = False
    while not d.done.is_set():
        screen.update()
        step = d.facts.step or 0
        sim = d.p.simgpu
        if not injected and step >= inject_at_step and d.state == "running":
            injected = True
            print(f"[{screen.clock()}] >>> injecting a GPU reset (as the 780M's firmware does)",
                  flush=True)
            sim.inject_reset()
        await asyncio.sleep(0.25)
    screen.update()


async def run_demo(workdir: Path, steps: int) -> tuple[int, dict[str, Any]]:
    from daemon import app, logs
    from daemon.store import Store
    from daemon.supervisor import Supervisor

    logs.setup("error")  # the screen shows the events; the log would repeat them
    cfg = demo_config(workdir, steps, _free_port())
    store = Store(Path(cfg["daemon"]["state_dir"]) / "nightshift.db")
    d = Supervisor(cfg, app.build_parts(cfg, store))
    await d.open()
    screen = Screen(d)
    print(f"nightshift demo in {workdir}\n  status while it runs: curl http://127.0.0.1:"
          f"{cfg['api']['port']}/status\n", flush=True)
    drive = asyncio.get_running_loop().create_task(_drive(d, screen, inject_at_step=int(steps * 0.6)))
    code = await app.run_loop(cfg, d)
    await drive
    return code, d.status()


def summary(st: dict[str, Any], wall_s: float, events: list[dict[str, Any]]) -> str:
    kinds = [e["kind"] for e in events]
    lines = [
        "",
        "== summary ==",
        f"result:          {st['state']} at step {st['step']}/{st['total_steps']}",
        f"wall time:       {wall_s:.0f} s",
        f"thermal pauses:  {kinds.count('paused_hot')} (steps lost to pauses: 0 by design: the "
        "job is held at a step boundary)",
        f"GPU resets:      {st['resets']['total']}, recovered by probing the GPU and resuming "
        "from the newest checkpoint",
        f"steps recomputed after resets: {st['steps_lost']}",
        f"final loss:      {st['loss']:.4f}" if st["loss"] is not None else "final loss: -",
        f"diagnosis:       {st['resets']['diagnosis'] or 'n/a'}",
    ]
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    steps = STEPS_FAST if args.fast else STEPS_FULL
    keep = bool(args.workdir)
    workdir = Path(args.workdir) if keep else Path(tempfile.mkdtemp(prefix="nightshift-demo-"))
    workdir.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    code, st = asyncio.run(run_demo(workdir, steps))
    from daemon.store import Store
    store = Store(workdir / "state" / "nightshift.db")
    events = store.events(None, limit=10000)
    print(summary(st, time.monotonic() - t0, events))
    (workdir / "summary.json").write_text(json.dumps(st, indent=2, default=str))
    store.close()
    if not keep:
        shutil.rmtree(workdir, ignore_errors=True)
    return code
