"""Thermal governor (pure): run the GPU continuously at the clock it can sustain.

Pausing (policy/thermal.py) saves the chip but not the night: the job stops, the chip cools,
the job runs flat out again. Dynamic power grows about with the cube of the clock while a
step's speed grows at most linearly (less on a memory-bound APU), so a slightly lower clock
runs much cooler for a small loss of speed, and never stops. This policy picks the sclk cap
that holds edge at ``pause_at_c - setpoint_margin_c``; the pause policy stays the safety net
above it and is never weakened by it.

Model, learned online, nothing for the user to tune. The chip is taken as one first-order
thermal mass: dT/dt = a + b*u - T/tau, where u is the heat input: the measured power when
there is a power sensor (on the 780M the whole-die power, the CPU's share included), else the
cube of the relative clock (dynamic power ~ f*V^2, V rising with f). Recursive least squares
with a forgetting time of ``MEMORY_TAUS`` time constants fits (a, b, -1/tau) from consecutive
readings, so a warmer room (a larger ``a``) is tracked within the night. With power as the
input, a second small fit maps the clock to power: P = p0 + p1*(f/f_max)^3. The steady state
of a cap is then T_ss(f) = tau*(a + b*u(f)), and the cap chosen is the one whose predicted
temperature one time constant ahead is the setpoint: from a cold chip that is the top clock,
near the setpoint it is the sustainable clock (T_ss = setpoint) — no overshoot from a right
model, and the fit corrects a wrong one as the readings come in.

Choices, each deliberate:
- Until the fit is trustworthy (enough samples, the input has varied, physical signs: b > 0,
  tau > 0) the governor keeps the cap it starts with (last night's learned clock, else none)
  and, if edge reaches the setpoint by the next reading (at its current slope), steps down
  10% of the top clock at most every
  ``LEARN_STEP_POLLS`` polls: a safe move that is also the input variation the fit needs.
- The fit learns only from readings away from the setpoint (more than ``SETTLED_C``: the
  heat-up, a step, a room that warms past what the offset has caught). Holding is not
  information. Learning from it caused a limit cycle (issue 20, second pass). At the setpoint
  the only input change is the governor's own one-step dither, chosen from the temperature.
  Those readings pin down one combination of (a, b, tau), namely "this input holds this
  temperature", and they carry what the first-order model lacks (a chip heats more slowly
  than it cools). Recursive least squares then slid along the direction those readings leave
  free: b decayed towards 0 over a few hundred polls, so the model's clock per degree grew
  without bound. The cap then swung by the move limit at every poll, 2275-2700 MHz, and edge
  sat 4-5 C under the setpoint (ambient 36, rise 59, tau 100 s, 10-15 polls per tau; 45 of a
  600-chip grid failed). Frozen while holding, the fit keeps the gain it measured from real
  steps. The steady-state miss that remains (a wrong a, a warmer room) is ``offset_c``'s, an
  integrator that cannot change the loop's gain.
- Above the setpoint the cap never rises (hot means "not faster", whatever the model says).
  Nor while the job does not compute (``GovObs.computing``): a chip cooling under no load
  says nothing of the clock the load will sustain.
- Caps are multiples of ``STEP_MHZ`` inside OD_RANGE and change only by at least one step, so
  noise does not rewrite the cap every poll.
- Unknown edge (a reset: every read fails with EPERM) keeps the cap and learns nothing.
- Where the cap cannot be set (``GovObs.cap_problem``, from daemon/gpu/governor_io.py, which names
  the fix: amdgpu.ppfeaturemask's overdrive bit, the file's mode), the decision says so and
  asks for no cap: pausing alone protects the chip.
- ``learned_mhz`` (the model's sustainable clock while the job runs) is the memory across
  nights: the supervisor stores ``state.memory()`` and passes it to ``GovState.start``.

A governor cannot help firmware hangs at normal temperature: see ``FIRMWARE_NOTE``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace

from daemon.policy.cfgtypes import ThermalConfig

FIRMWARE_NOTE = ("A clock governor cannot help firmware hangs at normal temperature: they "
                 "are not heat; it only replaces pauses with a lower steady clock.")
STEP_MHZ = 25
MAX_MOVE = 0.05  # of the OD range per decision
MEMORY_TAUS = 8.0  # forgetting time of the fit, in learned time constants
MIN_SAMPLES = 12
LEARN_STEP_POLLS = 5
HOLD_C = 1.0  # within this of the setpoint a one-step change is not worth a write
SETTLED_C = 1.5  # within this of the setpoint the chip is "holding" (learned clock updates)
P0 = 1e6  # initial covariance: a prior that the first readings overrule


@dataclass(frozen=True)
class Fit:
    """Recursive least squares: y = theta . phi, with covariance p (row-major) and forgetting."""
    theta: tuple[float, ...]
    p: tuple[float, ...]
    n: int = 0

    @staticmethod
    def empty(k: int, theta: tuple[float, ...] | None = None) -> Fit:
        return Fit(theta or (0.0,) * k, tuple(P0 if i == j else 0.0 for i in range(k) for j in range(k)))

    def update(self, phi: tuple[float, ...], y: float, lam: float) -> Fit:
        k = len(phi)
        p = [list(self.p[i * k:(i + 1) * k]) for i in range(k)]
        pphi = [sum(p[i][j] * phi[j] for j in range(k)) for i in range(k)]
        denom = lam + sum(phi[i] * pphi[i] for i in range(k))
        gain = [v / denom for v in pphi]
        err = y - sum(t * f for t, f in zip(self.theta, phi, strict=True))
        theta = tuple(t + g * err for t, g in zip(self.theta, gain, strict=True))
        # Without input variation forgetting would inflate p without bound ("windup"): then
        # forget nothing until the readings carry information again.
        trace = sum(p[i][i] for i in range(k))
        lam_eff = lam if trace < 10 * P0 else 1.0
        newp = tuple((p[i][j] - gain[i] * pphi[j]) / lam_eff for i in range(k) for j in range(k))
        return Fit(theta, newp, self.n + 1)


@dataclass(frozen=True)
class GovState:
    cap_mhz: int | None = None  # the cap last asked for (None: no cap)
    learned_mhz: int | None = None  # sustainable clock for this machine and job (the memory)
    thermal: Fit = Fit.empty(3)  # dT/dt = a + b*u + c*T  (c = -1/tau)
    power: Fit = Fit.empty(2)  # P = p0 + p1*x^3
    input: str | None = None  # "power" or "clock": fixed by the first reading
    last: tuple[float, float, float] | None = None  # (t, edge, u) of the previous reading
    u_range: tuple[float, float] | None = None  # the inputs seen (excitation)
    changed_at: float | None = None
    offset_c: float = 0.0  # what the fit has not caught up with yet (a room warming now), in C
    problem: str | None = None  # why no cap can be set (falls back to pausing)

    @staticmethod
    def start(memory: Mapping[str, object] | None = None) -> GovState:
        """A night's first state; ``memory`` is last night's ``memory()`` (or None)."""
        mhz = (memory or {}).get("learned_mhz")
        mhz = int(mhz) if isinstance(mhz, (int, float)) and mhz > 0 else None
        return GovState(cap_mhz=mhz, learned_mhz=mhz)

    def memory(self) -> dict[str, int | None]:
        """What to store for the next night (JSON-safe)."""
        return {"learned_mhz": self.learned_mhz}


@dataclass(frozen=True)
class GovObs:
    now: float
    edge_c: float | None
    clock_mhz: float | None  # the actual sclk (freq1_input): the cap under load, low at idle
    power_w: float | None = None
    od_range: tuple[int, int] | None = None  # OD_RANGE sclk (from the port); None: 800-2700
    cap_problem: str | None = None  # the port's reason no cap can be set, naming the fix
    poll_interval_s: float = 2.0
    # The job computes (its step has advanced since it started or was released). While it
    # starts (imports, loads a checkpoint) the GPU sits at the cap with a fraction of the load:
    # that reading says nothing of the power or heat the job's clock costs (see _learn).
    computing: bool = True


@dataclass(frozen=True)
class GovDecision:
    cap_mhz: int | None  # the cap that should be in effect now; None = no cap (governor off/unable)
    reason: str
    state: GovState
    fallback: bool = False  # the governor cannot act: pausing alone protects the chip


@dataclass(frozen=True)
class Model:
    """The fitted chip, in the units of the input (W or relative clock cubed)."""
    a: float
    b: float
    tau_s: float

    def t_ss(self, u: float) -> float:
        return self.tau_s * (self.a + self.b * u)

    def u_for(self, t_ss: float) -> float:
        return (t_ss / self.tau_s - self.a) / self.b


def setpoint_c(cfg: ThermalConfig) -> float:
    return float(cfg["pause_at_c"]) - float(cfg.get("setpoint_margin_c", 3.0))


def model_of(state: GovState) -> Model | None:
    """The fitted model once it is trustworthy, else None."""
    a, b, c = state.thermal.theta
    if state.thermal.n < MIN_SAMPLES or b <= 0 or c >= 0 or state.u_range is None:
        return None
    lo, hi = state.u_range
    if hi - lo < 0.1 * max(abs(hi), 1e-9):  # one operating point cannot tell a from b
        return None
    m = Model(a, b, -1.0 / c)
    if not -50.0 < m.t_ss(lo) < 250.0 or not -50.0 < m.t_ss(hi) < 250.0:
        return None
    return m


def _rel(clock: float, hi: float) -> float:
    return max(0.0, clock / hi) ** 3


def _input(state: GovState, obs: GovObs, hi: float) -> float | None:
    if state.input == "power":
        return obs.power_w
    return None if obs.clock_mhz is None else _rel(obs.clock_mhz, hi)


def _u_to_clock(state: GovState, u: float, lo: float, hi: float) -> float:
    if state.input == "power":
        p0, p1 = state.power.theta
        if state.power.n < 2 or p1 <= 0:
            return hi if u > p0 else lo
        x3 = (u - p0) / p1
    else:
        x3 = u
    return lo if x3 <= 0 else min(hi, max(lo, hi * x3 ** (1 / 3)))


def _learn(state: GovState, obs: GovObs, lo: float, hi: float, target: float) -> GovState:
    """Fold this reading into the fits (the previous reading's input drove this change).

    The clock says what the job's load costs only while the job computes, or at the floor clock
    (an idle GPU, where the load hardly matters). A job that starts (a torch import, slow on a
    busy machine) keeps the GPU at the cap with a fraction of the load: learnt, those readings
    averaged the clock->power map down (45 W at full clock read as ~20 W), the map then put
    the sustainable power above the top clock, and the governor ran uncapped at 92 C (issue 29,
    item 8). Power itself is what heats, at any load: the thermal fit on power takes them all."""
    if state.input is None:
        state = replace(state, input="power" if obs.power_w is not None else "clock")
    clock_says = obs.clock_mhz is not None and (obs.computing or obs.clock_mhz <= lo + STEP_MHZ)
    u = _input(state, obs, hi)
    if obs.edge_c is None or u is None or (state.input == "clock" and not clock_says):
        return replace(state, last=None)
    if state.input == "power" and clock_says and obs.clock_mhz is not None and obs.power_w is not None:
        state = replace(state, power=state.power.update((1.0, _rel(obs.clock_mhz, hi)), obs.power_w, 1.0))
    rng = (u, u) if state.u_range is None else (min(state.u_range[0], u), max(state.u_range[1], u))
    state = replace(state, u_range=rng)
    if state.last is not None:
        t0, e0, u0 = state.last
        dt = obs.now - t0
        if 0 < dt <= 10 * obs.poll_interval_s:  # a long gap (daemon restart) is no derivative
            m = model_of(state)
            # Forget only while the input moves: holding one clock for hours says nothing new
            # about b, and forgetting then lets the covariance grow until the next surprise
            # (a warmer room) throws the fit around. A steady disturbance is offset_c's job.
            lo_u, hi_u = rng
            moving = abs(u - u0) > 0.02 * max(hi_u - lo_u, 1e-9)
            lam = max(math.exp(-dt / (MEMORY_TAUS * m.tau_s)), 0.9) if m and moving else 1.0
            rate = (obs.edge_c - e0) / dt
            off = state.offset_c
            if m is not None:
                # The fit moves slowly (it must not chase noise); a sudden change (the room
                # warms) shows first as a steady-state miss, tau * (measured - modelled slope).
                # offset_c integrates it within about a time constant, and the fit learns from
                # what the offset does not explain, so a disturbance never bends b or tau.
                a, b, c = state.thermal.theta
                miss = m.tau_s * (rate - (a + b * u0 + c * e0)) - off
                state = replace(state, offset_c=off + (1 - math.exp(-dt / m.tau_s)) * miss)
                rate -= off / m.tau_s
            # Near the setpoint the readings are the loop's own dither: learning from them
            # drifts b towards 0 (see the module docstring). Only a transient teaches the fit.
            if m is None or abs(e0 - target) > SETTLED_C:
                fit = state.thermal.update((1.0, u0, e0), rate, lam)
                state = replace(state, thermal=fit)
    return replace(state, last=(obs.now, obs.edge_c, u))


def _quantize(mhz: float, lo: int, hi: int, down: bool) -> int:
    q = (math.floor if down else math.ceil)(mhz / STEP_MHZ) * STEP_MHZ
    return int(min(hi, max(lo, q)))


def decide_governor(obs: GovObs, state: GovState, cfg: ThermalConfig) -> GovDecision:
    """The sclk cap for now, from this reading, the learned state and ``cfg["thermal"]``."""
    if cfg.get("governor", "off") != "clock":
        return GovDecision(None, "governor off: heat is handled by pausing", state)
    if obs.cap_problem:
        st = replace(state, problem=obs.cap_problem, cap_mhz=None)
        return GovDecision(None, f"cannot cap the clock, falling back to pausing: {obs.cap_problem}",
                           st, fallback=True)
    lo, hi = obs.od_range or (800, 2700)
    target = setpoint_c(cfg)
    prev = state.last
    state = _learn(replace(state, problem=None), obs, lo, hi, target)
    cap = state.cap_mhz if state.cap_mhz is not None else hi
    edge = obs.edge_c
    if edge is None:
        return GovDecision(state.cap_mhz, f"temperature unknown: keeping the cap at {_fmt(state.cap_mhz)}", state)
    m = model_of(state)
    if m is None:
        waited = obs.now - state.changed_at if state.changed_at is not None else math.inf
        # By the next reading at this slope: with few polls per time constant a chip heating
        # at full clock crosses the setpoint and the pause threshold between two polls.
        rising = 0.0
        if prev is not None and 0 < obs.now - prev[0] <= 10 * obs.poll_interval_s:
            rising = max(0.0, (edge - prev[1]) / (obs.now - prev[0]))
        soon = edge + rising * obs.poll_interval_s
        if soon >= target and waited >= LEARN_STEP_POLLS * obs.poll_interval_s and cap > lo:
            new = _quantize(cap - 0.1 * hi, lo, hi, down=True)
            st = replace(state, cap_mhz=new, changed_at=obs.now)
            return GovDecision(new, f"learning: edge {edge:.1f} C reaches the setpoint {target:g} C by "
                               f"the next reading before the model is known: stepping down to {new} MHz",
                               st)
        return GovDecision(state.cap_mhz, f"learning the chip ({state.thermal.n} readings): edge "
                           f"{edge:.1f} C, cap {_fmt(state.cap_mhz)}", state)
    # the clock whose temperature one time constant ahead is the setpoint
    e = math.exp(-1.0)
    want_ss = (target - edge * e) / (1 - e)
    off = state.offset_c
    want = _u_to_clock(state, m.u_for(want_ss - off), lo, hi)
    sustain = _u_to_clock(state, m.u_for(target - off), lo, hi)
    new = _quantize(want, lo, hi, down=edge >= target)
    # One decision moves the cap at most MAX_MOVE of the range: the model is never exact, and
    # a smaller move per poll lets the next readings correct it before it overshoots.
    step = max(STEP_MHZ, _quantize(MAX_MOVE * (hi - lo), 0, hi, down=True))
    new = min(max(new, cap - step), cap + step)
    if edge > target and new > cap:
        new = cap  # hot: never faster
    if not obs.computing and new > cap:
        # not computing (a reset's recovery, the new process loading, a pause): the chip cools
        # because the load is gone, not because the cap is low; raised now, it came back to the
        # top clock and had to be capped again once the job computed (issue 29)
        new = cap
    if abs(new - cap) < (2 if abs(edge - target) <= HOLD_C else 1) * STEP_MHZ:
        new = cap  # at the setpoint a one-step wish is quantization dither: keep the cap
    busy = obs.clock_mhz is not None and obs.clock_mhz > lo + STEP_MHZ
    learned = state.learned_mhz
    if busy and abs(edge - target) <= SETTLED_C:
        learned = _quantize(sustain, lo, hi, down=True)
    st = replace(state, learned_mhz=learned,
                 cap_mhz=None if new >= hi and state.cap_mhz is None else new,
                 changed_at=obs.now if new != cap else state.changed_at)
    assert state.u_range is not None  # a model is fitted only from readings with an input
    why = (f"edge {edge:.1f} C, setpoint {target:g} C: cap {_fmt(st.cap_mhz)} (sustainable "
           f"~{int(sustain)} MHz; model: tau {m.tau_s:.3g} s, {m.t_ss(state.u_range[1]):.0f} C at "
           f"the hottest input seen)")
    return GovDecision(st.cap_mhz, why, st)


def status_line(state: GovState, edge_c: float | None, *, speed: float | None = None,
                pauses: int = 0, governed_s: float | None = None, top_mhz: int = 2700) -> str:
    """For the phone: "governed at 1900 MHz (0.85x speed), edge 84 C, 0 pauses in 2 h".

    ``speed``: the measured step rate under the cap / at full clock (``SpeedMeter``); unknown,
    the clock ratio is given instead and labelled "clock". ``pauses``: thermal pauses since the
    governor engaged, ``governed_s`` ago."""
    if state.problem:  # the fix itself is a status problem of its own (long: said once)
        return "governor cannot cap the clock; pausing only (see the problem)"
    if state.cap_mhz is None:
        head = "governor: full clock"
    else:
        rel = f"{speed:.2f}x speed" if speed is not None else f"{state.cap_mhz / top_mhz:.2f}x clock"
        head = f"governed at {state.cap_mhz} MHz ({rel})"
    edge = "edge ?" if edge_c is None else f"edge {edge_c:.0f} C"
    tail = f", {pauses} pause{'' if pauses == 1 else 's'}"
    if governed_s is not None:
        tail += f" in {governed_s / 3600:.0f} h" if governed_s >= 3600 else f" in {governed_s / 60:.0f} min"
    return f"{head}, {edge}{tail}"


SPEED_WINDOW_S = 600.0  # the rate under the cap is the recent one (the cap moves with the room)


@dataclass(frozen=True)
class SpeedMeter:
    """The "0.85x speed" of the phone line, measured: the job's steps per second between two
    governor readings, both while it trains, counted as full clock or capped by the cap that
    was in effect between them. Full clock is what this job ran at before any cap (this night,
    else remembered with the learned clock); capped decays over ``SPEED_WINDOW_S``."""
    full: tuple[float, float] = (0.0, 0.0)  # (steps, seconds) with no cap
    capped: tuple[float, float] = (0.0, 0.0)  # (steps, seconds) under a cap, recent
    last: tuple[float, int, bool] | None = None  # (t, step, capped from then on)
    full_rate: float | None = None  # remembered steps/s at full clock (another night)
    primed: bool = False  # a step has advanced since the job (re)started or was released

    def add(self, now: float, step: int | None, capped: bool, training: bool) -> SpeedMeter:
        if not training or step is None:
            return replace(self, last=None, primed=False)  # a pause or a restart is no step rate
        m = self
        if self.last is not None and not self.primed:
            if step <= self.last[1]:  # still starting (imports, loading the checkpoint): not a rate;
                # lower: a restart's first record (the step it resumes from), not a step computed
                return replace(self, last=(now, step, capped))
            return replace(self, last=(now, step, capped), primed=True)
        if self.last is not None:
            t0, s0, was_capped = self.last
            dt, ds = now - t0, step - s0
            if dt > 0 and ds >= 0:
                if was_capped:
                    k = math.exp(-dt / SPEED_WINDOW_S)
                    m = replace(m, capped=(m.capped[0] * k + ds, m.capped[1] * k + dt))
                else:
                    m = replace(m, full=(m.full[0] + ds, m.full[1] + dt))
        return replace(m, last=(now, step, capped))

    def full_steps_per_s(self, min_s: float) -> float | None:
        return self.full[0] / self.full[1] if self.full[1] >= min_s else self.full_rate

    def speed(self, min_s: float) -> float | None:
        """Capped rate / full-clock rate, each measured over at least ``min_s``; else None."""
        full = self.full_steps_per_s(min_s)
        if not full or self.capped[1] < min_s:
            return None
        return self.capped[0] / self.capped[1] / full


@dataclass(frozen=True)
class CapLog:
    """The caps that were in force while the governor held one, weighed by how long each held:
    what a run's summary says (the cap at its end, after the finished chip cooled, says
    nothing of it). A cap at or above the card's top clock is no cap."""
    mhz_s: float = 0.0  # sum of cap x seconds held
    held_s: float = 0.0
    lowest_mhz: int | None = None
    last: tuple[float, int | None] | None = None  # (t, the cap in force from then; None: none)

    def add(self, now: float, cap_mhz: int | None) -> CapLog:
        m = self
        if self.last is not None and self.last[1] is not None and now > self.last[0]:
            dt = now - self.last[0]
            m = replace(m, mhz_s=m.mhz_s + dt * self.last[1], held_s=m.held_s + dt)
        if cap_mhz is not None and (m.lowest_mhz is None or cap_mhz < m.lowest_mhz):
            m = replace(m, lowest_mhz=cap_mhz)
        return replace(m, last=(now, cap_mhz))

    @property
    def mean_mhz(self) -> int | None:
        return round(self.mhz_s / self.held_s) if self.held_s > 0 else None


def held_line(held_s: float | None, mean_mhz: int | None, lowest_mhz: int | None, top_mhz: int) -> str:
    """What the governor did over a run, in words: "held a cap for 21 s: 2510 MHz on average
    (0.93x the top clock), lowest 2450 MHz", or that it never capped (not why: a chip that
    stayed cool and a model that was wrong look alike here; the pauses beside it tell)."""
    if not held_s or mean_mhz is None:
        return "never capped the clock: full clock all along"
    span = f"{held_s:.0f} s" if held_s < 90 else (f"{held_s / 60:.0f} min" if held_s < 5400
                                                   else f"{held_s / 3600:.1f} h")
    return (f"held a cap for {span}: {mean_mhz} MHz on average ({mean_mhz / top_mhz:.2f}x the top "
            f"clock), lowest {lowest_mhz} MHz")


def _fmt(mhz: int | None) -> str:
    return "none (full clock)" if mhz is None else f"{mhz} MHz"
