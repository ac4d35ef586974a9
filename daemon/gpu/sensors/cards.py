"""Which GPU to watch: every DRM card described, and the one the job uses chosen with a reason.

A laptop may hold a 780M *and* an AMD discrete GPU (Framework 16 + RX 7700S): two amdgpu cards.
Watching the wrong one means watching an idle 34 C chip while the APU overheats. Order of choice:
1. ``[gpu] card`` (the user said so);
2. the GPU the job will use: ``ROCR_VISIBLE_DEVICES`` then ``HIP_VISIBLE_DEVICES`` (or
   ``CUDA_VISIBLE_DEVICES``, which HIP honours) in the job's environment, mapped through the KFD
   topology (ROCm numbers GPUs in KFD node order; each node names its render minor, and the
   render node names its card) -- PCI order when there is no KFD topology;
3. the integrated GPU (this daemon is built for APUs): a known APU PCI id, a small VRAM carve-out,
   the boot VGA device -- in that order of trust;
4. the only amdgpu card.
Cards are numbered naturally (card2 before card10). Nothing here raises: a file that cannot be
read is unknown.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from daemon.gpu.sensors.base import read_text

AMD = "0x1002"
# AMD integrated GPUs (APUs) by PCI device id.
APU_IDS = {
    "0x15bf": "Phoenix (Radeon 780M/760M)", "0x15c8": "Phoenix2 (Radeon 740M)",
    "0x1900": "Hawk Point (Radeon 780M/760M)", "0x1901": "Hawk Point2 (Radeon 740M)",
    "0x150e": "Strix Point (Radeon 890M/880M)", "0x1586": "Strix Halo (Radeon 8060S)",
    "0x1114": "Krackan Point (Radeon 860M)", "0x1681": "Rembrandt (Radeon 680M/660M)",
    "0x164e": "Raphael (Radeon 610M)", "0x13c0": "Granite Ridge (Radeon)",
    "0x1638": "Cezanne (Vega)", "0x1636": "Renoir (Vega)", "0x164c": "Lucienne (Vega)",
    "0x15e7": "Barcelo (Vega)", "0x15d8": "Picasso (Vega)", "0x15dd": "Raven Ridge (Vega)",
    "0x163f": "Van Gogh (Steam Deck)", "0x1506": "Mendocino (Radeon 610M)",
}
SMALL_VRAM = 2 << 30  # a carve-out is usually 512 MiB (BIOS "UMA frame buffer"); a dGPU has 4+ GiB


def natural_key(name: str) -> tuple[str, int]:
    m = re.fullmatch(r"(\D*)(\d+)", name)
    return (m.group(1), int(m.group(2))) if m else (name, -1)


def _read(path: Path) -> str | None:
    try:
        return read_text(path).strip()
    except (OSError, UnicodeDecodeError):
        return None


@dataclass
class Card:
    name: str  # "card1"
    device_dir: Path
    hwmon: Path | None  # the amdgpu hwmon directory
    driver: str | None
    pci_address: str | None  # "0000:c4:00.0"
    vendor: str | None  # "0x1002"
    pci_id: str | None  # "0x15bf"
    boot_vga: bool | None
    vram_bytes: int | None
    runtime_status: str | None  # "active" | "suspended" | ... (None: no runtime PM file)
    render_minor: int | None

    @property
    def amdgpu(self) -> bool:
        return self.hwmon is not None or self.driver == "amdgpu"

    @property
    def apu_name(self) -> str | None:
        return APU_IDS.get(self.pci_id or "") if self.vendor in (None, AMD) else None

    @property
    def suspended(self) -> bool:
        return self.runtime_status in ("suspended", "suspending")

    def summary(self) -> str:
        parts = [self.name, self.pci_address or "?"]
        if self.vendor or self.pci_id:
            parts.append(f"{(self.vendor or '?')[2:]}:{(self.pci_id or '?')[2:]}")
        if self.apu_name:
            parts.append(self.apu_name)
        parts.append(self.driver or ("amdgpu" if self.amdgpu else "no amdgpu"))
        if self.vram_bytes is not None:
            parts.append(f"VRAM {fmt_bytes(self.vram_bytes)}")
        if self.boot_vga:
            parts.append("boot VGA")
        if self.runtime_status and self.runtime_status != "active":
            parts.append(f"runtime {self.runtime_status}")
        return "  ".join(parts)


def fmt_bytes(n: int) -> str:
    return f"{n / (1 << 30):.1f} GiB" if n >= 1 << 30 else f"{n // (1 << 20)} MiB"


def _uevent(dev: Path) -> dict[str, str]:
    out = {}
    for line in (_read(dev / "uevent") or "").splitlines():
        k, _, v = line.partition("=")
        out[k] = v
    return out


def describe_card(drm: Path, name: str) -> Card:
    dev = drm / name / "device"
    hwmon = None
    try:
        for hw in sorted((dev / "hwmon").glob("hwmon*"), key=lambda p: natural_key(p.name)):
            if _read(hw / "name") == "amdgpu":
                hwmon = hw
                break
    except OSError:
        pass
    ue = _uevent(dev)
    driver = ue.get("DRIVER")
    if driver is None and (dev / "driver").is_symlink():
        driver = os.path.basename(os.readlink(dev / "driver"))
    addr = ue.get("PCI_SLOT_NAME")
    if addr is None:
        base = os.path.basename(os.path.realpath(dev))
        addr = base if re.fullmatch(r"[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.\d", base) else None
    vram = _read(dev / "mem_info_vram_total")
    boot_vga = _read(dev / "boot_vga")
    minor = None
    try:
        renders = [n for n in os.listdir(dev / "drm") if re.fullmatch(r"renderD\d+", n)]
        minor = int(renders[0][7:]) if renders else None
    except OSError:
        pass
    return Card(name=name, device_dir=dev, hwmon=hwmon, driver=driver,
                pci_address=addr.lower() if addr else None,
                vendor=_read(dev / "vendor"), pci_id=_read(dev / "device"),
                boot_vga=None if boot_vga is None else boot_vga == "1",
                vram_bytes=int(vram) if vram and vram.isdigit() else None,
                runtime_status=_read(dev / "power" / "runtime_status"), render_minor=minor)


def list_cards(root: str | os.PathLike) -> list[Card]:
    """Every DRM card (not connectors like card1-eDP-1), in natural order."""
    drm = Path(root) / "class" / "drm"
    try:
        names = [n for n in os.listdir(drm) if re.fullmatch(r"card\d+", n)]
    except OSError:
        return []
    return [describe_card(drm, n) for n in sorted(names, key=natural_key)]


def rocm_order(root: str | os.PathLike, cards: list[Card]) -> tuple[list[Card], str]:
    """The amdgpu cards in ROCm's device order, and how that order was found."""
    nodes_dir = Path(root) / "class" / "kfd" / "kfd" / "topology" / "nodes"
    amd = [c for c in cards if c.amdgpu]
    try:
        nodes = sorted(os.listdir(nodes_dir), key=lambda n: int(n) if n.isdigit() else -1)
    except OSError:
        nodes = []
    by_minor = {c.render_minor: c for c in amd if c.render_minor is not None}
    ordered = []
    for n in nodes:
        gpu_id = _read(nodes_dir / n / "gpu_id")
        if not gpu_id or gpu_id == "0":
            continue  # a CPU node
        props = dict(line.split(None, 1) for line in (_read(nodes_dir / n / "properties") or "").splitlines()
                     if len(line.split(None, 1)) == 2)
        minor = props.get("drm_render_minor", "").strip()
        card = by_minor.get(int(minor)) if minor.lstrip("-").isdigit() else None
        if card is not None:
            ordered.append(card)
    if ordered:
        return ordered, "KFD topology"
    return sorted(amd, key=lambda c: c.pci_address or c.name), "PCI order (no KFD topology found)"


def _visible(env: Mapping[str, str], name: str) -> list[str] | None:
    v = env.get(name)
    if v is None or v.strip() == "":
        return None
    return [x.strip() for x in v.split(",") if x.strip()]


def choose_card(root: str | os.PathLike, cards: list[Card], configured: str | None = None,
                env: Mapping[str, str] | None = None) -> tuple[Card | None, str, list[str]]:
    """(the card to watch, why, problems)."""
    amd = [c for c in cards if c.amdgpu]
    if configured:
        c = next((c for c in cards if c.name == configured), None)
        if c is None:
            return None, "", [f"[gpu] card = {configured!r} does not exist (cards: "
                              f"{', '.join(x.name for x in cards) or 'none'})"]
        if not c.amdgpu:
            return None, "", [f"[gpu] card = {configured!r} is not an amdgpu card"]
        return c, f"[gpu] card = {configured!r}", []
    if not amd:
        return None, "", []
    env = os.environ if env is None else env
    problems: list[str] = []
    for var in ("ROCR_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES", "CUDA_VISIBLE_DEVICES"):
        if _visible(env, var) is not None:
            picked, why = _from_visible(root, cards, env)
            if picked is not None:
                return picked, why, []
            problems.append(f"{why}: watching the integrated GPU instead")
            break
    if len(amd) == 1:
        return amd[0], "the only amdgpu card", problems
    best = max(amd, key=lambda c: (c.apu_name is not None,
                                   c.vram_bytes is not None and c.vram_bytes <= SMALL_VRAM,
                                   bool(c.boot_vga), -(c.vram_bytes or 0), -natural_key(c.name)[1]))
    signs = [f"PCI id {best.pci_id} = {best.apu_name}" if best.apu_name else None,
           f"{fmt_bytes(best.vram_bytes)} VRAM carve-out" if best.vram_bytes is not None
           and best.vram_bytes <= SMALL_VRAM else None,
           "boot VGA" if best.boot_vga else None]
    others = ", ".join(c.name for c in amd if c is not best)
    evidence = "; ".join(w for w in signs if w) or "no sign of an APU: the first amdgpu card"
    return best, f"the integrated GPU ({evidence}); also found: {others}", problems


def _from_visible(root: str | os.PathLike, cards: list[Card],
                  env: Mapping[str, str]) -> tuple[Card | None, str]:
    order, how = rocm_order(root, cards)
    rocr = _visible(env, "ROCR_VISIBLE_DEVICES")
    said = []
    if rocr is not None:
        said.append(f"ROCR_VISIBLE_DEVICES={env['ROCR_VISIBLE_DEVICES']}")
        picked = []
        for x in rocr:
            if x.isdigit() and int(x) < len(order):
                picked.append(order[int(x)])
            elif not x.isdigit():
                return None, f"{said[0]} names a GPU by UUID, which this daemon cannot map"
        order = picked
    hip_var = "HIP_VISIBLE_DEVICES" if _visible(env, "HIP_VISIBLE_DEVICES") is not None else \
        "CUDA_VISIBLE_DEVICES"
    hip = _visible(env, hip_var)
    if hip is not None:
        said.append(f"{hip_var}={env[hip_var]}")
        try:
            order = [order[int(x)] for x in hip if int(x) < len(order)]
        except ValueError:
            return None, f"{said[-1]} is not a list of device numbers"
    text = " and ".join(said)
    if not order:
        return None, f"{text} matches no amdgpu card ({how})"
    return order[0], f"the job's GPU: {text} -> {order[0].name} ({how})"
