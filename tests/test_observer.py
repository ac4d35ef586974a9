"""Observer (daemon/core/observer.py): the outside world read once into an Observation -- a real
JobRunner reading a real progress.jsonl (no process started), a sensor that fails."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from daemon.core.observer import Observer
from daemon.job.jobrunner import JobRunner
from tests.harness import Reading
from trainer import protocol


@dataclass
class Src:
    sensor: Any = None
    detector: Any = None
    schedule: Any = None
    output_progress: Any = None


class Broken:
    def read(self) -> Any:
        raise OSError("EIO on temp1_input")


def write(run_dir: Path, *recs: dict[str, Any]) -> None:
    with open(run_dir / protocol.PROGRESS_FILE, "a") as f:
        for r in recs:
            f.write(json.dumps(r) + "\n")


def test_records_commands_and_no_poll_when_none_is_due(tmp_path):
    runner = JobRunner(tmp_path / "run", clock=lambda: 0.0)
    write(tmp_path / "run", {"t": 1.0, "kind": "progress", "step": 3, "loss": 0.5})
    obs = Observer().observe(Src(), runner, 1000.0, 50.0, commands=[("pause", None, None)], stop_signal=None,
                             poll=False, last_record_at=12.0)
    assert [r["step"] for r in obs.records] == [3] and obs.commands == (("pause", None, None),)
    assert obs.poll is None and obs.exit_code is None and obs.clock_step_s is None
    assert obs.job.last_record_at == 50.0  # a record this tick: now
    again = Observer().observe(Src(), runner, 1001.0, 51.0, commands=[], stop_signal=15, poll=False,
                               last_record_at=12.0)
    assert again.records == () and again.job.last_record_at == 12.0 and again.stop_signal == 15


def test_a_wall_clock_step_is_seen_against_the_monotonic_clock(tmp_path):
    runner, o = JobRunner(tmp_path / "run", clock=lambda: 0.0), Observer()
    o.observe(Src(), runner, 1000.0, 50.0, commands=[], stop_signal=None, poll=False, last_record_at=None)
    steady = o.observe(Src(), runner, 1001.0, 51.0, commands=[], stop_signal=None, poll=False, last_record_at=None)
    jumped = o.observe(Src(), runner, 4601.0, 52.0, commands=[], stop_signal=None, poll=False, last_record_at=None)
    assert not steady.clock_step_s and jumped.clock_step_s is not None and jumped.clock_step_s > 3000


def test_a_due_poll_reads_the_sensor_and_a_failed_read_is_an_unknown_with_its_error(tmp_path):
    runner = JobRunner(tmp_path / "run", clock=lambda: 0.0)

    class Ok:
        def read(self) -> Any:
            return Reading(t=1000.0, edge_c=61.0)

    obs = Observer().observe(Src(sensor=Ok()), runner, 1000.0, 50.0, commands=[], stop_signal=None, poll=True,
                             last_record_at=None)
    assert obs.poll is not None and obs.poll.reading.edge_c == 61.0 and obs.poll.error is None
    assert obs.poll.schedule is None and obs.poll.resets == ()
    bad = Observer().observe(Src(sensor=Broken()), runner, 1000.0, 50.0, commands=[], stop_signal=None,
                             poll=True, last_record_at=None)
    assert bad.poll is not None and bad.poll.reading is None and bad.poll.error == "OSError: EIO on temp1_input"
