"""Which card an incident belongs to (issue 26, failure 4): a Framework-16-like machine (the 780M
at 0000:c4:00.0 watched, an RX 7700S at 0000:03:00.0 beside it). The discrete card's kernel
lines, its devcoredump and its WEDGED uevent never count for the 780M; kernels up to ~6.8 print
the first lines of a sequence without a PCI address: they belong to the sequence the next
addressed line names, and when none does, the incident is reported unattributed.
"""

from __future__ import annotations

import os
from pathlib import Path

from daemon.gpu.resets import ResetDetector
from tests.fixtures.sysfs import framework16

BOOT = 1_700_000_000.0
APU, DGPU = "0000:c4:00.0", "0000:03:00.0"


class Clock:
    def __init__(self, t: float):
        self.t = t

    def __call__(self) -> float:
        return self.t


class UeventBoundary:
    """The netlink socket's side: the uevent lines the kernel would send (Uevents.lines())."""

    name = "uevent"

    def __init__(self):
        self.queue: list[str] = []

    def lines(self) -> list[str]:
        out, self.queue = self.queue, []
        return out


def kmsg(k: float, text: str) -> str:
    return f"[{k:12.6f}] {text}\n"


def detector(tmp_path: Path, sources: list[str], **kw) -> tuple[ResetDetector, Clock, Path]:
    log = tmp_path / "kern.log"
    log.write_text("")
    clock = Clock(BOOT + 1000.0)
    det = ResetDetector({"sources": sources}, kernel_log=str(log), clock=clock, boot_time=BOOT,
                        device=APU, cards=2, sysfs_root=str(tmp_path / "sys"), **kw)
    return det, clock, log


def run(det: ResetDetector, clock: Clock, seconds: float = 40.0) -> list:
    out = []
    for _ in range(int(seconds)):
        clock.t += 1.0
        out += det.poll()
    return out


def test_the_discrete_cards_sequence_without_addresses_at_first_is_not_the_780ms(tmp_path):
    det, clock, log = detector(tmp_path, ["kmsg"])
    k = clock.t - BOOT
    with open(log, "a") as f:  # a 6.6 kernel: the timeout lines name no device
        f.write(kmsg(k, "[drm:amdgpu_job_timedout [amdgpu]] *ERROR* ring gfx_0.0.0 timeout, "
                        "signaled seq=4410, emitted seq=4412"))
        f.write(kmsg(k, "[drm:amdgpu_job_timedout [amdgpu]] *ERROR* Process information: "
                        "process Xwayland pid 2200 thread Xwayland:cs0 pid 2230"))
        f.write(kmsg(k + 0.3, f"amdgpu {DGPU}: amdgpu: GPU reset begin!"))
        f.write(kmsg(k + 0.4, f"amdgpu {DGPU}: amdgpu: MODE1 reset"))
        f.write(kmsg(k + 0.9, f"amdgpu {DGPU}: amdgpu: GPU reset(3) succeeded!"))
    assert run(det, clock) == []
    assert any(DGPU in line for line in det.ignored)


def test_a_sequence_naming_no_card_on_two_cards_is_unattributed(tmp_path):
    det, clock, log = detector(tmp_path, ["kmsg"])
    with open(log, "a") as f:
        f.write(kmsg(clock.t - BOOT, "[drm:amdgpu_job_timedout [amdgpu]] *ERROR* ring gfx_0.0.0 "
                                     "timeout, but soft recovered"))
    [ev] = run(det, clock)
    assert (ev.kind, ev.attributed) == ("soft_recovery", False)


def test_the_780ms_own_sequence_still_counts_beside_the_other_cards(tmp_path):
    det, clock, log = detector(tmp_path, ["kmsg"])
    k = clock.t - BOOT
    with open(log, "a") as f:
        f.write(kmsg(k, f"amdgpu {DGPU}: amdgpu: ring gfx_0.0.0 timeout, signaled seq=1, emitted seq=2"))
        f.write(kmsg(k + 0.1, "[drm:amdgpu_mes_unmap_legacy_queue [amdgpu]] *ERROR* failed to "
                              "unmap legacy queue"))  # no device: the dGPU's sequence
        f.write(kmsg(k + 2.0, f"amdgpu {APU}: amdgpu: MES failed to respond to msg=REMOVE_QUEUE"))
        f.write(kmsg(k + 2.1, f"amdgpu {APU}: amdgpu: GPU reset begin!"))
        f.write(kmsg(k + 2.5, f"amdgpu {APU}: amdgpu: GPU reset(1) succeeded!"))
    [ev] = run(det, clock)
    assert (ev.kind, ev.device, ev.attributed, ev.label) == ("reset", APU, True, "MES hang")
    assert not any("unmap legacy queue" in line for line in ev.lines)


def test_the_discrete_cards_devcoredump_and_wedged_uevent_are_not_the_780ms(tmp_path):
    """The Framework-16-like tree: card1 is the dGPU, card2 the 780M. The dGPU dumps (its
    devcdN's failing_device and its card's devcoredump/data) and sends WEDGED=none."""
    root = tmp_path / "sys"
    cards = framework16(root)
    det, clock, _ = detector(tmp_path, ["devcoredump", "uevent"])
    uevents = UeventBoundary()
    det.sources.append(uevents)
    (cards["dgpu"] / "devcoredump").mkdir()
    (cards["dgpu"] / "devcoredump" / "data").write_text("dump")
    devcd = root / "class" / "devcoredump" / "devcd1"
    devcd.mkdir(parents=True)
    (devcd / "failing_device").symlink_to(cards["dgpu"], target_is_directory=True)
    uevents.queue.append(f"change@/devices/pci0000:00/0000:00:01.1/{DGPU}/drm/card1 ACTION=change "
                         f"DEVPATH=/devices/pci0000:00/0000:00:01.1/{DGPU}/drm/card1 "
                         "SUBSYSTEM=drm WEDGED=none DEVNAME=dri/card1")
    assert run(det, clock) == []
    assert len([line for line in det.ignored if DGPU in line]) == 3
    # then the 780M itself dumps: that one is ours
    os.makedirs(cards["apu"] / "devcoredump")
    (cards["apu"] / "devcoredump" / "data").write_text("dump")
    [ev] = run(det, clock)
    assert (ev.kind, ev.device, ev.sources) == ("reset", APU, ["devcoredump"])
    assert ev.lines[0].endswith(f"(device {APU})")
    det.close()  # the real netlink socket the uevent source opened


def test_a_line_read_late_that_turns_a_soft_recovery_into_a_reset_revises_it_once(tmp_path):
    """The journal delivers a reset line 30 s late, after the incident it belongs to (by its
    kernel time) was emitted as a soft recovery: it comes back revised, same id, kind reset."""
    log = tmp_path / "kern.log"
    log.write_text("")
    clock = Clock(BOOT + 1000.0)
    det = ResetDetector({"sources": ["kmsg"]}, kernel_log=str(log), clock=clock, boot_time=BOOT)
    k = clock.t - BOOT
    with open(log, "a") as f:
        f.write(kmsg(k, f"amdgpu {APU}: amdgpu: ring gfx_0.0.0 timeout, but soft recovered"))
    [soft] = run(det, clock, 30)
    assert (soft.kind, soft.revision) == ("soft_recovery", 0)
    with open(log, "a") as f:  # logged 5 s after the recovery, read 25 s later
        f.write(kmsg(k + 5.0, f"amdgpu {APU}: amdgpu: ring comp_1.0.0 timeout, signaled seq=9, "
                              "emitted seq=10"))
        f.write(kmsg(k + 5.1, f"amdgpu {APU}: amdgpu: GPU reset begin!"))
        f.write(kmsg(k + 5.5, f"amdgpu {APU}: amdgpu: GPU reset(1) succeeded!"))
    [again] = run(det, clock, 30)
    assert again.id == soft.id and again.revision == 1
    assert (again.kind, again.kernel_resets, again.label) == ("reset", 1, "ring timeout (compute)")
    assert run(det, clock, 30) == []
