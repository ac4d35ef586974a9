"""Kernel-log parsing and merging of reset sources into one event per reset."""

from __future__ import annotations

from daemon.resets import ResetDetector
from daemon.resets.signatures import match_job_output, match_kernel_line
from daemon.sensors import Reading
from daemon.simgpu import RESET_LINES


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
    clock.t += 3
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
    clock.t += 5
    evs = det.poll()
    assert len(evs) == 1 and sorted(evs[0].sources) == ["job", "kernel", "sensor"]
    clock.t += 600
    with open(log, "a") as f:
        f.write(kmsg_line(700, RESET_LINES[0]))
    det.poll()
    clock.t += 5
    assert len(det.poll()) == 1


def test_a_source_without_permission_is_reported_once_and_clearly():
    det = ResetDetector({"sources": ["kmsg"]}, kmsg_path="/nonexistent/kmsg")
    probs = det.problems()
    assert len(probs) == 1 and "does not exist" in probs[0]
    assert det.problems() == []  # once

    import daemon.resets.sources as src
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
