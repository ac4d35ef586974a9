"""Pure policies: observations + state + config + now in, decisions out. No I/O here. Also the
run's states they decide over (states) and the plain types the packages hand each other: the
config's sections (cfgtypes), commands' answers, rows and the status snapshot (records), JSON
values (jsonvalue).
Every package may import it; it imports only daemon.job's classify (how a job ended), which
imports nothing else of daemon/.
"""

from daemon.policy.interval import auto_interval_steps, estimate_mtbf_s, young_daly_interval_s
from daemon.policy.recovery import RecoveryAction, RecoveryState, decide_recovery
from daemon.policy.thermal import ThermalDecision, ThermalObs, ThermalState, decide_thermal

__all__ = [
    "RecoveryAction", "RecoveryState", "ThermalDecision", "ThermalObs", "ThermalState",
    "auto_interval_steps", "decide_recovery", "decide_thermal", "estimate_mtbf_s",
    "young_daly_interval_s",
]
