"""What a GPU reset looks like in text: kernel log lines and the dying job's output.

From the kernel sources (amdgpu_job.c, amdgpu_device.c, amdgpu_mes.c) and ROCm issue threads
(research/amdgpu.md). Match on prefixes: newer kernels append text.
"""

from __future__ import annotations

import re

# (name, pattern) — order matters only for naming; any match is a reset signal.
KERNEL_SIGNATURES: list[tuple[str, re.Pattern[str]]] = [
    (name, re.compile(p)) for name, p in [
        ("ring_timeout", r"ring \S+ timeout"),
        ("ring_reset", r"(Starting \S+ ring reset|Ring \S+ reset (succeeded|failed))"),
        ("mes_hang", r"MES failed to respond to msg="),
        ("mes_remove_queue", r"failed to remove hardware queue from MES"),
        ("mes_unrecoverable", r"MES might be in unrecoverable state"),
        ("kfd_evict", r"Failed to evict process queues"),
        ("kfd_quiesce", r"Failed to quiesce KFD"),
        ("gpu_reset_begin", r"GPU reset begin!"),
        ("mode2_reset", r"MODE2 reset"),
        ("gpu_reset_succeeded", r"GPU reset(\(\d+\))? succeeded"),
        ("gpu_reset_failed", r"GPU reset(\(\d+\))? failed"),
        ("gpu_reset_end", r"GPU reset end with ret = "),
        ("gpu_recovery_failed", r"GPU Recovery Failed"),
        ("device_wedged", r"device wedged, but recovered through reset"),
        ("devcoredump", r"AMDGPU device coredump file has been created"),
    ]
]
# Lines that END a reset sequence: the next match after one of these is a new reset.
SEQUENCE_END = {"gpu_reset_end", "gpu_reset_succeeded", "gpu_reset_failed", "gpu_recovery_failed",
                "device_wedged", "devcoredump"}

JOB_SIGNATURES: list[tuple[str, re.Pattern[str]]] = [
    (name, re.compile(p)) for name, p in [
        ("hw_exception", r"HW Exception by GPU node-\d+"),
        ("memory_access_fault", r"Memory access fault by GPU node-\d+"),
        ("hip_launch_failure", r"(hipErrorLaunchFailure|HIP error: unspecified launch failure)"),
        ("hsa_exception", r"HSA_STATUS_ERROR_EXCEPTION"),
        ("hip_error", r"HIP error: (an illegal memory access|the launch timed out)"),
    ]
]


def match_kernel_line(line: str) -> str | None:
    if "amdgpu" not in line and "drm" not in line and "kfd" not in line.lower():
        return None  # only the GPU driver's lines count (cheap pre-filter)
    for name, pat in KERNEL_SIGNATURES:
        if pat.search(line):
            return name
    return None


def match_job_output(text: str) -> str | None:
    """The ROCm/HIP dying message in a job's output, as "<name>: <line>", or None."""
    for line in reversed(text.splitlines()):
        for name, pat in JOB_SIGNATURES:
            if pat.search(line):
                return f"{name}: {line.strip()[:200]}"
    return None
