"""`nightshift demo`: the whole story on a simulated GPU, under a minute on 2 CPU cores.

The reference job trains under the real daemon; the simulated 780M heats under its load, the
daemon pauses it before the reset temperature (no step lost), it cools and resumes, again and
again; then a GPU reset is injected, the job dies with ROCm's message, the daemon probes the
GPU, resumes from the newest checkpoint and the job finishes. The terminal shows it as it
happens, with the ETA the phone would show, and the summary compares that ETA with the time
the rest actually took.

Same length whatever the load: the job is a tiny model paced to a fixed step rate
(``--max-steps-per-s``) far below what even a starved CPU manages, and the simulated GPU runs
on simulated time, so heating, cooling and the reset take the same wall time on an idle or a
busy machine. What still varies is the job's start-up (interpreter + torch import, twice: at the
start and after the reset), a few seconds. ``--long`` tells the same story over more steps with
two resets. ``--governor`` runs it with ``[thermal] governor = "clock"``: the simulated chip's
clock model (heat ~ cap cubed, step speed ~ cap^0.6, trainer/simhook paces the job by it) lets
the governor learn the clock the chip sustains under pause_at_c and hold it instead of pausing;
the injected reset stays (a governor cannot help firmware hangs); the summary sets its pauses
beside pausing alone on the same chip (daemon/commands/demo_baseline.py). The default story stays the
pause policy's, since the governor is off by default (README "Thermal governor").
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
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, TypedDict

from daemon.commands.demo_baseline import Baseline, pause_only
from daemon.policy.cfgtypes import Config
from daemon.policy.governor import held_line
from daemon.policy.records import GovernorStatus, Status
from daemon.state import config as config_mod
from daemon.state.config import TomlValue
from daemon.web import statusfmt

if TYPE_CHECKING:
    from daemon.core.supervisor import Supervisor  # imported when the demo runs
    from daemon.state.store import EventRow


class Story(TypedDict):
    steps: int
    rate: float  # paced steps/s
    inject_at: tuple[float, ...]  # resets injected at these fractions of the steps


SHORT: Story = {"steps": 250, "rate": 10.0, "inject_at": (0.6,)}
LONG: Story = {"steps": 1500, "rate": 10.0, "inject_at": (0.35, 0.7)}
TINY = ["--d-model", "32", "--layers", "1", "--heads", "2", "--ctx", "32", "--batch", "8",
        "--eval-every", "100", "--threads", "1"]


def demo_config(workdir: Path, steps: int, port: int, rate: float = SHORT["rate"],
                governor: bool = False, governor_chip: bool | None = None) -> Config:
    """``governor_chip`` (default: as ``governor``): the chip of the --governor story; with
    governor off it is the A/B baseline of bench/demo_governor.py (the pause policy alone)."""
    governor_chip = governor if governor_chip is None else governor_chip
    # One real second is a simulated minute: under load the chip would settle at
    # 92 C, so it crosses pause_at_c after ~8 s of training and cools in ~3 s.
    # Heat comes from training (the job's simhook marks the GPU busy each step), and
    # only a little from CPU use (busy_cpu_frac = 4 cores' worth for full load), so
    # a torch import slowed by a busy machine does not heat the chip into an extra
    # pause: the story keeps its length whatever the load.
    simulated: dict[str, TomlValue] = {
        "time_scale": 60.0, "ambient_c": 45.0, "load_c": 47.0, "busy_cpu_frac": 4.0,
        "tau_heat_s": 240.0, "tau_cool_s": 200.0, "reset_at_c": 97.0,
        "reset_after_s": 300.0, "reset_duration_s": 60.0, "seed": 7.0}
    gpu: dict[str, TomlValue] = {"sensor": "simulated", "poll_interval_s": 0.5, "simulated": simulated}
    raw: dict[str, TomlValue] = {
        "job": {"name": "demo", "command": [sys.executable, "-m", "trainer.reference",
                                            "--steps", str(steps), *TINY,
                                            "--max-steps-per-s", str(rate)],
                "checkpoint_dir": "checkpoints", "heartbeat_timeout_s": 60.0},
        "daemon": {"state_dir": "state", "exit_when_done": True, "log_level": "warning"},
        "gpu": gpu,
        "thermal": {"pause_at_c": 88.0, "resume_at_c": 74.0, "tctl_pause_at_c": 95.0,
                    "min_cooldown_s": 3.0, "max_cooldown_s": 60.0,
                    "governor": "clock" if governor else "off"},
        "resets": {"sources": ["auto"], "cooldown_s": 2.0, "probe": True, "probe_timeout_s": 60.0,
                   "window_s": 3600.0, "offload_after": 5},
        "checkpoint": {"interval": 25, "keep": 3},
        "divergence": {"enabled": True, "action": "alert"},
        "api": {"enabled": True, "host": "127.0.0.1", "port": port},
    }
    if governor_chip:
        # The default demo chip heats in 4 s (8 polls per time constant at 0.5 s), to show many
        # pauses in a minute; a governor reads a real chip ~50 times per time constant (tau
        # ~100 s, 2 s polls). Here: tau 10 s read every 0.2 s, and a chip whose full clock
        # would settle at 100 C (sustainable at the 85 C setpoint: ~2430 MHz, 0.94x speed).
        gpu["poll_interval_s"] = 0.2
        simulated.update(tau_heat_s=600.0, tau_cool_s=400.0, load_c=55.0)
    cfg = config_mod.validate(raw, "<demo>")
    config_mod.resolve_paths(cfg, workdir)
    return cfg


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Screen:
    """Prints what happens: each event once, and a status line every two seconds."""

    def __init__(self, daemon: Supervisor, out=sys.stdout):
        self.d = daemon
        self.out = out
        self.seen = 0
        self.t0 = time.monotonic()
        self.ended_at: float | None = None  # elapsed s when the run ended (not the daemon's exit)
        self.last_line = 0.0
        self.etas: list[tuple[float, int, float]] = []  # (elapsed s, step, ETA shown)
        self.injected: list[float] = []  # elapsed s of each reset injected

    def clock(self) -> str:
        s = int(time.monotonic() - self.t0)
        return f"{s // 60:02d}:{s % 60:02d}"

    def line(self) -> str | None:
        st = self.d.face.status()
        if not st:  # before the first tick has published a snapshot
            return None
        t = (st.get("temps") or {}).get("edge_c")
        step = f"{st.get('step') or 0}/{st.get('total_steps') or '?'}"
        temp = f"{t:5.1f}C" if t is not None else "  ?  "
        word = st.get("display_state") or st["state"].upper()
        eta, at_step = st.get("eta_s"), st.get("step")
        if eta is not None and at_step:
            self.etas.append((time.monotonic() - self.t0, at_step, float(eta)))
        eta_txt = statusfmt.eta_text(st) or ""  # the phone's words: "ends about 00:14, in 1m05s"
        w = st.get("waiting")
        if w and w.get("for"):  # what it waits for, as the phone's wait line says it
            about = f", about {statusfmt.duration(w['about_s'])}" if w.get("about_s") is not None else ""
            eta_txt = f"waits for {w['for']}{about}" + (f"; {eta_txt}" if eta_txt else "")
        gov = st.get("governor") or {}  # --governor: the cap in force
        cap = f"  cap {gov['cap_mhz'] or 'none'}" + (" MHz" if gov.get("cap_mhz") else "") if gov else ""
        return f"[{self.clock()}] {word:<10} step {step:<8} edge {temp}{cap}  {eta_txt}"

    def update(self) -> None:
        for ev in reversed(self.d.store.events(None, limit=50)):
            if ev["id"] <= self.seen:
                continue
            self.seen = ev["id"]
            if ev["kind"] == "state" and (ev.get("data") or {}).get("new") == "succeeded":
                self.ended_at = time.monotonic() - self.t0  # what the ETA predicted
            if (ev.get("data") or {}).get("detail"):
                continue  # said by another event already: one line per pause, with its reason
            msg = ev["message"] if ev["kind"] in ("state", "run") else f"{ev['kind']}: {ev['message']}"
            print(f"[{self.clock()}] * {msg}", file=self.out, flush=True)
        if time.monotonic() - self.last_line >= 2.0:
            line = self.line()
            if line is not None:
                self.last_line = time.monotonic()
                print(line, file=self.out, flush=True)


async def _drive(d: Supervisor, screen: Screen, inject_at_steps: list[int]) -> None:
    pending = sorted(inject_at_steps)
    sim = d.p.simgpu
    if sim is None:  # demo_config's [gpu] sensor = "simulated" builds it
        raise RuntimeError("the demo needs the simulated GPU: [gpu] sensor = \"simulated\"")
    while not d.done.is_set():
        screen.update()
        step = d.current.facts.step or 0
        if pending and step >= pending[0] and d.state == "running" and not d.holds:
            pending.pop(0)
            screen.injected.append(time.monotonic() - screen.t0)
            print(f"[{screen.clock()}] >>> injecting a GPU reset (as the 780M's firmware does)",
                  file=screen.out, flush=True)
            sim.inject_reset()
        await asyncio.sleep(0.25)
    screen.update()


async def run_demo(workdir: Path, story: Story, out=sys.stdout, governor: bool = False,
                   governor_chip: bool | None = None) -> tuple[int, Status, Screen]:
    from daemon.core.supervisor import Supervisor
    from daemon.service import app, logs
    from daemon.state.store import Store

    logs.setup("error")  # the screen shows the events; the log would repeat them
    steps = int(story["steps"])
    cfg = demo_config(workdir, steps, _free_port(), float(story["rate"]), governor=governor,
                      governor_chip=governor_chip)
    store = Store(Path(cfg["daemon"]["state_dir"]) / "nightshift.db")
    d = Supervisor(cfg, app.build_parts(cfg, store))
    await d.open()
    screen = Screen(d, out)
    print(f"nightshift demo in {workdir}\n  the phone's view while it runs: curl http://127.0.0.1:"
          f"{cfg['api']['port']}/status\n", file=out, flush=True)
    injects = [int(steps * f) for f in story["inject_at"]]
    drive = asyncio.get_running_loop().create_task(_drive(d, screen, injects))
    try:
        code = await app.run_loop(cfg, d)
    finally:
        d.done.set()
        await drive
    return code, d.face.status(), screen


def eta_check(etas: list[tuple[float, int, float]], end_s: float,
              resets_at: list[float] | None = None) -> list[dict[str, float]]:
    """The ETA shown at a third and at two thirds of the run's wall time, against what the rest
    really took: [{"at_s", "step", "shown_s", "took_s", "error"}] (error = shown/took - 1), and
    with ``resets_at`` (elapsed s of the resets injected) "resets_after": how many came after."""
    out: list[dict[str, float]] = []
    if not etas or end_s <= 0:
        return out
    for frac in (1 / 3, 2 / 3):
        near = min(etas, key=lambda e: abs(e[0] - frac * end_s))
        took = end_s - near[0]
        out.append({"at_s": round(near[0], 1), "step": near[1], "shown_s": round(near[2], 1),
                    "took_s": round(took, 1), "error": round(near[2] / took - 1, 3) if took > 0 else 0.0})
        if resets_at is not None:
            out[-1]["resets_after"] = sum(1 for t in resets_at if t > near[0])
    return out


def eta_check_lines(rows: list[dict[str, float]]) -> list[str]:
    """One line per check; a reset that came after it is said: an ETA expects resets at this
    machine's usual rate (one per hours), not the demo's (one a minute), so each costs it its
    restart, and a bare "-52%" read as the ETA being wrong for no reason."""
    out = []
    for r in rows:
        n = int(r.get("resets_after") or 0)
        after = f"; {n} reset{'s' if n > 1 else ''} came after it, not foreseen" if n else ""
        out.append(f"at {r['at_s']:.0f} s (step {r['step']}): {r['shown_s']:.0f} s shown, "
                   f"{r['took_s']:.0f} s taken ({r['error']:+.0%}{after})")
    return out


def governor_baseline(story: Story) -> Baseline:
    """The --governor story's chip training the same steps at full clock with pausing alone."""
    cfg = demo_config(Path(tempfile.gettempdir()), int(story["steps"]), 1, float(story["rate"]),
                      governor=True)
    return pause_only(cfg["gpu"]["simulated"], cfg["thermal"], story["steps"] / story["rate"],
                      float(cfg["gpu"]["poll_interval_s"]))


def compare_line(gov: GovernorStatus, pauses: int, base: Baseline, steps: int) -> str:
    """The governed run against pausing alone: "0 pauses with the governor; pausing alone ..."."""
    cost = ""
    if speed := gov.get("speed"):  # measured step rate under the cap / at full clock
        cost = f"; the cap cost ~{base.train_s * (1 / speed - 1):.0f} s of training ({speed:.2f}x speed)"
    return (f"{pauses} pause{'' if pauses == 1 else 's'} with the governor; the plain demo's pausing "
            f"alone on this chip: {base.pauses} pause{'' if base.pauses == 1 else 's'}, "
            f"{base.held_s:.0f} s held, for the same {steps} steps (the chip model, the reset aside)"
            f"{cost}")


def governed(gov: GovernorStatus) -> str:
    """The governor over the whole run: the caps it held (time-weighed, the lowest), not the cap
    at the end, when the finished chip has cooled ("governed at 2700 MHz (1.00x clock)" was
    said of a run held at ~2500 MHz)."""
    if gov.get("problem"):
        return gov.get("line") or "governor cannot cap the clock; pausing only"
    words = held_line(gov.get("held_s"), gov.get("held_mean_mhz"), gov.get("held_min_mhz"),
                      gov.get("top_mhz") or 2700)
    if gov.get("held_s") and (speed := gov.get("speed")):
        words += f", {speed:.2f}x speed"
    n = gov.get("pauses") or 0
    return f"{words}; {n} pause{'' if n == 1 else 's'} since it engaged"


def summary(st: Status, wall_s: float, events: list[EventRow],
            etas: list[str] | None = None, baseline: Baseline | None = None) -> str:
    kinds = [e["kind"] for e in events]
    resets = (st.get("resets") or {})
    lines = [
        "",
        "== summary ==",
        f"result:          {st.get('display_state', st.get('state'))} at step {st.get('step')}"
        f"/{st.get('total_steps')}",
        f"wall time:       {wall_s:.0f} s",
        f"thermal pauses:  {kinds.count('paused_hot')}; no step is lost to a pause: the job is "
        "held at a step boundary",
        f"GPU resets:      {resets.get('total', 0)}, each recovered by probing the GPU and "
        "resuming from the newest checkpoint",
        f"steps recomputed after resets: {st.get('steps_lost')}",
        f"final loss:      {st['loss']:.4f}" if st.get("loss") is not None else "final loss: -",
        f"diagnosis:       {(resets.get('diagnosis') or 'n/a').replace(chr(10), ' ')}",
    ]
    lines += [f"{'ETA check:':<17}{e}" for e in etas or []]
    gov = st.get("governor")
    if gov:  # --governor: what it held over the run, and learned
        # a clock is learned once the chip holds the setpoint; a short story may end before
        learned = gov.get("learned_mhz")
        lines.append(f"{'governor:':<17}{governed(gov)}; " + (
            f"learned {learned} MHz (the next night of this job starts there)" if learned else
            "no clock learned: the chip never settled at the setpoint (the next night starts at full clock)"))
        if baseline is not None:
            lines.append(f"{'vs pausing:':<17}" + compare_line(gov, kinds.count("paused_hot"), baseline,
                                                             int(st.get("total_steps") or 0)))
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    story = LONG if getattr(args, "long", False) else SHORT
    keep = bool(args.workdir)
    workdir = Path(args.workdir) if keep else Path(tempfile.mkdtemp(prefix="nightshift-demo-"))
    workdir.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    pause_only = bool(getattr(args, "governor_chip_pause_only", False))  # the bench's A/B baseline
    code, st, screen = asyncio.run(run_demo(workdir, story, governor=bool(getattr(args, "governor", False)),
                                            governor_chip=True if pause_only else None))
    wall = time.monotonic() - t0
    from daemon.state.store import Store
    store = Store(workdir / "state" / "nightshift.db")
    events = store.events(None, limit=10000)
    # against when the run ended (its "succeeded" event), not the daemon's own shutdown after it
    checks = eta_check(screen.etas, screen.ended_at or time.monotonic() - screen.t0, screen.injected)
    base = governor_baseline(story) if st.get("governor") else None
    print(summary(st, wall, events, eta_check_lines(checks), base))
    (workdir / "summary.json").write_text(json.dumps({**st, "wall_s": round(wall, 1), "eta_check": checks,
                                                      "pausing_alone": base and asdict(base)},
                                                     indent=2, default=str))
    store.close()
    if not keep:
        shutil.rmtree(workdir, ignore_errors=True)
    return code
