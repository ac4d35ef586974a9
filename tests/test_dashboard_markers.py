"""Issue 19: the dashboard draws GPU-reset and cloud markers, in a real headless Chromium at a
phone's width. The night is the real Supervisor's (tests/harness.py): a GPU reset from the reset
sources' boundary (FakeDetector) and an offload to a cloud at its boundary; the real HTTP API
(uvicorn on a free loopback port) serves its status, history and events to the real dashboard.
(tests/test_phone_daemon.py checks the pause and resume markers on a real daemon's night.)"""

from __future__ import annotations

import asyncio
import re

import pytest

from daemon.gpu.resets import ResetEvent
from daemon.policy.states import State
from daemon.web import api
from tests.harness import (
    Behaviour,
    FakeClock,
    FakeDetector,
    FakeSensor,
    Harness,
    RunningCloud,
    config,
)
from tests.helpers import needs_chromium, served_dom


async def _night(tmp_path) -> Harness:
    clock = FakeClock()
    det = FakeDetector()
    cfg = config(tmp_path, offload={"backend": "local", "budget_usd": 5.0})
    h = Harness(tmp_path, cfg, {"trainer": Behaviour(trainer=True, steps=100000)}, clock=clock,
                sensor=FakeSensor(clock), detector=det, backends={"local": RunningCloud(step=60, total_steps=100000)})
    sup = await h.open()
    await h.run(20)
    det.events.append(ResetEvent(t=clock.t, sources=["kmsg"], lines=["amdgpu: GPU reset begin!"],
                                 signature="gpu_reset_begin"))
    await h.run(20)
    assert (await h.command("offload"))["ok"]
    await h.run(30, until=lambda s: s.state == State.REMOTE)
    await h.run(20)
    assert sup.state == State.REMOTE
    assert h.events("reset") and h.events("offloaded")
    return h


@pytest.mark.slow
@pytest.mark.browser
@needs_chromium
def test_dashboard_draws_reset_and_cloud_markers_on_both_charts(tmp_path):
    async def go() -> str:
        h = await _night(tmp_path)
        return await served_dom(api.create_app(h.sup.face, h.sup, None), tmp_path)

    dom = asyncio.run(go())
    assert 'data-ready="1"' in dom
    tchart = dom[dom.index('id="tchart"'):dom.index('id="lchart"')]
    lchart = dom[dom.index('id="lchart"'):]
    for chart in (tchart, lchart):  # the same markers on both charts' shared timeline
        assert chart.count("marker marker-reset") == 1, chart[:2000]
        assert chart.count("marker marker-cloud") == 1
    # each marker says what it was (its <title>), in full
    assert re.search(r'class="marker marker-reset"[^>]*><title>GPU reset \(kmsg\) at step \d+', tchart)
    assert re.search(r'class="marker marker-cloud"[^>]*><title>job moved to ', tchart)
    assert "CLOUD" in dom  # the state card
