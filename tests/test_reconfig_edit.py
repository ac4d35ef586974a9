"""daemon/core/reconfig.py: an edit's keys sorted (live, edited back, waiting for a restart) and
what the daemon says of each, as decisions."""

from __future__ import annotations

from daemon.core.decisions import Emit
from daemon.core.reconfig import Edit, rejected, said, split
from daemon.state.config import ConfigError


def test_a_restart_key_edited_back_is_neither_applied_nor_waited_for():
    e = split(["thermal.pause_at_c", "job.command", "api.port"], restart=["api.port"])
    assert e == Edit(live=["thermal.pause_at_c"], reverted=["job.command"], restart=["api.port"])


def test_each_group_is_said_once_and_only_when_it_has_keys():
    assert said(Edit([], [], [])) == []
    assert said(Edit(["thermal.pause_at_c", "gpu.poll_interval_s"], [], [])) == [
        Emit("config", "Config reloaded: now in force: thermal.pause_at_c, gpu.poll_interval_s.")]
    got = said(Edit([], ["job.command"], ["api.port"]))
    assert got[0].message == ("Config reloaded: job.command edited back to the value the daemon runs with, "
                              "so nothing was applied and no restart is needed.")
    assert got[1] == Emit("config", "Changed keys wait for a daemon restart: api.port "
                          "(systemctl restart nightshiftd).", "warn")


def test_a_rejected_edit_says_the_old_config_stays():
    e = rejected(ConfigError("thermal.clock_cap_mhz = 9000 is outside the card's range 200-2700."))
    assert e == Emit("config", "Config edit rejected, the previous config stays in force: thermal.clock_cap_mhz "
                     "= 9000 is outside the card's range 200-2700.", "error")
