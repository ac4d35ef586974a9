"""Prometheus exposition of the status, through prometheus-client, on a per-app registry.

Counts that only grow within a run are counters (``nightshift_resets_total``,
``nightshift_soft_recoveries_total``, ``nightshift_gpu_faults_total``,
``nightshift_restarts_total``, ``nightshift_pauses_total``, ``nightshift_steps_lost_total``), so
``rate()`` and ``increase()`` work on them; they start again at 0 for a new run, which
Prometheus treats as a counter reset. Everything that can go down is a gauge. A value the
daemon does not know (no temperature sensor, no rate yet) is left out rather than sent as 0.
docs/grafana-dashboard.json charts these.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from daemon.policy.records import Status
from daemon.policy.states import ALL_STATES as STATES

# (metric name without _total, status key, help)
COUNTERS = (
    ("nightshift_resets", ("resets", "total"), "GPU resets in this run (one per incident)"),
    ("nightshift_soft_recoveries", ("resets", "soft_recoveries", "total"),
     "ring timeouts the kernel recovered without a reset, in this run"),
    ("nightshift_gpu_faults", ("resets", "faults", "total"), "GPU page faults in this run"),
    ("nightshift_restarts", ("restarts",), "job restarts in this run"),
    ("nightshift_pauses", ("pauses",), "times the job was paused (heat, user, schedule) in this run"),
    ("nightshift_steps_lost", ("steps_lost",), "steps recomputed after restarts in this run"),
)
GAUGES = (
    ("nightshift_step", ("step",), "training step"),
    ("nightshift_total_steps", ("total_steps",), "steps to train"),
    ("nightshift_loss", ("loss",), "latest training loss"),
    ("nightshift_steps_per_second", ("steps_per_s",), "training rate while training"),
    ("nightshift_eta_seconds", ("eta_s",), "estimated seconds to finish, pauses included"),
    ("nightshift_eta_steady_seconds", ("eta_steady_s",), "seconds to finish at the steady rate"),
    ("nightshift_duty_cycle_ratio", ("duty_cycle",), "time training / wall time, last hour"),
    ("nightshift_resets_in_window", ("resets", "in_window"), "GPU resets in the configured window"),
    ("nightshift_kernel_resets_in_window", ("resets", "kernel_resets_in_window"),
     "kernel resets inside those incidents (a 780M hang often needs two)"),
    ("nightshift_soft_recoveries_in_window", ("resets", "soft_recoveries", "in_window"),
     "soft recoveries in the configured window"),
    ("nightshift_gpu_faults_in_window", ("resets", "faults", "in_window"),
     "GPU page faults in the configured window"),
    ("nightshift_gpu_unattributed_in_window", ("resets", "unattributed", "in_window"),
     "GPU incidents naming no card (several amdgpu cards), not counted toward offload"),
    ("nightshift_power_watts", ("power_w",), "GPU power"),
    ("nightshift_gpu_busy_percent", ("gpu_busy_pct",), "GPU busy"),
    ("nightshift_checkpoint_age_seconds", ("checkpoint", "age_s"), "age of the newest checkpoint"),
    ("nightshift_cloud_cost_usd", ("cloud", "cost_usd"), "cloud spend in this run"),
    ("nightshift_cloud_budget_usd", ("cloud", "budget_usd"), "cloud budget"),
    # [thermal] governor = "clock" (absent when it is off, or no cap: full clock)
    ("nightshift_governor_cap_mhz", ("governor", "cap_mhz"), "sclk cap set by the thermal governor"),
    ("nightshift_governor_learned_mhz", ("governor", "learned_mhz"),
     "sustainable clock the governor learned for this machine and job"),
    ("nightshift_governor_speed_ratio", ("governor", "speed"),
     "measured step rate under the governor's cap / at full clock"),
)


def _get(st: Status, path: tuple[str, ...]) -> float | None:
    """The number at ``path`` in the snapshot (a dotted walk by name), None when not a number."""
    v: object = st
    for k in path:
        if not isinstance(v, dict):
            return None
        v = v.get(k)
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


class StatusCollector:
    def __init__(self, status: Callable[[], Status]):
        self.status = status

    def collect(self):
        st = self.status()
        temps = st.get("temps") or {}
        g = GaugeMetricFamily("nightshift_temperature_celsius", "GPU edge and CPU-die Tctl",
                              labels=["sensor"])
        for name in ("edge_c", "tctl_c"):
            if isinstance(temps.get(name), (int, float)):
                g.add_metric([name[:-2]], temps[name])
        yield g
        for name, path, doc in COUNTERS:
            c = CounterMetricFamily(name, doc)  # exposed as <name>_total
            c.add_metric([], _get(st, path) or 0.0)
            yield c
        for name, path, doc in GAUGES:
            m = GaugeMetricFamily(name, doc)
            v = _get(st, path)
            if v is not None:
                m.add_metric([], v)
            yield m
        m = GaugeMetricFamily("nightshift_state", "1 for the current state", labels=["state"])
        for s in STATES:
            m.add_metric([s], 1.0 if st.get("state") == s else 0.0)
        yield m
        m = GaugeMetricFamily("nightshift_held", "1 while the job is held, by owner",
                              labels=["owner"])
        holds = st.get("holds") or {}
        for owner in ("thermal", "user", "schedule"):
            m.add_metric([owner], 1.0 if owner in holds else 0.0)
        yield m
        m = GaugeMetricFamily("nightshift_run", "the current run's id", labels=["job"])
        if st.get("run_id") is not None:
            m.add_metric([str(st.get("job") or "")], float(st["run_id"]))
        yield m


def make_registry(status: Callable[[], Status]) -> CollectorRegistry:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(StatusCollector(status))
    return reg


def exposition(reg: CollectorRegistry) -> bytes:
    return generate_latest(reg)
