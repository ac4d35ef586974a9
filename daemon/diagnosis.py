"""Are the resets heat-correlated? (pure) From the temperatures recorded just before each reset.

On the 780M most resets are the MES firmware hang, often at normal temperatures; cooling harder
does nothing for those. So the daemon says which kind the night's resets are, and for the
firmware kind lists the mitigations users reported (research/amdgpu.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

MITIGATIONS = [
    "kernel option amdgpu.cwsr_enable=0",
    "kernel option amdgpu.ppfeaturemask=0xffff7fff",
    "HSA_ENABLE_SDMA=0 in [job] env",
    "GPU_MAX_HW_QUEUES=1 in [job] env",
    "echo high > power_dpm_force_performance_level",
]
HOT_MARGIN_C = 8.0  # a reset within this of pause_at_c (or above it) counts as hot


@dataclass(frozen=True)
class Diagnosis:
    heat_correlated: bool | None
    summary: str
    mitigations: list[str] = field(default_factory=list)
    hot: int = 0
    normal: int = 0
    unknown: int = 0


def diagnose(resets: list[dict[str, Any]], cfg_thermal: dict[str, Any]) -> Diagnosis:
    hot_at = float(cfg_thermal["pause_at_c"]) - HOT_MARGIN_C
    tctl_hot = float(cfg_thermal["tctl_pause_at_c"]) - HOT_MARGIN_C
    hot = normal = unknown = 0
    for r in resets:
        temps = r.get("temps") or {}
        edge, tctl = temps.get("edge_c"), temps.get("tctl_c")
        if edge is None and tctl is None:
            unknown += 1
        elif (edge is not None and edge >= hot_at) or (tctl is not None and tctl >= tctl_hot):
            hot += 1
        else:
            normal += 1
    known = hot + normal
    if known == 0:
        return Diagnosis(None, "no temperatures recorded at the resets: cause unknown" if resets
                         else "no resets yet", [], hot, normal, unknown)
    if hot / known >= 0.6:
        return Diagnosis(True, f"{hot}/{known} resets were hot: heat-correlated; pausing earlier "
                         "(lower pause_at_c) helps", [], hot, normal, unknown)
    if normal / known >= 0.6:
        return Diagnosis(False, f"{normal}/{known} resets at normal temperatures: not heat-"
                         "correlated (firmware hang); cooling longer won't help, see mitigations",
                         list(MITIGATIONS), hot, normal, unknown)
    return Diagnosis(None, f"mixed: {hot} hot, {normal} at normal temperatures", list(MITIGATIONS),
                     hot, normal, unknown)
