"""Prometheus exposition of the status, through prometheus-client, on a per-app registry."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily

from daemon.states import ALL_STATES as STATES


class StatusCollector:
    def __init__(self, status: Callable[[], dict[str, Any]]):
        self.status = status

    def collect(self):
        st = self.status()
        temps = st.get("temps") or {}
        g = GaugeMetricFamily("nightshift_temperature_celsius", "GPU edge and CPU-die Tctl", labels=["sensor"])
        for name in ("edge_c", "tctl_c"):
            if temps.get(name) is not None:
                g.add_metric([name[:-2]], temps[name])
        yield g
        for name, key, doc in (("nightshift_step", "step", "training step"),
                               ("nightshift_total_steps", "total_steps", "steps to train"),
                               ("nightshift_loss", "loss", "latest training loss"),
                               ("nightshift_steps_per_second", "steps_per_s", "training rate"),
                               ("nightshift_eta_seconds", "eta_s", "estimated time to finish"),
                               ("nightshift_restarts", "restarts", "job restarts in this run"),
                               ("nightshift_steps_lost", "steps_lost", "steps recomputed after restarts")):
            m = GaugeMetricFamily(name, doc)
            if st.get(key) is not None:
                m.add_metric([], float(st[key]))
            yield m
        r = st.get("resets") or {}
        m = GaugeMetricFamily("nightshift_resets_total", "GPU resets in this run")
        m.add_metric([], float(r.get("total") or 0))
        yield m
        m = GaugeMetricFamily("nightshift_resets_in_window", "GPU resets in the configured window")
        m.add_metric([], float(r.get("in_window") or 0))
        yield m
        m = GaugeMetricFamily("nightshift_state", "1 for the current state", labels=["state"])
        for s in STATES:
            m.add_metric([s], 1.0 if st.get("state") == s else 0.0)
        yield m
        ck = st.get("checkpoint") or {}
        m = GaugeMetricFamily("nightshift_checkpoint_age_seconds", "age of the newest checkpoint")
        if ck.get("age_s") is not None:
            m.add_metric([], float(ck["age_s"]))
        yield m
        cloud = st.get("cloud") or {}
        m = GaugeMetricFamily("nightshift_cloud_cost_usd", "cloud spend in this run")
        m.add_metric([], float(cloud.get("cost_usd") or 0.0))
        yield m


def make_registry(status: Callable[[], dict[str, Any]]) -> CollectorRegistry:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(StatusCollector(status))
    return reg


def exposition(reg: CollectorRegistry) -> bytes:
    return generate_latest(reg)
