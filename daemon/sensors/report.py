"""`nightshift sensors`: what was found, current values, and why anything was not."""

from __future__ import annotations

import grp
import os
from typing import Any

from daemon.sensors import open_sensor


def _groups() -> set[str]:
    names = set()
    for gid in os.getgroups() + [os.getgid()]:
        try:
            names.add(grp.getgrgid(gid).gr_name)
        except KeyError:
            pass
    return names


def _fmt(v: float | None, unit: str) -> str:
    return "unknown" if v is None else f"{v:.1f} {unit}"


def sensors_report(cfg: dict[str, Any]) -> tuple[str, int]:
    gpu = dict(cfg["gpu"])
    if gpu["sensor"] == "simulated":
        return ("sensor = \"simulated\": the simulated GPU writes its own sysfs tree when the daemon "
                "runs (nightshift run / nightshift demo); nothing to read now.", 0)
    s = open_sensor(gpu)
    r = s.read()
    lines = [f"GPU sensor: {s.name} (sysfs root {gpu['sysfs_root']})"]
    if getattr(s, "device_dir", None):
        lines.append(f"  amdgpu device: {s.device_dir}")
    lines += [f"  edge:  {_fmt(r.edge_c, 'C')}", f"  Tctl:  {_fmt(r.tctl_c, 'C')}",
              f"  power: {_fmt(r.power_w, 'W')}", f"  busy:  {_fmt(r.busy_pct, '%')}",
              f"  clock: {_fmt(r.sclk_mhz, 'MHz')}"]
    if r.resetting:
        lines.append("  reads fail with EPERM: a GPU reset is in progress")
    for k, v in sorted(r.errors.items()):
        lines.append(f"  not read: {k}: {v}")
    for p in s.problems:
        lines.append(f"  why: {p}")
    if os.path.exists("/dev/kfd") or os.path.isdir("/dev/dri"):
        g = _groups()
        for need in ("render", "video"):
            if need not in g and os.geteuid() != 0:
                lines.append(f"  note: this user is not in the {need} group: add it "
                             f"(sudo usermod -aG {need} $USER) to use the GPU")
    else:
        lines.append("  no /dev/dri or /dev/kfd: this machine has no GPU visible (fine for tests)")
    from daemon.resets import ResetDetector
    det = ResetDetector(cfg["resets"], sysfs_root=gpu["sysfs_root"], kernel_log=cfg["resets"]["kernel_log"])
    lines.append("Reset sources:")
    for src in det.sources:
        lines.append(f"  {src.name}: ok")
    for prob in det.all_problems():
        lines.append(f"  missing: {prob}")
    lines.append("  sensor: EPERM on amdgpu reads" + ("" if s.name == "amdgpu-sysfs" else " (needs amdgpu sysfs)"))
    lines.append("  job: the job's dying ROCm/HIP message")
    det.close()
    return "\n".join(lines), 0
