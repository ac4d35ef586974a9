"""`nightshift doctor`: what on this machine would make a night on a 780M fail, and the fix.

One line per check: ``ok``, ``warn`` (matters only in some setups, or unknown), ``PROBLEM``
(the night will go wrong) or ``skip``, with the exact command or setting that fixes it. Nothing
is changed and nothing remote is contacted (the offload credentials are checked on disk only).
Every path comes from ``Machine`` (``/sys``, ``/proc``, ``/dev``, the linger dir, the home), so
tests point it at fake trees. The facts behind the kernel and firmware checks, with their
sources: docs/amdgpu-fixes.md.

Checks: the user's groups and /dev/kfd; the GPU (and its gfx target from the KFD topology);
torch sees it (a ROCm build; ``HSA_OVERRIDE_GFX_VERSION=11.0.0`` for gfx1103); the kernel and
MES firmware against the known 780M MES-hang fixes and workarounds (``amdgpu.cwsr_enable=0``);
the overdrive bit and write access to ``pp_od_clk_voltage`` (the governor); the reset sources
readable; linger for a user service; free disk for 3 checkpoints; the offload credentials.
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from daemon.policy.cfgtypes import Config, SshConfig

if TYPE_CHECKING:
    from daemon.gpu.sensors.cards import Card  # imported where used: doctor runs without sysfs

OK, WARN, PROBLEM, SKIP = "ok", "warn", "problem", "skip"
GFX1103 = "110003"  # KFD's gfx_target_version for gfx1103 (Phoenix / Hawk Point: 780M, 760M)
# MES firmware versions known to hang, by gfx target (docs/amdgpu-fixes.md, ROCm issue threads)
BAD_MES = {"110501": {0x83: "MES 0x83 hangs Strix Halo (gfx1151): linux-firmware reverted it "
                            "to 0x80 on 2025-12-01 (ROCm/legacy-rocm-build#5724)"}}
UDEV_RULE = "systemd/70-nightshift-amdgpu.rules"
TORCH_PROBE = ("import json, torch\n"
               "ok = torch.cuda.is_available()\n"
               "print(json.dumps({'version': torch.__version__, 'hip': torch.version.hip, "
               "'cuda': torch.version.cuda, 'available': ok, "
               "'devices': [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] "
               "if ok else []}))\n")


@dataclass(frozen=True)
class Check:
    name: str
    status: str  # ok | warn | problem | skip
    detail: str
    fix: str = ""

    def line(self) -> str:
        word = "PROBLEM" if self.status == PROBLEM else self.status
        return f"{word:<8}{self.name:<10}{self.detail}" + (f"  fix: {self.fix}" if self.fix else "")


@dataclass
class Machine:
    """Where the doctor looks (the real machine by default)."""
    sys_root: Path = Path("/sys")
    proc_root: Path = Path("/proc")
    dev_root: Path = Path("/dev")
    linger_dir: Path = Path("/var/lib/systemd/linger")
    home: Path = field(default_factory=Path.home)
    user: str = field(default_factory=lambda: pwd.getpwuid(os.getuid()).pw_name)
    uid: int = field(default_factory=os.getuid)
    gids: frozenset[int] = field(default_factory=lambda: frozenset(os.getgroups()) | {os.getgid()})
    env: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))
    python: str | None = None  # the job's interpreter (default: the job command's, or ours)
    disk_free: Callable[[Path], int] = lambda p: shutil.disk_usage(p).free
    probe_timeout_s: float = 120.0

    def group_names(self) -> set[str]:
        out = set()
        for g in self.gids:
            try:
                out.add(grp.getgrgid(g).gr_name)
            except KeyError:
                pass
        return out


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None


def _may(m: Machine, path: Path, bits: int) -> bool:
    """Whether ``m``'s user may read (4) / write (2) ``path`` by its mode bits (not os.access:
    the answer is about the user the daemon runs as, and root passes every os.access)."""
    try:
        st = path.stat()
    except OSError:
        return False
    if m.uid == 0:
        return True
    shift = 6 if st.st_uid == m.uid else 3 if st.st_gid in m.gids else 0
    return all((st.st_mode >> shift) & b for b in (4, 2) if bits & b)


def _group_of(path: Path) -> str:
    try:
        return grp.getgrgid(path.stat().st_gid).gr_name
    except (OSError, KeyError):
        return "?"


# -- the checks -----------------------------------------------------------------------------
def check_groups(m: Machine) -> Check:
    if m.uid == 0:
        return Check("groups", OK, "running as root")
    have = m.group_names()
    missing = [g for g in ("render", "video") if g not in have]
    if not missing:
        return Check("groups", OK, f"{m.user} is in render and video")
    return Check("groups", PROBLEM, f"{m.user} is not in {' and '.join(missing)} (ROCm opens "
                 "/dev/kfd and /dev/dri/renderD* through them)",
                 f"sudo usermod -aG render,video {m.user}, then log out and in")


def check_kfd(m: Machine) -> Check:
    kfd = m.dev_root / "kfd"
    if not kfd.exists():
        return Check("kfd", PROBLEM, f"{kfd} does not exist: no ROCm compute interface (the "
                     "amdgpu driver is not loaded, or the kernel lacks CONFIG_HSA_AMD)",
                     "sudo modprobe amdgpu; use a distribution kernel with CONFIG_HSA_AMD=y")
    if _may(m, kfd, 6):
        return Check("kfd", OK, f"{kfd} is readable and writable by {m.user}")
    return Check("kfd", PROBLEM, f"{kfd} is not read-write for {m.user} (group "
                 f"{_group_of(kfd)})", f"sudo usermod -aG {_group_of(kfd)} {m.user}, then log "
                 "out and in")


def _gfx_targets(m: Machine) -> list[str]:
    nodes = m.sys_root / "class" / "kfd" / "kfd" / "topology" / "nodes"
    out = []
    for props in sorted(nodes.glob("*/properties")):
        for line in (_read(props) or "").splitlines():
            key, _, value = line.partition(" ")
            if key == "gfx_target_version" and value.strip() not in ("", "0"):
                out.append(value.strip())
    return out


def watched_card(m: Machine, cfg: Config) -> tuple[Card | None, str]:
    from daemon.gpu.sensors.cards import choose_card, list_cards
    cards = list_cards(m.sys_root)
    card, why, _ = choose_card(m.sys_root, cards, cfg["gpu"].get("card"),
                               {**m.env, **cfg["job"].get("env", {})})
    return card, why


def check_gpu(m: Machine, cfg: Config) -> Check:
    card, why = watched_card(m, cfg)
    if card is None:
        return Check("gpu", PROBLEM, "no amdgpu card found in "
                     f"{m.sys_root / 'class' / 'drm'}", "check that the amdgpu driver is loaded "
                     "(lsmod | grep amdgpu) and [gpu] card names an existing card")
    targets = _gfx_targets(m)
    gfx = f", gfx target {', '.join(_gfx_name(t) for t in targets)}" if targets else ""
    return Check("gpu", OK, f"{card.name} ({card.apu_name or card.pci_id}): {why.split(';')[0]}{gfx}")


def _gfx_name(version: str) -> str:
    """KFD's gfx_target_version (110003) as ROCm names it (gfx1103)."""
    try:
        v = int(version)
    except ValueError:
        return version
    return f"gfx{v // 10000}{(v // 100) % 100:x}{v % 100:x}"


def job_python(m: Machine, cfg: Config) -> str:
    if m.python:
        return m.python
    cmd = cfg["job"].get("command") or []
    if cmd and Path(cmd[0]).name.startswith("python"):
        # as the job runs it: the daemon's own bin dir first on PATH (daemon/core/starting.py: JobStarter.env)
        path = os.path.dirname(sys.executable) + os.pathsep + m.env.get("PATH", os.defpath)
        return shutil.which(cmd[0], path=path) or cmd[0]
    return sys.executable


def check_torch(m: Machine, cfg: Config) -> Check:
    env = {**m.env, **cfg["job"].get("env", {})}
    py = job_python(m, cfg)
    gfx1103 = GFX1103 in _gfx_targets(m)
    override = env.get("HSA_OVERRIDE_GFX_VERSION")
    try:
        r = subprocess.run([py, "-c", TORCH_PROBE], capture_output=True, text=True, env=env,
                           timeout=m.probe_timeout_s, cwd=cfg["job"].get("workdir") or None)
    except (OSError, subprocess.TimeoutExpired) as e:
        return Check("torch", PROBLEM, f"could not run {py}: {e}", "set [job] command to the "
                     "python that has torch")
    rocm_fix = ("pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/rocm6.4 "
                "(the ROCm index matching your ROCm)")
    if r.returncode != 0:
        last = (r.stderr.strip().splitlines() or ["no output"])[-1][:160]
        if "No module named 'torch'" in r.stderr:
            return Check("torch", PROBLEM, f"{py} has no torch", rocm_fix)
        return Check("torch", PROBLEM, f"importing torch failed: {last}", rocm_fix)
    try:
        info = json.loads(r.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return Check("torch", PROBLEM, f"unexpected output from {py}: {r.stdout[-160:]!r}")
    if not info.get("hip"):
        kind = f"a CUDA build ({info.get('cuda')})" if info.get("cuda") else "a CPU-only build"
        return Check("torch", PROBLEM, f"torch {info.get('version')} is {kind}: it cannot use "
                     "an AMD GPU", rocm_fix)
    if not info.get("available"):
        if gfx1103 and override != "11.0.0":
            return Check("torch", PROBLEM, f"torch {info.get('version')} (ROCm {info['hip']}) "
                         "sees no GPU; the 780M is gfx1103, which most ROCm builds only run as "
                         "gfx1100", '[job] env HSA_OVERRIDE_GFX_VERSION = "11.0.0"')
        return Check("torch", PROBLEM, f"torch {info.get('version')} (ROCm {info['hip']}) sees "
                     "no GPU", "check the groups and /dev/kfd checks above; rocminfo must list "
                     "the GPU")
    note = " (HSA_OVERRIDE_GFX_VERSION=11.0.0)" if override else ""
    return Check("torch", OK, f"torch {info.get('version')} (ROCm {info['hip']}) sees "
                 f"{', '.join(info.get('devices') or ['the GPU'])}{note}")


def check_kernel(m: Machine, cfg: Config) -> Check:
    release = _read(m.proc_root / "sys" / "kernel" / "osrelease") or "unknown"
    card, _ = watched_card(m, cfg)
    mes = _read(card.device_dir / "fw_version" / "mes_fw_version") if card else None
    detail = f"kernel {release}, MES firmware {mes or 'unknown'}"
    for target in _gfx_targets(m):
        for version, why in BAD_MES.get(target, {}).items():
            if mes is not None and _int(mes) == version:
                return Check("kernel", PROBLEM, f"{detail}: {why}", "update linux-firmware (or "
                             "put the previous amdgpu MES firmware back) and reboot")
    if GFX1103 in _gfx_targets(m):
        # no kernel or linux-firmware release is known to end the 780M MES hang (as of the ROCm
        # threads of 2026-09: docs/amdgpu-fixes.md): the workaround check below is what helps
        return Check("kernel", WARN, f"{detail}: no kernel or firmware release is known to fix "
                     "the 780M MES hang yet; the workaround below is what helps",
                     "see docs/amdgpu-fixes.md")
    return Check("kernel", OK, detail)


def check_cwsr(m: Machine) -> Check:
    if GFX1103 not in _gfx_targets(m):
        return Check("cwsr", SKIP, "not a gfx1103 (780M/760M): the MES-hang workaround does not apply")
    value = _read(m.sys_root / "module" / "amdgpu" / "parameters" / "cwsr_enable")
    if value is None:
        return Check("cwsr", WARN, "amdgpu.cwsr_enable is not readable here", "")
    if value.strip() == "0":
        return Check("cwsr", OK, "amdgpu.cwsr_enable=0 (the reported 780M MES-hang workaround)")
    return Check("cwsr", PROBLEM, f"amdgpu.cwsr_enable={value}: compute wave save/restore is on; "
                 "780M users report MES REMOVE_QUEUE hangs stop with it off",
                 "add amdgpu.cwsr_enable=0 to GRUB_CMDLINE_LINUX in /etc/default/grub, "
                 "sudo update-grub, reboot")


def check_overdrive(m: Machine, cfg: Config) -> Check:
    from daemon.gpu.governor_io import GovernorPort
    card, _ = watched_card(m, cfg)
    needed = cfg["thermal"].get("governor") == "clock"
    if card is None:
        return Check("clock", SKIP, "no amdgpu card")
    problem = GovernorPort(card.device_dir, sysfs_root=m.sys_root).problem()
    if problem is None:
        # GovernorPort judges write access as the process running it; say it for the user too
        od = card.device_dir / "pp_od_clk_voltage"
        if _may(m, od, 2):
            return Check("clock", OK, f"overdrive on and {od.name} writable: the governor can "
                         "cap the clock")
        problem = f"cannot write {od} as {m.user}"
    fix = (f"sudo cp {UDEV_RULE} /etc/udev/rules.d/ && sudo udevadm trigger -s drm "
           "(lets the render group write the clock files)") if "write" in problem else ""
    return Check("clock", PROBLEM if needed else WARN,
                 problem + ("" if needed else ' (needed only for [thermal] governor = "clock")'),
                 fix)


def check_reset_sources(m: Machine, cfg: Config) -> Check:
    sources = list(cfg["resets"].get("sources") or [])
    if not sources:
        return Check("resets", WARN, "[resets] sources = []: GPU resets are not detected")
    if kernel_log := cfg["resets"].get("kernel_log"):
        log = Path(kernel_log)
        ok = _may(m, log, 4)
        return Check("resets", OK if ok else PROBLEM, f"kernel log {log} "
                     f"{'readable' if ok else 'not readable'}",
                     "" if ok else f"give {m.user} read access to {log}")
    kmsg = m.dev_root / "kmsg"
    restrict = _read(m.proc_root / "sys" / "kernel" / "dmesg_restrict")
    kmsg_ok = kmsg.exists() and _may(m, kmsg, 4) and (restrict != "1" or m.uid == 0)
    journal_ok = bool(m.group_names() & {"systemd-journal", "adm"}) or m.uid == 0
    if kmsg_ok or journal_ok:
        via = "/dev/kmsg" if kmsg_ok else "the journal (group systemd-journal/adm)"
        return Check("resets", OK, f"kernel GPU lines readable through {via}")
    why = "kernel.dmesg_restrict=1" if restrict == "1" else f"{kmsg} not readable"
    return Check("resets", PROBLEM, f"no kernel log readable ({why}; {m.user} is not in "
                 "systemd-journal or adm): GPU resets would go unseen",
                 f"sudo usermod -aG systemd-journal {m.user} (or AmbientCapabilities=CAP_SYSLOG "
                 "in the unit)")


def check_linger(m: Machine) -> Check:
    if m.uid == 0:
        return Check("linger", SKIP, "root: the system service needs no linger")
    if (m.linger_dir / m.user).exists():
        return Check("linger", OK, f"linger on for {m.user}: a user service outlives the login")
    return Check("linger", WARN, f"linger off for {m.user}: a user service stops at logout "
                 "(a system service is not affected)", f"loginctl enable-linger {m.user}")


def _tree_bytes(path: Path) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            try:
                total += (Path(root) / f).stat().st_size
            except OSError:
                pass
    return total


def check_disk(m: Machine, cfg: Config) -> Check:
    ckdir = Path(cfg["job"].get("workdir") or ".") / cfg["job"].get("checkpoint_dir", "checkpoints")
    where = ckdir if ckdir.exists() else next((p for p in ckdir.parents if p.exists()), Path("/"))
    free = m.disk_free(where)
    keep = max(3, int(cfg["checkpoint"].get("keep") or 3))
    sizes = [_tree_bytes(d) for d in ckdir.glob("run-*/step_*") if d.is_dir()] if \
        ckdir.exists() else []
    if not sizes:
        return Check("disk", WARN, f"{_gb(free)} free at {where}; no checkpoint yet to size "
                     f"{keep} checkpoints by")
    need = keep * max(sizes)
    if free >= need:
        return Check("disk", OK, f"{_gb(free)} free at {where}: room for {keep} checkpoints of "
                     f"{_gb(max(sizes))} ({_gb(need)})")
    return Check("disk", PROBLEM, f"{_gb(free)} free at {where}, {keep} checkpoints of "
                 f"{_gb(max(sizes))} need {_gb(need)}", f"free {_gb(need - free)} there, or "
                 "move [job] checkpoint_dir to a larger disk")


def _gb(n: int) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


def check_offload(m: Machine, cfg: Config) -> list[Check]:
    off = cfg["offload"]
    names = list(off.get("backends") or []) or [off.get("backend") or "none"]
    out = []
    for name in names:
        if name == "modal":
            out.append(_modal(m))
        elif name == "ssh":
            out.append(_ssh(m, off["ssh"]))
        elif name == "local":
            out.append(Check("offload", OK, "local backend: nothing to authenticate"))
    return out or [Check("offload", SKIP, "no offload backend configured")]


def _modal(m: Machine) -> Check:
    if m.env.get("MODAL_TOKEN_ID") and m.env.get("MODAL_TOKEN_SECRET"):
        return Check("modal", OK, "Modal token in MODAL_TOKEN_ID/MODAL_TOKEN_SECRET")
    path = Path(m.env.get("MODAL_CONFIG_PATH") or m.home / ".modal.toml")
    text = _read(path) or ""
    if "token_id" in text and "token_secret" in text:
        return Check("modal", OK, f"Modal token in {path}")
    return Check("modal", PROBLEM, f"no Modal token (no {path}, no MODAL_TOKEN_ID)",
                 "modal token new (or set MODAL_TOKEN_ID and MODAL_TOKEN_SECRET for the daemon)")


def _ssh(m: Machine, ssh: SshConfig) -> Check:
    host, port = ssh.get("host"), int(ssh.get("port") or 22)
    if not host:
        return Check("ssh", PROBLEM, "[offload.ssh] host is not set", "set [offload.ssh] host")
    key = Path(str(ssh.get("key_file") or "~/.ssh/id_ed25519").replace("~", str(m.home), 1))
    if not key.exists():
        return Check("ssh", PROBLEM, f"key file {key} does not exist",
                     f"ssh-keygen -t ed25519 -f {key}, then put {key}.pub in the box's "
                     "~/.ssh/authorized_keys")
    if key.stat().st_mode & 0o077:
        return Check("ssh", PROBLEM, f"key file {key} is readable by others "
                     f"({key.stat().st_mode & 0o777:04o})", f"chmod 600 {key}")
    known = Path(str(ssh.get("known_hosts") or "~/.ssh/known_hosts").replace("~", str(m.home), 1))
    pattern = host if port == 22 else f"[{host}]:{port}"
    if not _known(known, host, port):
        if ssh.get("accept_new_host_key"):
            return Check("ssh", WARN, f"{pattern} is not in {known} yet: recorded on the first "
                         "connection (accept_new_host_key = true)")
        return Check("ssh", PROBLEM, f"{pattern} is not in {known}: the box's host key would be "
                     "refused", f"check the fingerprint with your provider, then ssh-keyscan -p "
                     f"{port} {host} >> {known}")
    return Check("ssh", OK, f"key {key} and {pattern}'s host key in {known}")


def _known(known: Path, host: str, port: int) -> bool:
    if not known.exists():
        return False
    try:
        import asyncssh
        return bool(asyncssh.match_known_hosts(str(known), host, host, port)[0])
    except Exception:  # noqa: BLE001 - an unparsable file: the plain-text test below
        pattern = host if port == 22 else f"[{host}]:{port}"
        return any(pattern in line.split(" ", 1)[0].split(",") for line in
                   (_read(known) or "").splitlines())


def _int(text: str) -> int | None:
    try:
        return int(text, 0)
    except ValueError:
        return None


# -- the report -----------------------------------------------------------------------------
def diagnose_machine(cfg: Config, m: Machine | None = None) -> list[Check]:
    m = m or Machine()
    return [check_groups(m), check_kfd(m), check_gpu(m, cfg), check_torch(m, cfg),
            check_kernel(m, cfg), check_cwsr(m), check_overdrive(m, cfg),
            check_reset_sources(m, cfg), check_linger(m), check_disk(m, cfg),
            *check_offload(m, cfg)]


def report(checks: list[Check], as_json: bool = False) -> tuple[str, int]:
    """The text (or JSON) and the exit code: 1 when any check is a problem."""
    code = 1 if any(c.status == PROBLEM for c in checks) else 0
    if as_json:
        return json.dumps({"ok": code == 0, "checks": [asdict(c) for c in checks]}, indent=2), code
    lines = [c.line() for c in checks]
    n = sum(c.status == PROBLEM for c in checks)
    lines.append(f"{n} problem{'s' if n != 1 else ''}" if n else "no problems found")
    return "\n".join(lines), code
