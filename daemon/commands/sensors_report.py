"""`nightshift sensors`: every GPU found (the watched one marked, and why), current values, and
why anything was not found or read."""

from __future__ import annotations

import grp
import os

from daemon.gpu.sensors import open_sensor
from daemon.gpu.sensors.base import Reading, read_number, read_text
from daemon.gpu.sensors.cards import Card, list_cards
from daemon.policy.cfgtypes import Config


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


def _card_values(c: Card) -> str:
    """Edge temperature and power of a card that is not watched; a sleeping one is not woken."""
    if c.suspended:
        return "runtime-suspended (idle; not read, so not woken)"
    if c.hwmon is None:
        return "no amdgpu hwmon"
    r = Reading(t=0.0)
    edge, _ = read_number(read_text, c.hwmon / "temp1_input", 1000.0, r.errors, "edge")
    power, _ = read_number(read_text, c.hwmon / "power1_average", 1e6, r.errors, "power")
    if power is None:
        power, _ = read_number(read_text, c.hwmon / "power1_input", 1e6, r.errors, "power")
    return f"edge {_fmt(edge, 'C')}, power {_fmt(power, 'W')}"


def cards_report(root: str, watched: str | None) -> list[str]:
    cards = list_cards(root)
    if not cards:
        return [f"GPU cards: none under {root}/class/drm"]
    lines = ["GPU cards (* = watched):"]
    for c in cards:
        mark = "*" if c.name == watched else " "
        lines.append(f"  {mark} {c.summary()}")
        if c.amdgpu:
            lines.append(f"      {_card_values(c)}")
    return lines


def sensors_report(cfg: Config) -> tuple[str, int]:
    gpu = cfg["gpu"].copy()
    if gpu["sensor"] == "simulated":
        return ("sensor = \"simulated\": the simulated GPU writes its own sysfs tree when the daemon "
                "runs (nightshift run / nightshift demo); nothing to read now.", 0)
    env = {**os.environ, **{k: str(v) for k, v in (cfg.get("job", {}).get("env") or {}).items()}}
    s = open_sensor(gpu, env=env)
    r = s.read()
    how = (f'[gpu] sensor = "auto" -> {s.name}' if s.configured == "auto"
           else f'[gpu] sensor = "{s.configured}"')
    lines = [f"GPU sensor: {how} (sysfs root {gpu['sysfs_root']})"]
    lines += cards_report(gpu["sysfs_root"], s.card)
    if s.card:
        lines.append(f"  watching {s.card}: {s.card_reason}")
        lines.append("  (set [gpu] card in the config to watch another one)")
    if s.device_dir is not None:
        lines.append(f"  amdgpu device: {s.device_dir}")
        from daemon.gpu.clockcap import read_od_range
        rng = read_od_range(s.device_dir)
        if rng is not None:
            lines.append(f"  clock cap range (OD_RANGE): {rng[0]}-{rng[1]} MHz")
    lines += [f"  edge:  {_fmt(r.edge_c, 'C')}", f"  Tctl:  {_fmt(r.tctl_c, 'C')}",
              f"  power: {_fmt(r.power_w, 'W')}", f"  busy:  {_fmt(r.busy_pct, '%')}",
              f"  clock: {_fmt(r.sclk_mhz, 'MHz')}"]
    if r.resetting:
        lines.append("  reads fail with EPERM: a GPU reset is in progress")
    for k, v in sorted(r.errors.items()):
        lines.append(f"  not read: {k}: {v}")
    for p in s.problems:
        lines.append(f"  problem: {p}")
    if os.path.exists("/dev/kfd") or os.path.isdir("/dev/dri"):
        g = _groups()
        for need in ("render", "video"):
            if need not in g and os.geteuid() != 0:
                lines.append(f"  note: this user is not in the {need} group: add it "
                             f"(sudo usermod -aG {need} $USER) to use the GPU")
    else:
        lines.append("  no /dev/dri or /dev/kfd: this machine has no GPU visible (fine for tests)")
    from daemon.gpu.resets import ResetDetector
    det = ResetDetector(cfg["resets"], sysfs_root=gpu["sysfs_root"], kernel_log=cfg["resets"]["kernel_log"])
    lines.append("Reset sources:")
    for src in det.sources:
        lines.append(f"  {src.name}: ok")
    for prob in det.all_problems():
        lines.append(f"  missing: {prob}")
    if "sensor" not in det.uses:
        lines.append("  sensor: off ([resets] sources)")
    elif s.name == "amdgpu-sysfs":
        lines.append("  sensor: ok (an amdgpu read failing with EPERM, card not suspended, "
                     "counts as a reset)")
    else:
        lines.append(f"  sensor: not available: it needs the amdgpu sysfs sensor (this machine "
                     f"uses {s.name}), so failing reads cannot signal a reset")
    lines.append("  job: ok (the job's dying ROCm/HIP message: \"GPU Hang\" a reset, a memory "
                 "access fault a GPU fault)" if "job" in det.uses else
                 "  job: off ([resets] sources)")
    det.close()
    if s.name != "amdgpu-sysfs":  # nothing real to watch: the way to try the tool anyway
        lines.append('To try nightshift without an AMD GPU: `nightshift demo`, or [gpu] sensor = '
                     '"simulated" in the config (a simulated 780M that heats and resets)')
    return "\n".join(lines), 0
