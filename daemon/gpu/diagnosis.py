"""Are the resets heat-correlated? (pure) From the temperatures recorded just before each reset.

On the 780M most resets are the MES firmware hang, which strikes at idle or normal temperatures;
the driver has no temperature-triggered reset path for this chip (research/amdgpu.md). Cooling
harder does nothing for those, so the daemon says which kind the night's resets are, and for the
firmware kind lists the mitigations users reported.

A reset is "hot" when edge was within HOT_MARGIN_C of pause_at_c (or above it), or Tctl within
the same margin of tctl_pause_at_c. The policy pauses at pause_at_c, so a thermal reset shows up
just under it, not far above. A verdict needs MIN_RESETS resets with a known temperature and a
clear majority (MAJORITY) of one kind; otherwise heat_correlated is None and the summary says why.

``summary`` is short lines of at most 40 columns (a phone); ``headline`` is its first line, for
one-line contexts (an event message, a log line), so the first line is always a whole sentence
on its own.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TypedDict

from daemon.policy.cfgtypes import ThermalConfig
from daemon.policy.governor import FIRMWARE_NOTE
from daemon.policy.records import Temps

MITIGATIONS = [
    "amdgpu.cwsr_enable=0 (kernel cmdline)",
    "amdgpu.ppfeaturemask=0xffff7fff (kernel)",
    "HSA_ENABLE_SDMA=0 ([job] env)",
    "GPU_MAX_HW_QUEUES=1 ([job] env)",
    "power_dpm_force_performance_level=high",
]
HOT_MARGIN_C = 8.0
MIN_RESETS = 2
MAJORITY = 0.6
WIDTH = 40


@dataclass(frozen=True)
class Diagnosis:
    heat_correlated: bool | None
    summary: str
    mitigations: list[str] = field(default_factory=list)
    hot: int = 0
    normal: int = 0
    unknown: int = 0

    @property
    def headline(self) -> str:
        return self.summary.splitlines()[0] if self.summary else ""


class ResetSeen(TypedDict):
    """One counted reset, as the diagnosis weighs it: when, and the temps just before."""

    t: float
    temps: Temps | None


def classify_reset(temps: Temps | None, cfg_thermal: ThermalConfig) -> str:
    """"hot", "normal" or "unknown" for the temperatures recorded just before one reset."""
    temps = temps or {}
    edge, tctl = temps.get("edge_c"), temps.get("tctl_c")
    if edge is None and tctl is None:
        return "unknown"
    hot_at = float(cfg_thermal["pause_at_c"]) - HOT_MARGIN_C
    tctl_hot_at = float(cfg_thermal["tctl_pause_at_c"]) - HOT_MARGIN_C
    if (edge is not None and edge >= hot_at) or (tctl is not None and tctl >= tctl_hot_at):
        return "hot"
    return "normal"


def diagnose(resets: Sequence[ResetSeen], cfg_thermal: ThermalConfig, *, faults: int = 0,
             soft_recoveries: int = 0) -> Diagnosis:
    """Verdict over the night's resets (each a dict with "temps": {"edge_c", "tctl_c"}); GPU
    faults and soft recoveries are not resets: they get a line of their own, never a vote."""
    d = _diagnose_resets(resets, cfg_thermal)
    extra = []
    if faults:
        extra.append(f"{faults} GPU page fault{'s' if faults != 1 else ''} in the job: usually "
                     "the job's or ROCm's bug, not the chip.")
    if soft_recoveries:
        extra.append(f"{soft_recoveries} soft recover{'ies' if soft_recoveries != 1 else 'y'} "
                     "(a hung ring recovered without a reset; often another program's).")
    if not extra:
        return d
    summary = d.summary if resets else ""
    return Diagnosis(d.heat_correlated, _lines(*summary.splitlines(), *extra),
                     d.mitigations, d.hot, d.normal, d.unknown)


def _diagnose_resets(resets: Sequence[ResetSeen], cfg_thermal: ThermalConfig) -> Diagnosis:
    kinds = [classify_reset(r.get("temps"), cfg_thermal) for r in resets]
    hot, normal, unknown = kinds.count("hot"), kinds.count("normal"), kinds.count("unknown")
    known = hot + normal
    counts = dict(hot=hot, normal=normal, unknown=unknown)
    pause_at = float(cfg_thermal["pause_at_c"])
    if not resets:
        return Diagnosis(None, "No GPU resets so far.", [], **counts)
    if known < MIN_RESETS:
        why = ("No temps recorded at any reset yet;" if known == 0
               else "Only 1 reset with temps recorded yet;")
        return Diagnosis(None, _lines("Too little data to tell if it is heat.", why,
                                      f"{MIN_RESETS} resets with temps are needed."), [], **counts)
    governed = cfg_thermal.get("governor") == "clock"
    # heat: the governor holds the chip under pause_at_c at the clock it can sustain (a fixed
    # clock_cap is the cruder lever); already on, what is left is a larger margin or pausing earlier
    heat_fix = ('[thermal] governor = "clock"' if not governed else
                f"larger thermal.setpoint_margin_c (now {float(cfg_thermal.get('setpoint_margin_c', 3.0)):g})")
    if hot / known >= MAJORITY:
        return Diagnosis(True, _lines(f"Resets are heat-correlated ({hot}/{known} hot).",
                                      "Let the governor hold the clock" if not governed else
                                      "The governor is on: raise its margin",
                                      f"({heat_fix})" if not governed else "(setpoint_margin_c)",
                                      f"or pause earlier (pause_at_c < {pause_at:g})."),
                         [heat_fix, f"lower thermal.pause_at_c (now {pause_at:g})"]
                         + ([] if governed else ["thermal.clock_cap = true (a fixed cap)"])
                         + ["better cooling"], **counts)
    if normal / known >= MAJORITY:
        return Diagnosis(False, _lines(f"Resets are not heat-correlated ({normal}/{known}).",
                                       "They are firmware hangs at normal temps:",
                                       "cooling harder won't help; try the",
                                       "firmware mitigations.", FIRMWARE_NOTE),
                         list(MITIGATIONS), **counts)
    return Diagnosis(None, _lines(f"Causes are mixed: {hot} hot, {normal} normal.",
                                  "Both heat and firmware hangs happen."),
                     list(MITIGATIONS) + [f"lower thermal.pause_at_c (now {pause_at:g})", heat_fix],
                     **counts)


def _lines(*lines: str) -> str:
    # Our own lines are written to fit; wrap (never cut mid-word) one that still doesn't,
    # e.g. with huge counts.
    import textwrap
    return "\n".join(w for line in lines for w in textwrap.wrap(line, WIDTH, break_long_words=False))
