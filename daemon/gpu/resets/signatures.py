"""What a GPU incident looks like in text: kernel log lines and the dying job's output.

Each kernel signature carries its *effect*, read from the code path that prints it (the kernel
sources cited in docs/amdgpu-fixes.md), not from one log's text:

- ``hang``: the MES firmware stopped answering or KFD could not evict/remove queues
  (mes_v11_0.c, kfd_device_queue_manager.c). On the 780M these end in a full reset.
- ``timeout``: ``ring X timeout, signaled seq=...``: amdgpu_job_timedout found a hung job and
  soft recovery did NOT work; what follows is a per-ring reset, a full reset
  (amdgpu_device_gpu_recover) or, with gpu_recovery=0, nothing. A hard hang either way.
- ``soft``: ``ring X timeout, but soft recovered``: amdgpu_job_timedout returns right after it
  (``goto exit``), before any ring or GPU reset: the waves were killed, nothing was reset.
- ``begin``: ``GPU reset begin!`` (amdgpu_device_gpu_recover): one kernel reset starts.
- ``reset``: a reset happening or done (MODE1/MODE2/BACO, ``Ring X reset succeeded`` -- a
  per-ring reset, which amdgpu counts in gpu_reset_counter and announces with a WEDGED uevent).
- ``end``: a full reset finished, well or badly (``GPU reset(N) succeeded!``, ``failed``...).
- ``fault``: a GPU page fault (gmc_v9/v10/v11/v12 process_interrupt prints ``[gfxhub] page
  fault (...)``, the task, the address and the L2 protection fault status, then returns: no
  reset), or an illegal opcode/register access in a command stream (gfx_v*_priv_*_irq).
- ``info``: lines that belong to an incident but say nothing about its kind: the task line
  (``Process ... pid ... thread ... pid``, printed for faults AND timeouts), the core dump
  (amdgpu_job_core_dump runs at every job timeout, *before* soft recovery is tried), the
  start or failure of a per-ring reset (what follows decides).
Match on substrings, not whole lines: kernels add and drop prefixes ("amdgpu: ", "[drm] ",
"*ERROR*") and append text ("GPU reset begin!. Source:  3").
Lines of the suspend/resume machinery are ``pm_enter``/``pm_exit``: an APU resuming from S3
logs "MODE2 reset" as part of a normal resume (``BENIGN_IN_PM``), which is not a GPU fault.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_SIGS: list[tuple[str, str, str]] = [
    # MES firmware hang, the usual 780M fault. Variants: 6.2-6.5 "MES failed to response msg=3",
    # 6.6+ "MES failed to respond to msg=REMOVE_QUEUE", 6.13+ "MES(1) failed to respond to msg=...".
    ("mes_hang", "hang", r"MES(\(\d+\))? failed to respond to msg=|MES failed to response msg=\d+"),
    ("mes_remove_queue", "hang", r"failed to remove hardware queue from MES"),
    ("mes_unrecoverable", "hang", r"MES might be in unrecoverable state"),
    ("mes_suspend", "hang", r"failed to suspend (all )?gangs|Suspending all queues failed"),
    ("kfd_remove_queue", "hang", r"remove_all(_kfd)?_queues_mes: Failed to remove queue"),
    ("kfd_evict", "hang", r"Failed to evict (process queues|queue \d+)"),
    ("kfd_quiesce", "hang", r"Failed to quiesce KFD"),
    ("unmap_queue_failed", "hang", r"failed to unmap legacy queue|failed to halt cp gfx"),
    ("soft_recovered", "soft", r"ring \S+ timeout, but soft recovered"),
    ("ring_timeout", "timeout", r"ring \S+ timeout(?!, but soft)"),
    ("ip_hung", "timeout", r"IP block:\S+ is hung!"),
    ("gpu_reset_begin", "begin", r"GPU reset begin!"),
    ("mode2_reset", "reset", r"\bMODE2 reset\b"),
    ("mode1_reset", "reset", r"\bMODE1 reset\b|GPU (psp )?mode1 reset\b(?! failed)"),
    ("baco_reset", "reset", r"\bBACO reset\b"),
    ("vram_lost", "reset", r"VRAM is lost due to GPU reset"),
    ("ring_reset_succeeded", "reset", r"Ring \S+ reset succeeded"),
    ("gpu_reset_resume", "end", r"GPU reset succeeded, trying to resume"),
    ("gpu_reset_succeeded", "end", r"GPU reset\(\d+\) succeeded"),
    ("gpu_reset_failed", "end", r"GPU reset\(\d+\) failed|GPU mode1 reset failed"),
    ("gpu_reset_end", "end", r"GPU reset end with ret = "),
    ("gpu_recovery_failed", "end", r"GPU Recovery Failed"),
    ("device_wedged", "end", r"device wedged, but recovered through reset"),
    ("page_fault", "fault", r"\[(gfxhub|mmhub)\d*\] (no-)?(retry )?page fault"),
    ("protection_fault", "fault", r"VM_L2_PROTECTION_FAULT_STATUS"),
    ("illegal_command", "fault", r"Illegal (opcode|register access|instruction) in command stream"),
    ("fault_address", "info", r"in page starting at address"),
    ("process_info", "info", r"Process information: process|amdgpu:\s+Process \S+ pid \d+ thread"),
    ("ring_reset", "info", r"Starting \S+ ring reset|reset compute queue"),
    ("ring_reset_failed", "info", r"Ring \S+ reset fail(ed|ure)"),
    ("devcoredump", "info", r"AMDGPU device coredump file has been created|"
                            r"Check your /sys/class/drm/card\d+/device/devcoredump/data"),
    ("dump_ip_state", "info", r"Dumping IP State"),
]
KERNEL_SIGNATURES: list[tuple[str, str, re.Pattern[str]]] = [
    (name, effect, re.compile(p)) for name, effect, p in _SIGS]
EFFECTS = {name: effect for name, effect, _ in _SIGS}
# what the incident's label says, by the signature that shows its cause
CAUSES = {"hang": "MES hang", "fault": "page fault"}
RING_CLASSES = (("gfx", "gfx"), ("comp", "compute"), ("sdma", "sdma"), ("vcn", "video"),
                ("jpeg", "video"), ("mes", "MES"), ("kiq", "KIQ"))
RING_NAME = re.compile(r"\bring (\S+) timeout")


def ring_class(text: str) -> str | None:
    """"gfx", "compute", "sdma"... for the ring a timeout line names ("comp_1.3.0" -> compute)."""
    m = RING_NAME.search(text)
    if not m:
        return None
    name = m.group(1)
    return next((cls for prefix, cls in RING_CLASSES if name.startswith(prefix)), name)


# System sleep: from "PM: suspend entry" to a little after "PM: suspend exit" the GPU is being
# powered down and back up; its MODE1/MODE2 reset (and that reset's own success or failure
# line) then is the suspend/resume path, not a fault. A hang or a fault inside it still is one.
PM_ENTER = re.compile(r"PM: (suspend|hibernation) entry|PM: Preparing system for sleep|"
                      r"ACPI: PM: Preparing to enter system sleep state|"
                      r"ACPI: PM: Waking up from system sleep state|PM: resume from suspend-to-idle")
PM_EXIT = re.compile(r"PM: (suspend|hibernation) exit")
BENIGN_IN_PM = {"mode2_reset", "mode1_reset", "baco_reset", "gpu_reset_failed",
                "gpu_reset_resume", "gpu_reset_succeeded"}

# The PCI address amdgpu prefixes its lines with ("amdgpu 0000:c4:00.0: ..."); a uevent's
# DEVPATH and a devcoredump's failing device name it too (ANY_PCI: the last one on the line).
PCI_ADDRESS = re.compile(r"\bamdgpu (?P<addr>[0-9a-fA-F]{4}:[0-9a-fA-F]{2}:[0-9a-fA-F]{2}\.\d)\b")
ANY_PCI = re.compile(r"\b[0-9a-fA-F]{4}:[0-9a-fA-F]{2}:[0-9a-fA-F]{2}\.\d\b")


@dataclass(frozen=True)
class KernelMatch:
    name: str  # e.g. "mes_hang", or "pm_enter"/"pm_exit"
    role: str  # the effect (hang | timeout | soft | begin | reset | end | fault | info) or pm_*


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
    for name, effect, pat in KERNEL_SIGNATURES:
        if pat.search(text):
            return KernelMatch(name, effect)
    return None


def match_kernel_line(line: str) -> str | None:
    """The signature name of a GPU-reset kernel line, or None (PM lines are not signatures)."""
    m = classify_kernel_line(line)
    return m.name if m is not None and not m.role.startswith("pm_") else None


def pci_address(text: str) -> str | None:
    m = PCI_ADDRESS.search(text)
    return m.group("addr").lower() if m else None


def any_pci_address(text: str) -> str | None:
    """The device a uevent or devcoredump line names: the last PCI address in it (a DEVPATH
    lists the bridges first, the GPU last)."""
    found = ANY_PCI.findall(text)
    return found[-1].lower() if found else None


# What the dying job's message says happened, when no kernel line says it better: ROCr prints
# "HW Exception ... GPU Hang" when its queue was hung and reset; a memory access fault (KFD
# signalled a VM fault) or a HIP error is a GPU fault of the job, not a reset.
JOB_EFFECTS = {"hw_exception": "hang"}
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
