"""An in-process harness in the style of honcho's scripted histories: a fake clock, a scripted
fake process factory, fake sensors, reset sources and offload backend, driving the REAL
Supervisor (with the real JobRunner, JobControl, ProgressTail, store and pure policies) tick by
tick in milliseconds.

Only what this machine lacks or what would take real time is faked: the job process (a script
of output lines, progress records and an exit, or a cooperative trainer that reads the real
control.json), the GPU's sensor and reset sources, the cloud. Files are real (progress.jsonl,
control.json, the SQLite store, checkpoint directories).
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from daemon.cloud.offload.base import RemoteStatus, UploadResult
from daemon.cloud.offloader import Offloader
from daemon.core.supervisor import Parts, Supervisor
from daemon.job.jobrunner import JobRunner
from daemon.state import config as config_mod
from daemon.state.store import Store


class FakeClock:
    """Both of the daemon's clocks: ``t`` the wall clock, ``mono`` the monotonic one. They
    start far apart (as on a real machine), so code that mixes them fails loudly; ``step``
    moves the wall clock alone, as NTP or an RTC in local time does."""

    def __init__(self, t: float | None = None, mono: float = 5000.0):
        self.t = time.time() if t is None else t  # near real time: file mtimes stay comparable
        self.mono = mono

    def __call__(self) -> float:
        return self.t

    def monotonic(self) -> float:
        return self.mono

    def advance(self, dt: float) -> None:
        """Time passes: both clocks move."""
        self.t += dt
        self.mono += dt

    def step(self, dt: float) -> None:
        """The wall clock is set (``date -s``, NTP at boot): the monotonic one does not move."""
        self.t += dt


@dataclass
class Behaviour:
    """What a fake job does. ``script``: (at_s, action, arg) with actions line|record|exit|
    touch (write a file in the workdir, like nanoGPT's ckpt.pt). ``trainer``: act like a
    trainer/ job: start record with protocol, one step per ``step_s``, a checkpoint every
    ``interval`` steps, obeying control.json (hold, checkpoint, exit) like trainer/runtime."""
    script: list[tuple[float, str, Any]] = field(default_factory=list)
    trainer: bool = False
    steps: int = 100
    step_s: float = 1.0
    interval: int = 10
    cpu_per_s: float = 1.0  # CPU seconds per second while running (0: a hung GPU kernel)
    ignores_term: bool = False
    silent: bool = False  # a trainer that writes no progress records (hung in a kernel)
    slow_start: float = 0.0  # seconds before a trainer announces the protocol (importing torch)
    exit_takes_s: float = 0.0  # a trainer's final checkpoint on the exit command takes this long


class FakeProc:
    _next_pid = 50000

    def __init__(self, behaviour: Behaviour, command: list[str], *, cwd: str, env: dict[str, str],
                 log_path: Path, on_line, clock: FakeClock, **_: Any):
        self.b, self.command, self.cwd, self.env, self.on_line, self.clock = behaviour, command, cwd, env, on_line, clock
        FakeProc._next_pid += 1
        self.pid = FakeProc._next_pid
        self.create_time: float | None = None
        self.started_at: float | None = None
        self.returncode: int | None = None
        self.stopped_by_signal = False
        self._exited = asyncio.Event()
        self.tail: list[str] = []
        self.cpu = 0.0
        self.step = 0
        self.held = False
        self.acked = 0
        self.run_dir = Path(env["NIGHTSHIFT_RUN_DIR"])
        self.ckpt_dir = Path(env["NIGHTSHIFT_CHECKPOINT_DIR"])
        self._last = self._t0 = 0.0
        self._next_step_at = 0.0
        self._done_script = 0
        self.term_at: float | None = None
        self.started_protocol = False
        self.signals: list[tuple[int, float]] = []  # (signal, monotonic time) as received
        self.exit_at: float | None = None  # the exit command is being carried out until then

    async def start(self) -> None:
        # started_at and record times are wall clock (as jobproc's and the trainer's); the job's
        # own pace is real elapsed time (monotonic), so a wall-clock step does not stall it
        self.started_at = self.create_time = self.clock()
        self._t0 = self._last = self.clock.monotonic()
        self._next_step_at = self._t0 + self.b.step_s
        if self.b.trainer and not self.b.slow_start:
            self.announce()

    def announce(self) -> None:
        """The start record: from now on the job has its SIGUSR1 handler (trainer/runtime)."""
        if self.b.trainer:
            self.started_protocol = True
            resume = self.env.get("NIGHTSHIFT_RESUME") or ""
            self.step = int(Path(resume).name.split("_")[-1]) if resume else 0
            self.record("start", step=self.step, resumed_from=resume or None, protocol=2,
                        pid=self.pid, total_steps=self.b.steps)
            self._obey()

    async def wait(self) -> int:
        await self._exited.wait()
        assert self.returncode is not None
        return self.returncode

    def output_tail(self, lines: int | None = None) -> str:
        return "\n".join(self.tail[-(lines or 400):])

    # the boundary: signals
    def signal(self, sig: int) -> bool:
        if self.returncode is not None:
            return False
        self.signals.append((sig, self.clock.monotonic()))
        if sig == signal.SIGKILL or (sig == signal.SIGTERM and not self.b.ignores_term):
            self.exit(-sig)
        return True

    def hold(self) -> None:
        self.stopped_by_signal = True

    def wake(self) -> None:
        """SIGUSR1: a trainer whose handler is not installed yet (no start record) dies of it."""
        self.wakes = getattr(self, "wakes", 0) + 1
        if self.returncode is None and not self.started_protocol:
            self.exit(-signal.SIGUSR1)

    def cpu_time(self) -> float:
        return self.cpu

    def release(self) -> None:
        self.stopped_by_signal = False

    # behaviour
    def line(self, text: str) -> None:
        self.tail.append(text)
        self.on_line(text)

    def record(self, kind: str, **fields: Any) -> None:
        with open(self.run_dir / "progress.jsonl", "a") as f:
            f.write(json.dumps({"t": self.clock(), "kind": kind, **fields}) + "\n")

    def exit(self, rc: int) -> None:
        if self.returncode is None:
            self.returncode = rc
            self._exited.set()

    def checkpoint(self) -> None:
        d = self.ckpt_dir / f"step_{self.step:09d}"
        write_checkpoint(d, self.step)
        self.record("checkpoint", step=self.step, path=str(d), bytes=10, stall_s=0.01, persist_s=0.02)

    def _control(self) -> dict[str, Any]:
        try:
            return json.loads((self.run_dir / "control.json").read_text())
        except (OSError, ValueError):
            return {}

    def _obey(self) -> None:
        c = self._control()
        for cmd in sorted(c.get("commands", []), key=lambda x: x["seq"]):
            if cmd["seq"] <= self.acked:
                continue
            self.acked = cmd["seq"]
            self.record("control_ack", seq=cmd["seq"], command=cmd["command"], step=self.step)
            if cmd["command"] == "checkpoint":
                self.checkpoint()
            elif cmd["command"] == "exit":
                if self.b.exit_takes_s:  # writing the final checkpoint: no more steps
                    self.exit_at = self.clock.monotonic() + self.b.exit_takes_s
                    return
                self.finish_exit()
                return
        hold = c.get("hold") is True
        if hold and not self.held:
            self.checkpoint()
            self.record("held", step=self.step, checkpoint=str(self.ckpt_dir / f"step_{self.step:09d}"))
        elif self.held and not hold:
            self.record("released", step=self.step)
        self.held = hold

    def finish_exit(self) -> None:
        self.checkpoint()
        self.record("exiting", step=self.step, reason="exit-command")
        self.exit(0)

    def advance(self, now: float) -> None:
        """``now``: the monotonic clock."""
        if self.returncode is not None or self.stopped_by_signal:
            self._last = now
            return
        if self.exit_at is not None:
            if now >= self.exit_at:
                self.finish_exit()
            return
        if not self.held:
            self.cpu += (now - self._last) * self.b.cpu_per_s
        self._last = now
        t = now - self._t0
        while self._done_script < len(self.b.script) and self.b.script[self._done_script][0] <= t:
            _, action, arg = self.b.script[self._done_script]
            self._done_script += 1
            if action == "line":
                self.line(arg)
            elif action == "record":
                self.record(**arg)
            elif action == "touch":
                p = Path(self.cwd) / arg
                p.parent.mkdir(parents=True, exist_ok=True)
                p.write_text(f"saved at {t}")
            elif action == "exit":
                self.exit(arg)
                return
        if not self.b.trainer:
            return
        if not self.started_protocol:
            if t < self.b.slow_start:
                return
            self.announce()
            self._next_step_at = now + self.b.step_s
        self._obey()
        while self.returncode is None and not self.held and now >= self._next_step_at:
            self._next_step_at += self.b.step_s
            self.step += 1
            if not self.b.silent:
                self.record("progress", step=self.step, total_steps=self.b.steps, loss=2.0 / self.step,
                            steps_per_s=1.0 / self.b.step_s)
            if self.step % self.b.interval == 0 or self.step == self.b.steps:
                self.checkpoint()
            if self.step >= self.b.steps:
                self.record("done", step=self.step, checkpoint=str(self.ckpt_dir / f"step_{self.step:09d}"))
                self.exit(0)
                return
            self._obey()


def write_checkpoint(d: Path, step: int) -> None:
    """A tiny checkpoint that trainer.format.verify accepts (sizes and digests in meta.json),
    the same bytes for the same step wherever it is written, plus the ``ok`` marker
    find_fake_checkpoint looks for."""
    from trainer.format import DIGEST, chunk_digests, digest_kind
    d.mkdir(parents=True, exist_ok=True)
    data = (f"weights at step {step}\n" * 4).encode()
    fn = digest_kind({DIGEST: []})[1]
    meta = {"step": step, "format": 2, "files": {"weights.bin": {"size": len(data), "chunk": 1 << 23,
                                                                 DIGEST: chunk_digests(data, 1 << 23, fn=fn)}}}
    (d / "weights.bin").write_bytes(data)
    (d / "meta.json").write_text(json.dumps(meta, sort_keys=True))
    (d / "ok").write_text(str(step))


class FakeFactory:
    """spawn(): a FakeProc whose behaviour is chosen by the command's first word."""

    def __init__(self, clock: FakeClock, behaviours: dict[str, Behaviour]):
        self.clock = clock
        self.behaviours = behaviours
        self.procs: list[FakeProc] = []

    def spawn(self, command: list[str], **kw: Any) -> FakeProc:
        p = FakeProc(self.behaviours[command[0]], command, clock=self.clock, **kw)
        self.procs.append(p)
        return p

    def advance(self, now: float) -> None:
        for p in self.procs:
            p.advance(now)


def find_fake_checkpoint(ckpt_dir: str) -> Any:
    found = sorted(Path(ckpt_dir).glob("step_*/ok"))
    return SimpleNamespace(path=found[-1].parent, step=int(found[-1].read_text())) if found else None


@dataclass
class Reading:
    t: float
    edge_c: float | None = 50.0
    tctl_c: float | None = 60.0
    power_w: float | None = 20.0
    busy_pct: float | None = 90.0
    resetting: bool = False
    source: str = "fake"


class FakeSensor:
    def __init__(self, clock: FakeClock):
        self.clock = clock
        self.edge_c: float | None = 50.0
        self.fail = False

    def read(self) -> Reading:
        if self.fail:
            raise RuntimeError("sensor exploded")
        return Reading(t=self.clock(), edge_c=self.edge_c,
                       tctl_c=None if self.edge_c is None else self.edge_c + 5)


class FakeDetector:
    """Reset sources at their boundary: the test pushes ResetEvents."""

    def __init__(self):
        self.events: list[Any] = []

    def poll(self) -> list[Any]:
        out, self.events = self.events, []
        return out

    def problems(self) -> list[str]:
        return []

    def pending_t(self) -> float | None:
        return None

    def note_sensor(self, reading: Any) -> None:
        pass

    def note_job_exit(self, tail: str, t: float) -> None:
        pass

    def close(self) -> None:
        pass


def config(tmp: Path, **sections: dict[str, Any]) -> dict[str, Any]:
    """The repo's defaults (API settings included) with the job and paths of this test."""
    raw: dict[str, Any] = {"job": {"command": ["trainer"], "workdir": str(tmp)},
                           "daemon": {"state_dir": str(tmp / "state")}}
    for sec, body in sections.items():
        raw.setdefault(sec, {}).update(body)
    cfg = config_mod.validate(raw, "<harness>")
    config_mod.resolve_paths(cfg, tmp)
    return cfg


class Harness:
    def __init__(self, tmp: Path, cfg: dict[str, Any], behaviours: dict[str, Behaviour], *,
                 clock: FakeClock | None = None, sensor: Any = None, detector: Any = None,
                 backends: dict[str, Any] | None = None, store: Store | None = None, **parts: Any):
        self.tmp, self.cfg = tmp, cfg
        self.clock = clock or FakeClock()
        self.factory = FakeFactory(self.clock, behaviours)
        self.store = store or Store(Path(cfg["daemon"]["state_dir"]) / "nightshift.db", clock=self.clock)
        self.parts = Parts(
            store=self.store,
            make_runner=lambda d: JobRunner(d, spawn=self.factory.spawn, clock=self.clock.monotonic),
            offloader=Offloader(cfg, backends=backends), sensor=sensor, detector=detector,
            find_checkpoint=find_fake_checkpoint, **parts)
        self.sup: Supervisor | None = None

    async def open(self, **kw: Any) -> Supervisor:
        self.sup = Supervisor(self.cfg, self.parts, clock=self.clock, mono=self.clock.monotonic, **kw)
        await self.sup.open()
        return self.sup

    async def run(self, seconds: float, dt: float = 0.2, poll_every: float | None = None,
                  until=None) -> None:
        """Advance fake time by ``seconds`` in ``dt`` steps, polling every poll interval."""
        assert self.sup is not None
        poll = poll_every or float(self.cfg["gpu"]["poll_interval_s"])
        next_poll = self.clock.mono
        end = self.clock.mono + seconds
        while self.clock.mono < end:
            self.clock.advance(dt)
            self.factory.advance(self.clock.mono)
            if self.clock.mono >= next_poll:  # the poll timer is monotonic (app.PollTimer)
                self.sup.poll_due = True
                next_poll = self.clock.mono + poll
            await self.sup.tick()
            await asyncio.sleep(0)  # let the wait() tasks see an exit
            if until is not None and until(self.sup):
                return

    async def command(self, action: str, settle_s: float = 0.4) -> dict[str, Any]:
        assert self.sup is not None
        fut = self.sup.submit(action)
        for _ in range(int(120 / 0.2)):
            await self.run(0.2)
            if fut.done():
                return fut.result()
        raise AssertionError(f"{action} never answered")

    def events(self, kind: str | None = None) -> list[str]:
        return [e["message"] for e in reversed(self.store.events(None, limit=10000, kind=kind))]

    @property
    def spawned(self) -> list[list[str]]:
        return [p.command for p in self.factory.procs]


class RunningCloud:
    """A cloud backend at its boundary: accepts the job and reports it running at ``step``."""

    def __init__(self, step: int = 42, total_steps: int = 1000):
        self.step, self.total_steps = step, total_steps

    def upload(self, key, ckpt, files):
        return UploadResult(1, 0.1)

    def launch(self, key, spec):
        return "call-1"

    def poll(self, call_id):
        return RemoteStatus(state="running", step=self.step, total_steps=self.total_steps, steps_per_s=5.0)

    def cancel(self, call_id):
        pass

    def pull(self, key, call_id, dest):
        return None
