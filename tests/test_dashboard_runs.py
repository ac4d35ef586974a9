"""Issue 28: the dashboard draws the night's runs' loss curves on one step axis with each climb
marked, in a real headless Chromium at a phone's width. The night is the real Supervisor's
(tests/harness.py): three queued runs, the second climbing back; the real HTTP API (uvicorn on
a free loopback port) serves GET /runs with the curves to the real dashboard."""

from __future__ import annotations

import asyncio
import re

import pytest

from daemon.policy.states import State
from daemon.web import api
from tests.harness import Behaviour, Harness, config
from tests.helpers import needs_chromium, served_dom


def scripted(losses: list[float]) -> Behaviour:
    """A script job reporting ``losses`` at steps 10, 20, ... every 0.5 s, then exiting 0."""
    return Behaviour(script=[(0.5 + i * 0.5, "record", {"kind": "progress", "step": 10 * (i + 1), "loss": v,
                                                        "total_steps": 10 * len(losses)})
                             for i, v in enumerate(losses)] + [(0.8 + len(losses) * 0.5, "exit", 0)])


async def _night(tmp_path) -> Harness:
    cfg = config(tmp_path, job={"command": ["base"]}, divergence={"enabled": False})
    down = [3.0 * 0.93 ** i for i in range(40)]
    climb = down[:20] + [down[19] * (1 + 0.15 * i) for i in range(1, 21)]
    cfg["queue"] = [{"name": n, "command": [n], "env": {}, "resume_command": None, "total_steps": 400}
                    for n in ("base", "hot", "third")]
    h = Harness(tmp_path, cfg, {"base": scripted(down), "hot": scripted(climb), "third": scripted(down)})
    sup = await h.open()
    await h.run(120, until=lambda s: s.run_id == 3 and s.state == State.SUCCEEDED)
    assert sup.run_id == 3 and sup.state == State.SUCCEEDED, h.events()
    runs = sup.face.runs()
    assert [r["climb_step"] is not None for r in runs] == [False, True, False], runs
    assert all(2 <= len(r["curve"]) <= 200 for r in runs), [len(r["curve"]) for r in runs]
    return h


@pytest.mark.slow
@pytest.mark.browser
@needs_chromium
def test_dashboard_overlays_the_nights_loss_curves_with_each_climb_marked(tmp_path):
    async def go() -> tuple[str, list[dict]]:
        h = await _night(tmp_path)
        return await served_dom(api.create_app(h.sup.face, h.sup, None), tmp_path), h.sup.face.runs()

    dom, runs = asyncio.run(go())
    assert 'data-ready="1"' in dom
    chart = dom[dom.index('id="rchart"'):dom.index('id="rlegend"')]
    assert 'data-curves="3"' in chart and 'data-climbs="1"' in chart, chart[:3000]
    assert chart.count('class="run-curve"') == 3
    hot = runs[1]
    assert re.search(r'class="climb-mark" data-run="2"[^>]*><title>run 2 \(hot\): climb from step '
                     + str(hot["climb_step"]), chart), chart[:3000]
    # one step axis: the curves' x positions span the same steps
    assert "step 0" in chart or "step 100" in chart
    legend = dom[dom.index('id="rlegend"'):]
    assert all(f"{r['id']} {r['name']}" in legend for r in runs)
    assert 'id="runs-box" hidden' not in dom
