"""The governor loop: ``[thermal] governor = "clock"`` carried out, one reading at a time.

The rule is pure (policy/governor.py: a reading and the learned state in, a cap out); this
object is what stays between readings: the state, the job whose clock it learns (``key``:
the learned clock belongs to this machine's store and this job), the measured speed under
the cap, since when it governs and how many thermal pauses its safety net took since. It
writes the cap through the port (governor_io.GovernorPort) and its memory through the store
(``recall``/``remember``), and never sees the Supervisor: ``step`` returns what to say, and
the Supervisor says it (events, the ``governor`` problem).

Times are the daemon's monotonic clock: a wall-clock step must not make a rate or an age.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, replace
from typing import Protocol

from daemon.gpu.governor_io import GovernorPort, NoDevicePort, ReadingLike, obs_from_reading
from daemon.policy.cfgtypes import Config, JobConfig
from daemon.policy.governor import CapLog, GovState, SpeedMeter, decide_governor
from daemon.policy.jsonvalue import JSONObject

MOVED_MHZ = 200  # a cap change this large (or on/off) is an event; smaller ones are tuning


class Memory(Protocol):
    """What the governor remembers between nights (daemon/state/store.py's ``memory`` table)."""

    def recall(self, key: str) -> JSONObject | None: ...
    def remember(self, key: str, value: JSONObject) -> None: ...


def job_key(job: JobConfig) -> str:
    """The learned clock belongs to this job: its command, workdir and env decide its heat (a
    bigger batch runs hotter)."""
    ident = json.dumps([job["command"], job["workdir"], job["env"]], sort_keys=True, default=str)
    return "governor:" + hashlib.sha256(ident.encode()).hexdigest()[:16]


@dataclass
class GovernorSays:
    """One reading's outcome for the Supervisor to carry out."""
    events: list[tuple[str, str]] = field(default_factory=list)  # (message, level) "governor" events
    problem: str | None = None  # why it cannot govern (status keeps it until it clears)
    learned: bool = False  # the learned clock moved: remember it now (a kill -9 must not lose it)


BUSY_PCT = 50.0  # gpu_busy_percent from which a job that reports no step counts as computing


def gpu_busy(reading: ReadingLike) -> bool:
    """Whether a job with no step (yet) computes, by the GPU's own busy percent.

    While a job starts (imports torch, loads its data) it loads the GPU only partly, which must
    not teach the governor what its clock costs (policy/governor._learn). A job that reports
    steps computes once its step advances. Before its first step it has none: the Supervisor
    passes ``facts.step``, None until the job's first record, which a trainer writes after its
    imports. Counting "no step" as computing let a fresh start's import teach the clock->power
    map that full clock costs ~15 W: on a busy machine the import took 15 s at a third of a
    core, the map then put the sustainable clock at the top, and `demo --governor` never capped
    and paused twice (issue 29, item 8). The GPU's busy percent tells, for a job that never
    reports a step as well: ~0 while it imports, high once it computes. A sensor without it
    cannot tell: then the job computes while it trains, as before."""
    return reading.busy_pct is None or reading.busy_pct >= BUSY_PCT


class Governor:
    def __init__(self, port: GovernorPort | NoDevicePort, memory: Memory, key: str):
        self.port = port
        self.memory = memory
        self.key = key
        self.state = GovState()
        self.reason = ""
        self.speed = SpeedMeter()
        self.since: float | None = None  # when it engaged (its first governed reading)
        self.pauses = 0  # thermal pauses since then (the phone line's "0 pauses in 2 h")
        self.top: int | None = None  # the card's OD_RANGE top clock (the "x clock" fallback)
        self.caps = CapLog()  # the caps held and for how long (a run's summary says them)
        self._said: str | None = None  # the problem last said (said once, not every poll)
        self.start(key)

    def start(self, key: str) -> None:
        """The state for this job, from what the store remembers of it."""
        self.key = key
        mem = self.memory.recall(key) or {}
        self.state = GovState.start(mem)
        full = mem.get("full_steps_per_s")
        self.speed = SpeedMeter(full_rate=float(full) if isinstance(full, (int, float)) else None)
        self.since, self.pauses, self.caps = None, 0, CapLog()

    @staticmethod
    def min_s(poll_interval_s: float) -> float:
        """How long a step rate must be measured before the phone line calls it a speed: 30 s
        at least (a job's first steps, eval, a checkpoint make a shorter window noise)."""
        return max(30.0, 10 * poll_interval_s)

    def step(self, reading: ReadingLike | None, mono: float, *, job_step: int | None, training: bool,
             cfg: Config) -> GovernorSays:
        """One poll while the job is local: the cap for this reading, through the port."""
        says = GovernorSays()
        if reading is None:  # nothing to govern by; a port that can never cap still says why
            problem = self.port.problem()
            if problem:
                self.state = replace(self.state, problem=problem, cap_mhz=None)  # the phone line says so
                self._problem(f"cannot cap the clock, falling back to pausing: {problem}", says)
            else:
                says.problem = self._said
            return says
        before, learned = self.state.cap_mhz, self.state.learned_mhz
        poll = float(cfg["gpu"]["poll_interval_s"])
        computing = training and (self.speed.add(mono, job_step, False, training).primed
                                  if job_step is not None else gpu_busy(reading))
        obs = replace(obs_from_reading(reading, self.port, poll, now=mono), computing=computing)
        dec = decide_governor(obs, self.state, cfg["thermal"])
        self.state, self.reason = dec.state, dec.reason
        self.top = obs.od_range[1] if obs.od_range else self.top
        msg = self.port.set(dec.cap_mhz)
        if msg is not None or dec.fallback:
            self._problem(msg or dec.reason, says)
        else:
            self._said = None
        if not dec.fallback and self.since is None:
            self.since = mono  # engaged: pauses and hours count from here
        capped = dec.cap_mhz is not None and dec.cap_mhz < (self.top or 1 << 30)  # the top clock is no cap
        self.speed = self.speed.add(mono, job_step, capped, training)
        self.caps = self.caps.add(mono, dec.cap_mhz if capped and msg is None else None)
        moved = (before is None) != (dec.cap_mhz is None) or \
            (before is not None and dec.cap_mhz is not None and abs(before - dec.cap_mhz) >= MOVED_MHZ)
        if moved:
            says.events.append((dec.reason, "info"))
        says.learned = self.state.learned_mhz != learned
        return says

    def _problem(self, text: str, says: GovernorSays) -> None:
        if self._said != text:
            says.events.append((text, "warn"))
        self._said = says.problem = text

    def away(self) -> None:
        """The job is not here (a reset's recovery, a restart, the cloud): the next process
        computes once its own step advances. Kept, the step rate of the attempt before made
        the new one's torch import count as computing (the Supervisor's step is the old one
        until the new process's first record): after the reset the cooled chip's cap went back
        to the top clock, held there through the import, and the chip paused (issue 29)."""
        self.speed = self.speed.add(0.0, None, False, False)

    def paused(self) -> None:
        """A thermal pause: the governor's safety net fired (counted once it governs)."""
        if self.since is not None:
            self.pauses += 1

    def governed_s(self, mono: float) -> float | None:
        return mono - self.since if self.since is not None else None

    def remember(self, poll_interval_s: float) -> None:
        """Keep what it learned for the next night (raises what the store raises)."""
        full = self.speed.full_steps_per_s(self.min_s(poll_interval_s))
        self.memory.remember(self.key, {**self.state.memory(), "full_steps_per_s": full})
