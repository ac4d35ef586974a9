"""A run's fingerprint (pure): best loss and its step, where the loss started to climb, the final
loss; and what a run changed against the first run of its queue.

This is the table people used to fill in by hand after a night of bisecting ("best loss before
the climb", "when the climb started"). Choices:
- The loss is smoothed with an EMA over ~``span`` records before anything is judged, so one
  noisy batch is neither a best nor a climb. ``best_loss`` is the lowest *smoothed* loss.
- A climb starts at the first step after the best where the smoothed loss is ``rtol`` above
  the best and stays above it for ``patience`` records (or to the end of the run); its step is
  the last step before that rise at which the smoothed loss was still within ``rtol / 2`` of
  the best: where the climb began, not where it became obvious. No climb: None.
- A non-finite loss counts as a climb at its step.
"""

from __future__ import annotations

import math
import shlex
from dataclasses import dataclass


@dataclass(frozen=True)
class Fingerprint:
    best_loss: float | None
    best_step: int | None
    climb_step: int | None
    final_loss: float | None

    def line(self) -> str:
        def f(x: float | None) -> str:
            return "-" if x is None else f"{x:.4g}"
        climb = "no climb" if self.climb_step is None else f"climb from step {self.climb_step}"
        return f"best loss {f(self.best_loss)} at step {self.best_step if self.best_step is not None else '-'}, {climb}, final {f(self.final_loss)}"


def fingerprint(series: list[tuple[int, float]], span: int = 10, rtol: float = 0.1,
                patience: int = 3) -> Fingerprint:
    """``series``: (step, loss) in step order."""
    if not series:
        return Fingerprint(None, None, None, None)
    alpha = 2.0 / (span + 1)
    smooth: list[tuple[int, float]] = []
    ema: float | None = None
    first_bad: int | None = None
    for step, loss in series:
        if not math.isfinite(loss):
            first_bad = step if first_bad is None else first_bad
            continue
        ema = loss if ema is None else alpha * loss + (1 - alpha) * ema
        smooth.append((step, ema))
    final = next((v for _, v in reversed(series) if math.isfinite(v)), None)
    if not smooth:
        return Fingerprint(None, None, first_bad, final)
    best_i = min(range(len(smooth)), key=lambda i: smooth[i][1])
    best_step, best = smooth[best_i]
    climb = None
    over = 0
    for i in range(best_i + 1, len(smooth)):
        if smooth[i][1] > best * (1 + rtol) if best > 0 else smooth[i][1] > best + rtol:
            over += 1
            if over >= patience or i == len(smooth) - 1:
                start = i - over + 1
                j = start - 1
                while j > best_i and smooth[j][1] > best * (1 + rtol / 2):
                    j -= 1
                climb = smooth[j][0]
                break
        else:
            over = 0
    if first_bad is not None and (climb is None or first_bad < climb):
        climb = first_bad
    return Fingerprint(round(best, 6), best_step, climb, final)


def changes(base_command: list[str], base_env: dict[str, str], command: list[str],
            env: dict[str, str], show_values: bool = True) -> list[str]:
    """What a run changed against the queue's first run: arguments and environment.
    ``show_values=False``: a changed env var is named, its value is not (GET /runs needs no
    token and queued env values may be secrets)."""
    out = []
    if command != base_command:
        old, new = _args(base_command), _args(command)
        def show(k: str, v: str) -> str:  # positionals are shown by value alone
            return v if k.startswith(" arg") else (f"{k} {v}" if v else k)
        for k in new:
            if k not in old:
                out.append(show(k, new[k]))
            elif old[k] != new[k]:
                out.append(f"{show(k, new[k])} (was {old[k]})")
        out += [f"without {show(k, old[k])}" for k in old if k not in new]
        if not out:
            out.append(f"command: {shlex.join(command)}")
    for k in sorted(set(env) | set(base_env)):
        if env.get(k) != base_env.get(k):
            shown = env.get(k) if show_values else "<redacted>"
            out.append(f"{k}={shown}" if k in env else f"without {k}")
    return out


def _args(cmd: list[str]) -> dict[str, str]:
    """--key value / --key=value / flags / positionals, keyed so that reorderings are no change."""
    out: dict[str, str] = {}
    i = 0
    pos = 0
    while i < len(cmd):
        a = cmd[i]
        if a.startswith("-") and "=" in a:
            k, v = a.split("=", 1)
            out[k] = v
        elif a.startswith("-") and i + 1 < len(cmd) and not cmd[i + 1].startswith("-"):
            out[a] = cmd[i + 1]
            i += 1
        elif a.startswith("-"):
            out[a] = ""
        else:
            out[f" arg{pos}"] = a  # the space keeps it apart from any real --flag
            pos += 1
        i += 1
    return out
