"""What a GPU reset looks like in text: kernel log lines and the dying job's output.

From the kernel sources (amdgpu_job.c, amdgpu_device.c, amdgpu_mes.c, mes_v11_0.c, kfd) and real
780M / gfx11 logs of several kernel versions (research/amdgpu.md, ROCm issue threads). Match on
substrings, not whole lines: kernels add and drop prefixes ("amdgpu: ", "[drm] ", "*ERROR*") and
append text ("GPU reset begin!. Source:  3").

Each kernel signature has a role in a reset *sequence* (the detector groups by kernel time):
- ``start``: can open a sequence (a hang being detected or a reset starting);
- ``cont``: belongs to a sequence (queue eviction noise, devcoredump, a failed per-ring reset);
  it opens one only when there is nothing to join;
- ``end``: the reset finished, well or badly; later lines only join for a short trailer.
Lines of the suspend/resume machinery are ``pm_enter``/``pm_exit``: an APU resuming from S3
logs "MODE2 reset" as part of a normal resume (``BENIGN_IN_PM``), which is not a GPU fault.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_SIGS: list[tuple[str, str, str]] = [
    # MES firmware hang, the usual 780M fault. Variants: 6.2-6.5 "MES failed to response msg=3",
    # 6.6+ "MES failed to respond to msg=REMOVE_QUEUE", 6.13+ "MES(1) failed to respond to msg=...".
    ("mes_hang", "start", r"MES(\(\d+\))? failed to respond to msg=|MES failed to response msg=\d+"),
    ("mes_remove_queue", "start", r"failed to remove hardware queue from MES"),
    ("mes_unrecoverable", "start", r"MES might be in unrecoverable state"),
    ("kfd_remove_queue", "start", r"remove_all(_kfd)?_queues_mes: Failed to remove queue"),
    ("kfd_evict", "start", r"Failed to evict (process queues|queue \d+)"),
    ("kfd_quiesce", "start", r"Failed to quiesce KFD"),
    ("ring_timeout", "start", r"ring \S+ timeout"),
    ("ring_reset", "start", r"Starting \S+ ring reset"),
    ("gpu_reset_begin", "start", r"GPU reset begin!"),
    ("mode2_reset", "start", r"\bMODE2 reset\b"),
    ("mode1_reset", "start", r"\bMODE1 reset\b"),
    ("ip_hung", "cont", r"IP block:\S+ is hung!"),
    ("ring_reset_failed", "cont", r"Ring \S+ reset failed"),
    ("unmap_queue_failed", "cont", r"failed to unmap legacy queue|failed to halt cp gfx"),
    ("process_info", "cont", r"Process information: process|amdgpu:\s+Process \S+ pid \d+ thread"),
    ("devcoredump", "cont", r"AMDGPU device coredump file has been created|"
                            r"Check your /sys/class/drm/card\d+/device/devcoredump/data"),
    ("dump_ip_state", "cont", r"Dumping IP State"),
    ("vram_lost", "cont", r"VRAM is lost due to GPU reset"),
    ("gpu_reset_resume", "end", r"GPU reset succeeded, trying to resume"),
    ("gpu_reset_succeeded", "end", r"GPU reset\(\d+\) succeeded"),
    ("gpu_reset_failed", "end", r"GPU reset\(\d+\) failed"),
    ("gpu_reset_end", "end", r"GPU reset end with ret = "),
    ("gpu_recovery_failed", "end", r"GPU Recovery Failed"),
    ("device_wedged", "end", r"device wedged, but recovered through reset"),
    ("ring_reset_succeeded", "end", r"Ring \S+ reset succeeded"),
]
KERNEL_SIGNATURES: list[tuple[str, str, re.Pattern[str]]] = [
    (name, role, re.compile(p)) for name, role, p in _SIGS]

# System sleep: from "PM: suspend entry" to a little after "PM: suspend exit" the GPU is being
# powered down and back up; its MODE1/MODE2 reset then is the resume path, not a fault.
PM_ENTER = re.compile(r"PM: (suspend|hibernation) entry|PM: Preparing system for sleep|"
                      r"ACPI: PM: Preparing to enter system sleep state|"
                      r"ACPI: PM: Waking up from system sleep state|PM: resume from suspend-to-idle")
PM_EXIT = re.compile(r"PM: (suspend|hibernation) exit")
BENIGN_IN_PM = {"mode2_reset", "mode1_reset"}

# The PCI address amdgpu prefixes its lines with ("amdgpu 0000:c4:00.0: ...").
PCI_ADDRESS = re.compile(r"\bamdgpu (?P<addr>[0-9a-fA-F]{4}:[0-9a-fA-F]{2}:[0-9a-fA-F]{2}\.\d)\b")


@dataclass(frozen=True)
class KernelMatch:
    name: str  # e.g. "mes_hang", or "pm_enter"/"pm_exit"
    role: str  # start | cont | end | pm_enter | pm_exit


def classify_kernel_line(text: str) -> KernelMatch | None:
    """The role of one kernel log message (without its timestamp) in a reset, or None."""
    if "PM: " in text:
        if PM_EXIT.search(text):
            return KernelMatch("pm_exit", "pm_exit")
        if PM_ENTER.search(text):
            return KernelMatch("pm_enter", "pm_enter")
    low = text.lower()
    if "amdgpu" not in low and "drm" not in low and "kfd" not in low:
        return None  # only the GPU driver's lines count (cheap pre-filter)
    for name, role, pat in KERNEL_SIGNATURES:
        if pat.search(text):
            return KernelMatch(name, role)
    return None


def match_kernel_line(line: str) -> str | None:
    """The signature name of a GPU-reset kernel line, or None (PM lines are not signatures)."""
    m = classify_kernel_line(line)
    return m.name if m is not None and m.role in ("start", "cont", "end") else None


def pci_address(text: str) -> str | None:
    m = PCI_ADDRESS.search(text)
    return m.group("addr").lower() if m else None


JOB_SIGNATURES: list[tuple[str, re.Pattern[str]]] = [
    (name, re.compile(p)) for name, p in [
        ("hw_exception", r"HW Exception by GPU node-\d+"),
        ("memory_access_fault", r"Memory access fault by GPU node-\d+"),
        ("hip_launch_failure", r"(hipErrorLaunchFailure|HIP error: unspecified launch failure)"),
        ("hsa_exception", r"HSA_STATUS_ERROR_EXCEPTION"),
        ("hip_error", r"HIP error: (an illegal memory access|the launch timed out)"),
    ]
]


def match_job_output(text: str) -> str | None:
    """The ROCm/HIP dying message in a job's output, as "<name>: <line>", or None."""
    for line in reversed(text.splitlines()):
        for name, pat in JOB_SIGNATURES:
            if pat.search(line):
                return f"{name}: {line.strip()[:200]}"
    return None
