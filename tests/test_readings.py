"""The readings the Supervisor keeps between polls (daemon/core/readings.py): the newest, the
edge trend on the monotonic clock, and a reset's temperatures just before it."""

from __future__ import annotations

from daemon.core.readings import Readings
from daemon.gpu.sensors.base import Reading


def test_no_reading_changes_nothing_and_an_unknown_edge_is_no_point_of_the_trend():
    r = Readings()
    r.note(None, 1.0)
    assert r.last is None and not r.edges
    r.note(Reading(t=100.0, edge_c=None, tctl_c=60.0), 5.0)
    assert r.last is not None and r.last.tctl_c == 60.0 and not r.edges
    r.note(Reading(t=101.0, edge_c=70.0), 6.0)
    assert list(r.edges) == [(6.0, 70.0)]  # monotonic time: a wall-clock step does not bend the trend


def test_the_trend_keeps_the_last_twenty_edges():
    r = Readings()
    for i in range(25):
        r.note(Reading(t=float(i), edge_c=50.0 + i), float(i))
    assert len(r.edges) == 20 and r.edges[0] == (5.0, 55.0)


def test_a_resets_temperatures_are_the_last_good_reading_at_or_before_it():
    r = Readings()
    r.note(Reading(t=10.0, edge_c=80.0, tctl_c=85.0, power_w=40.0), 1.0)
    r.note(Reading(t=11.0, edge_c=None, tctl_c=None), 2.0)  # nothing read: not a temperature
    r.note(Reading(t=12.0, edge_c=95.0, resetting=True), 3.0)  # read while the reset was underway
    r.note(Reading(t=13.0, edge_c=60.0), 4.0)  # after it
    assert r.temps_before(12.5) == {"edge_c": 80.0, "tctl_c": 85.0, "power_w": 40.0, "t": 10.0}
    assert r.temps_before(13.0)["edge_c"] == 60.0
    assert r.temps_before(9.0) == {}
