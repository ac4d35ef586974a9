"""One GPU incident: every line the kernel (and the job, the sensor, udev) printed about one GPU
hang until the GPU was quiet again, and what it was -- its *kind* and the *label* naming its cause.

Kinds, each counted apart (only resets count toward ``offload_after``, the reset rate and the
heat diagnosis):
- ``reset``: the kernel reset the GPU or a ring (or a hard hang it had to reset: a MES hang,
  a ring timeout that soft recovery could not fix). ``kernel_resets`` says how many times inside
  the one incident ("1 reset (2 kernel resets)": a 780M hang often needs two).
- ``soft_recovery``: a ring timed out and the kernel recovered it by killing the waves, with no
  reset (amdgpu_job_timedout's ``goto exit`` before any ring or GPU reset). On an APU the
  compositor and the browser share the GPU: their soft recoveries are not the job's resets.
- ``fault``: a GPU page fault (or an illegal command); the job may die and is restarted, the GPU
  was not reset.

The kernel's lines decide when there are any; the other sources only when there are none
(a WEDGED uevent, a devcoredump file or sysfs EPERM say "reset"; the job's "HW Exception ...
GPU Hang" says reset, its "Memory access fault" says fault). Pure: no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from daemon.gpu.resets.signatures import EFFECTS, JOB_EFFECTS, ring_class
from daemon.policy.records import Temps

KINDS = ("reset", "soft_recovery", "fault")
# a kernel line with one of these effects makes the incident a reset
RESET_EFFECTS = {"hang", "timeout", "begin", "reset", "end"}
FAULT_LABELS = {"illegal_command": "illegal command"}


@dataclass
class ResetEvent:
    """One incident (the name stays: a reset is the kind that matters most)."""
    t: float  # wall time of its first signal: the kernel's time for kernel lines
    sources: list[str]
    lines: list[str]
    signature: str = ""  # the signature that names its cause (e.g. "mes_hang")
    temps: Temps = field(default_factory=dict)
    kind: str = "reset"
    label: str = ""  # the cause in words: "MES hang", "ring timeout (gfx)", "page fault"...
    kernel_resets: int = 0  # resets the kernel logged inside this incident
    device: str | None = None  # PCI address, when a line named it
    attributed: bool = True  # False: several amdgpu cards and no line said which one
    id: int = 0  # the detector's number for it (a revision of an emitted incident keeps it)
    revision: int = 0  # grows when a line arriving later changes its kind or kernel resets
    last_t: float = 0.0  # wall time of the newest signal
    # kernel time of its first/last kernel line, on the wall-time scale (equal to wall time
    # unless the log's stamps are not from this boot: kerneltime.py)
    kernel_first_t: float | None = None
    kernel_last_t: float | None = None
    in_reset: bool = False  # a "GPU reset begin!" without its end yet
    read_t: float = 0.0  # clock() when its newest signal was read (settling)
    emitted: bool = False
    emitted_revision: int = -1
    dropped_lines: int = 0
    effects: dict[str, str] = field(default_factory=dict)  # effect -> first signature with it
    # effect -> (kernel time, signature, ring class) of its earliest line
    first: dict[str, tuple[float, str, str | None]] = field(default_factory=dict)
    begins: int = 0
    other: set[str] = field(default_factory=set)  # non-kernel evidence: job effect, uevent...

    @property
    def has_kernel(self) -> bool:
        return self.kernel_first_t is not None

    def note_kernel(self, name: str, effect: str, text: str, k: float) -> None:
        self.effects.setdefault(effect, name)
        if effect in ("hang", "timeout", "soft", "fault"):
            first = self.first.get(effect)
            if first is None or k < first[0]:  # the earliest by the kernel's time names the cause
                self.first[effect] = (k, name, ring_class(text))
        if effect == "begin":
            self.begins += 1
            self.in_reset = True
        elif effect == "end":
            self.in_reset = False

    def note_other(self, source: str, detail: str = "") -> None:
        """A non-kernel signal: "job" (with the job signature's name), "sensor", "uevent",
        "devcoredump"."""
        if source == "job":
            self.other.add("job:" + JOB_EFFECTS.get(detail, "fault"))
        else:
            self.other.add(source)

    def resolve(self) -> bool:
        """Work out kind, label and kernel_resets from what was seen; True when one changed."""
        before = (self.kind, self.kernel_resets, self.label)
        e = self.effects
        if e.keys() & RESET_EFFECTS:
            kind = "reset"
        elif "soft" in e:
            kind = "soft_recovery"
        elif "fault" in e:
            kind = "fault"
        elif self.other - {"job:fault"}:
            kind = "reset"  # udev, a devcoredump, EPERM or the job's "GPU Hang": a reset
        elif self.other:
            kind = "fault"
        else:
            kind = ""  # only neutral lines so far (a core dump whose outcome is not logged)
        self.kind = kind
        # each full reset logs one "GPU reset begin!"; a reset without one (an old kernel's
        # MODE1 lines, a per-ring reset, a hang whose reset is not logged yet) is one
        self.kernel_resets = max(self.begins, 1) if kind == "reset" else 0
        self.label = self._label()
        self.signature = self._cause_signature() or self.signature
        return (self.kind, self.kernel_resets, self.label) != before

    def _cause(self) -> tuple[float, str, str | None] | None:
        """The line that shows the cause: the first hard hang (a MES failure or a ring timeout
        that soft recovery could not fix, whichever the kernel logged first), else the soft
        recovery, else the fault."""
        hard = [self.first[e] for e in ("hang", "timeout") if e in self.first]
        if self.kind == "reset" and hard:
            return min(hard)
        for effect in ("soft", "fault"):
            if effect in self.first:
                return self.first[effect]
        return None

    def _cause_signature(self) -> str | None:
        cause = self._cause()
        if cause is not None:
            return cause[1]
        return next((self.effects[e] for e in ("begin", "reset", "end") if e in self.effects), None)

    def _label(self) -> str:
        cause = self._cause()
        effect = EFFECTS.get(cause[1]) if cause else None
        ring = f" ({cause[2]})" if cause and cause[2] else ""
        fault = FAULT_LABELS.get(self.first["fault"][1], "page fault") if "fault" in self.first \
            else None
        if self.kind == "reset":
            if effect == "hang":
                return "MES hang"
            if effect == "timeout":
                return f"ring timeout{ring}"
            if fault:
                return f"{fault}, then a reset"
            if self.has_kernel:
                return "GPU reset"
            if "job:hang" in self.other:
                return "GPU hang (the job's message)"
            return "GPU reset (" + ", ".join(sorted(self.other)) + ")"
        if self.kind == "soft_recovery":
            return f"soft recovery{ring}" + (f", after a {fault}" if fault else "")
        if self.kind == "fault":
            return fault or "GPU fault (the job's message)"
        return ""

    def summary(self) -> str:
        """"reset: MES hang (2 kernel resets)", "soft recovery (gfx)", "page fault"."""
        extra = f" ({self.kernel_resets} kernel resets)" if self.kernel_resets > 1 else ""
        return f"{self.label}{extra}"
