"""DiskHold (daemon/core/diskhold.py): a full disk as decisions, measured by the real DiskWatch
on a real directory (only the free bytes are the machine's answer, injected)."""

from __future__ import annotations

from daemon.core.decisions import Emit, Hold, Problem, Release, Wait
from daemon.core.diskhold import DiskHold
from daemon.job.diskfull import DiskWatch
from daemon.policy.states import State

GIB = 1 << 30


def disk(tmp_path, free: list[int]) -> DiskHold:
    return DiskHold(DiskWatch(lambda: [str(tmp_path)], lambda: 100 << 20, free=lambda p: free[0],
                              total=lambda p: 100 * GIB))


def test_a_running_job_is_held_and_said_once(tmp_path):
    d = disk(tmp_path, [0])
    got = d.hold("the checkpoint at step 40 did not fit", held=False, job_running=True, restart=False)
    msg = got[0].text  # type: ignore[union-attr]
    assert msg.startswith("disk full: the checkpoint at step 40 did not fit; ") and "goes on by itself" in msg
    assert got == [Problem("disk", msg), Emit("disk_full", msg, "warn"), Hold("disk", msg, or_stop=True)]
    again = d.hold("the state database cannot be written", held=True, job_running=True, restart=False)
    assert [type(x) for x in again] == [Problem, Hold]  # said once: the problem line follows


def test_a_dead_job_waits_held_in_starting_until_there_is_room(tmp_path):
    d = disk(tmp_path, [0])
    got = d.hold("the job died writing to a full disk", held=False, job_running=False, restart=True)
    msg = got[0].text  # type: ignore[union-attr]
    assert got[2:] == [Hold("disk", msg, quiet=True), Wait(0.0, State.STARTING, msg)]
    no_restart = d.hold("cannot start", held=True, job_running=False, restart=False)
    assert isinstance(no_restart[-1], Hold) and no_restart[-1].quiet


def test_room_comes_back_at_the_needed_bytes_and_the_hold_is_lifted(tmp_path):
    free = [0]
    d = disk(tmp_path, free)
    d.hold("the job died writing to a full disk", held=False, job_running=True, restart=False)
    ok, said = d.room(None, True)
    assert not ok and len(said) == 1 and said[0].text.startswith("disk full: the job died")  # type: ignore[union-attr]
    assert d.room(said[0].text, True) == (False, [])  # type: ignore[union-attr]  # unchanged: nothing to update
    need = d.watch.needed(str(tmp_path))
    free[0] = need - 1
    assert not d.room(None, True)[0]
    free[0] = need
    ok, said = d.room("x", True)
    assert ok and said == [Problem("disk", None), Release("disk"),
                           Emit("disk_full", "disk space is back: the run goes on", "info")]
    assert d.room("x", False)[1][1] == Release("disk", quiet=True)  # no job to tell


def test_per_poll_a_store_on_a_full_disk_holds_the_running_job_and_room_lets_it_go(tmp_path):
    free = [0]
    d = disk(tmp_path, free)
    assert d.poll(held=False, job_running=False, store_full=True, shown=None) == []  # no job here
    assert d.poll(held=False, job_running=True, store_full=False, shown=None) == []
    got = d.poll(held=False, job_running=True, store_full=True, shown=None)
    assert got[-1] == Hold("disk", got[0].text, or_stop=True)  # type: ignore[union-attr]
    assert "the state database cannot be written" in str(got[0].text)  # type: ignore[union-attr]
    assert d.poll(held=True, job_running=True, store_full=True, shown=got[0].text) == []  # type: ignore[union-attr]
    free[0] = d.watch.needed(str(tmp_path))
    assert Release("disk") in d.poll(held=True, job_running=True, store_full=False, shown="x")
