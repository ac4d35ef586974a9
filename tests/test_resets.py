"""Kernel-log parsing and merging of reset sources into one event per reset."""

from __future__ import annotations

import time

import pytest

from daemon.gpu.resets import ResetDetector
from daemon.gpu.resets.signatures import match_job_output, match_kernel_line
from daemon.gpu.sensors import Reading
from daemon.gpu.simgpu import RESET_LINES


class Clock:
    def __init__(self, t: float = 1000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


def kmsg_line(ts: float, text: str) -> str:
    return f"[{ts:12.6f}] {text}\n"


def test_signatures_match_real_looking_lines_and_ignore_others():
    assert match_kernel_line("[ 12.0] amdgpu 0000:c4:00.0: amdgpu: ring gfx_0.0.0 timeout, signaled seq=1, emitted seq=3") == "ring_timeout"
    assert match_kernel_line("amdgpu 0000:c4:00.0: amdgpu: GPU reset(2) succeeded!") == "gpu_reset_succeeded"
    assert match_kernel_line("amdgpu 0000:c4:00.0: amdgpu: GPU reset end with ret = 0") == "gpu_reset_end"
    assert match_kernel_line("usb 1-1: new high-speed USB device") is None
    assert match_kernel_line("nvme0: I/O 12 QID 3 timeout, reset controller") is None
    assert match_job_output("x\nMemory access fault by GPU node-1 (Agent handle: 0x1) on address 0x7f. Reason: Page not present\n").startswith("memory_access_fault")
    assert match_job_output("RuntimeError: HIP error: unspecified launch failure") .startswith("hip_launch_failure")
    assert match_job_output("Traceback...\nValueError: bad") is None


def test_a_whole_780m_mes_hang_sequence_is_one_reset(tmp_path):
    log = tmp_path / "kmsg.log"
    log.write_text("")
    clock = Clock()
    det = ResetDetector({"sources": ["kmsg"]}, kernel_log=str(log), clock=clock, settle_s=2.0)
    with open(log, "a") as f:
        f.write(kmsg_line(1, "usb 1-1: unrelated"))
        for i, line in enumerate(RESET_LINES):
            f.write(kmsg_line(2 + i * 0.1, line))
    assert det.poll() == []  # not settled yet
    clock.t += 15
    assert det.poll() == []  # the kernel has not been quiet for quiet_s (20 s) yet
    clock.t += 10
    evs = det.poll()
    assert len(evs) == 1
    assert evs[0].sources == ["kernel"] and len(evs[0].lines) == len(RESET_LINES)
    assert evs[0].signature == "mes_hang"


def test_sources_seeing_the_same_reset_merge_and_a_later_one_is_separate(tmp_path):
    log = tmp_path / "kmsg.log"
    log.write_text("")
    clock = Clock()
    det = ResetDetector({"sources": ["kmsg", "sensor", "job"]}, kernel_log=str(log), clock=clock)
    with open(log, "a") as f:
        f.write(kmsg_line(1, RESET_LINES[0]))
    det.poll()
    det.note_sensor(Reading(t=clock.t + 0.5, resetting=True))
    det.note_job_exit("HW Exception by GPU node-1 (Agent handle: 0x55) reason :GPU Hang", clock.t + 1)
    clock.t += 25
    evs = det.poll()
    assert len(evs) == 1 and sorted(evs[0].sources) == ["job", "kernel", "sensor"]
    clock.t += 600
    with open(log, "a") as f:
        f.write(kmsg_line(700, RESET_LINES[0]))
    det.poll()
    clock.t += 25
    assert len(det.poll()) == 1


def test_a_source_without_permission_is_reported_once_and_clearly():
    det = ResetDetector({"sources": ["kmsg"]}, kmsg_path="/nonexistent/kmsg")
    probs = det.problems()
    assert len(probs) == 1 and "does not exist" in probs[0]
    assert det.problems() == []  # once

    import daemon.gpu.resets.sources as src
    real_open = src.os.open

    def denied(path, flags, *a):
        if path == "/dev/kmsg-test":
            raise PermissionError(1, "Operation not permitted")
        return real_open(path, flags, *a)
    src.os.open = denied
    try:
        det = ResetDetector({"sources": ["kmsg"]}, kmsg_path="/dev/kmsg-test")
    finally:
        src.os.open = real_open
    [msg] = det.problems()
    assert "CAP_SYSLOG" in msg and "systemd-journal" in msg


# issue 17 -----------------------------------------------------------------------------------

def test_signatures_of_several_kernel_versions():
    """Failure 4: "MES(1) failed to respond" (6.13+) and "MES failed to response msg=3" (6.2-6.5)
    were not matched; newer kernels also dropped the "amdgpu: " prefix."""
    lines = {
        "amdgpu 0000:c4:00.0: amdgpu: MES(1) failed to respond to msg=REMOVE_QUEUE": "mes_hang",
        "[drm:mes_v11_0_submit_pkt_and_poll_completion.constprop.0 [amdgpu]] *ERROR* MES failed "
        "to response msg=3": "mes_hang",
        "amdgpu 0000:c5:00.0: MES failed to respond to msg=MISC (WAIT_REG_MEM)": "mes_hang",
        "amdgpu 0000:c4:00.0: amdgpu: remove_all_queues_mes: Failed to remove queue 2 for dev 4": "kfd_remove_queue",
        "amdgpu 0000:c5:00.0: remove_all_kfd_queues_mes: Failed to remove queue 3 for dev 4": "kfd_remove_queue",
        "amdgpu 0000:c5:00.0: GPU reset begin!. Source:  3": "gpu_reset_begin",
        "amdgpu 0000:c4:00.0: amdgpu: Failed to evict queue 4": "kfd_evict",
        "amdgpu: Failed to quiesce KFD": "kfd_quiesce",
        "amdgpu 0000:c5:00.0: amdgpu: Ring gfx_0.0.0 reset failed": "ring_reset_failed",
        "amdgpu 0000:c5:00.0: amdgpu: [drm] AMDGPU device coredump file has been created": "devcoredump",
        "amdgpu 0000:c4:00.0: amdgpu: GPU reset succeeded, trying to resume": "gpu_reset_resume",
    }
    for line, name in lines.items():
        assert match_kernel_line(line) == name, line
    for benign in ("amdgpu 0000:c4:00.0: amdgpu: MES FW version must be >= 0x7f to enable LR "
                   "compute workaround.", "amdgpu 0000:c4:00.0: amdgpu: ring gfx_0.0.0 uses VM "
                   "inv eng 0 on hub 0", "[drm] PCIE GART of 512M enabled (table at 0x80).",
                   "amdgpu 0000:c4:00.0: amdgpu: SMU is resumed successfully!", "PM: suspend exit"):
        assert match_kernel_line(benign) is None, benign


def test_line_timestamps_of_every_format_become_wall_time():
    from daemon.gpu.resets.kerneltime import KernelClock, parse_stamp
    from daemon.gpu.resets.sources import kmsg_record_line
    rec = "3,8812,8210402113,-,caller=T412;amdgpu 0000:c4:00.0: amdgpu: GPU reset begin!\n SUBSYSTEM=pci\n"
    line = kmsg_record_line(rec)
    assert line == "[ 8210.402113] amdgpu 0000:c4:00.0: amdgpu: GPU reset begin!"
    kc = KernelClock(boot_time=1_700_000_000.0)
    now = 1_700_008_215.0
    assert kc.wall(parse_stamp(line, now), now) == pytest.approx(1_700_008_210.402113)
    iso = "2025-03-02T03:41:07.352108+00:00 framework kernel: amdgpu 0000:c4:00.0: amdgpu: GPU reset begin!"
    st = parse_stamp(iso, now)
    assert st.text == "amdgpu 0000:c4:00.0: amdgpu: GPU reset begin!"
    assert st.value == pytest.approx(1740886867.352108)
    assert parse_stamp("2025-03-02T04:41:07.352108+0100 h kernel: x", now).value == pytest.approx(1740886867.352108)
    mono = parse_stamp("[ 8210.402113] framework kernel: amdgpu: GPU reset begin!", now)
    assert (mono.kind, mono.value, mono.text) == ("mono", 8210.402113, "amdgpu: GPU reset begin!")
    local = time.mktime((2025, 3, 2, 3, 41, 7, 0, 0, -1))
    assert parse_stamp("[Sun Mar  2 03:41:07 2025] amdgpu: x", local).value == local
    assert parse_stamp("Mar  2 03:41:07 framework kernel: amdgpu: x", local + 5).value == local
    assert parse_stamp("amdgpu: no stamp", now).kind == "none"


def test_stamps_not_from_this_boot_are_calibrated_on_the_first_line_keeping_their_spacing():
    from daemon.gpu.resets.kerneltime import KernelClock, parse_stamp
    kc = KernelClock(boot_time=1_700_000_000.0)  # the simulated GPU's log counts from its own start
    assert kc.wall(parse_stamp("[   12.000000] amdgpu: x", 1_700_500_000.0), 1_700_500_000.0) == 1_700_500_000.0
    assert kc.calibrated
    assert kc.wall(parse_stamp("[   14.100000] amdgpu: x", 1_700_500_003.0), 1_700_500_003.0) == pytest.approx(1_700_500_002.1)


def test_the_event_time_is_the_kernels_not_the_poll_that_read_it(tmp_path):
    log = tmp_path / "kmsg.log"
    log.write_text("")
    clock = Clock(1_700_008_215.0)  # read 4.6 s after the kernel logged it (a 5 s poll)
    det = ResetDetector({"sources": ["kmsg"]}, kernel_log=str(log), clock=clock,
                        boot_time=1_700_000_000.0)
    log.write_text(kmsg_line(8210.402113, RESET_LINES[0]))
    det.poll()
    clock.t += 25
    [ev] = det.poll()
    assert ev.t == pytest.approx(1_700_008_210.402113)


def test_another_gpus_reset_is_not_counted_when_the_watched_device_is_known(tmp_path):
    """Framework 16: the discrete card (03:00.0) resets; we watch the 780M (c4:00.0)."""
    log = tmp_path / "kmsg.log"
    log.write_text("")
    clock = Clock(1_700_000_100.0)
    det = ResetDetector({"sources": ["kmsg"]}, kernel_log=str(log), clock=clock,
                        boot_time=1_700_000_000.0, device="0000:c4:00.0")
    with open(log, "a") as f:
        for i, line in enumerate(RESET_LINES):
            f.write(kmsg_line(99 + i * 0.01, line.replace("0000:c4:00.0", "0000:03:00.0")))
    det.poll()
    clock.t += 25
    assert det.poll() == []
    with open(log, "a") as f:
        f.write(kmsg_line(124.5, RESET_LINES[0]))
    det.poll()
    clock.t += 25
    assert len(det.poll()) == 1


def test_the_simulated_gpus_resets_are_one_each_with_its_jobs_death(tmp_path):
    """The simulated GPU logs its reset in two halves (reset_duration_s apart in its own,
    compressed, time) with timestamps counted from its start, not from this boot. Two resets
    3 s apart on our clock are 180 s apart on its kernel clock: two resets, not one."""
    from daemon.gpu.simgpu import ABORT_MESSAGE, SimulatedGPU
    clock = Clock(1_700_000_000.0)
    sim = SimulatedGPU(tmp_path, {"time_scale": 60.0, "reset_duration_s": 30.0}, clock=clock,
                       load_fn=lambda: 1.0)
    det = ResetDetector({"sources": ["kmsg", "sensor", "job"]}, kernel_log=str(sim.kmsg),
                        clock=clock, merge_window_s=2.0, log_rate=60.0)
    events = []
    for ticks in (30, 100):  # 3 s, then 10 s, at 0.1 s; the daemon polls every 0.5 s
        sim.inject_reset()
        for tick in range(ticks):
            clock.t += 0.1
            sim.step(0.1)
            if tick == 22:  # the job died ~2 s after the reset (the sim kills it then)
                det.note_job_exit(ABORT_MESSAGE, clock.t)
            if tick % 5 == 4:
                events += det.poll()
    assert sim.resets == 2
    assert [sorted(e.sources) for e in events] == [["job", "kernel"], ["job", "kernel"]]
    assert all(len(e.lines) == 12 for e in events)  # 11 kernel lines + the job's
