"""Progress from a job's output: lines an unmodified script prints become progress.jsonl records.

``[job] progress_pattern`` is a regex with named groups (``step``, ``total``, ``loss``, ``epoch``;
any other group is a metric) or a preset name (``PRESETS``). ``OutputProgress.feed(line)`` turns
one output line into a record of the same shape the trainer writes
(``{"kind": "progress", "t", "step", "total_steps", "loss", "metrics"}``, or ``"eval"`` for a
preset's evaluation line), so JobFacts, the divergence watchdog, the ETA and steps-lost work
unchanged. No I/O; the clock is injected.

Choices worth knowing:
- Progress bars (tqdm, Lightning, Hugging Face) redraw with ``\\r``; a "line" read up to ``\\n``
  may hold many redraws. Every segment is looked at in order, but only the *last* bar that
  matches (a truncated redraw does not: the bar regexes need the closing ``]``) sets the step.
  ``feed_chunk`` is for raw streams: it keeps an unfinished segment until its end arrives.
- A bar redrawn at the same step yields nothing: one record per step change (or per new loss),
  so the watchdog never sees one loss twice and the rate is not skewed by redraws.
- Hugging Face prints its loss as a dict without a step: the record takes the step from the
  newest bar seen (on an earlier line, usually). A dict with ``eval_*`` keys becomes an
  ``eval`` record; the final summary (``train_runtime``...) only metrics.
- With several bars (tqdm, hf), the first bar seen is the training bar: bars with another
  total (an evaluation loop's "13/13") are ignored.
- Lightning's bar counts batches within an epoch: the step is ``epoch * batches + n`` and the
  total is left to ``[job] total_steps`` (Lightning does not print the run's total).
- nanoGPT does not print ``max_iters``: the total comes from ``[job] total_steps`` too.
- Records pass daemon.job.progress.validate_record, like progress.jsonl lines: a non-finite loss
  becomes the "nan"/"inf" marker the divergence detector counts as a spike.
"""

from __future__ import annotations

import ast
import math
import os
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from daemon.job.progress import BadRecord, ProgressRecord, validate_record

_NUM = r"[-+]?(?:\d+\.?\d*(?:[eE][-+]?\d+)?|\.\d+|nan|inf|NaN|Inf)"
# "  12%|█▏        | 120/1000 [00:10<01:20, 11.2it/s, loss=2.31]" — the n/total and the
# [elapsed<remaining, rate, postfix] block are what every tqdm-based bar shares.
_BAR = (r"(?:(?P<desc>[^|\r]*?):?\s*)?(?:\d+%\|[^|]*\|\s*)?(?P<step>\d+)/(?P<total>\d+)\s*"
        r"\[(?P<elapsed>[^<\]]*)(?:<[^,\]]*)?(?:,\s*(?P<rate>[^,\]]*))?(?:,\s*(?P<postfix>[^\]]*))?\]")


@dataclass(frozen=True)
class Preset:
    name: str
    example: str
    description: str


PRESETS: dict[str, Preset] = {
    "nanogpt": Preset("nanogpt", "iter 250: loss 2.3456, time 12.34ms, mfu 4.56%",
                      "nanoGPT's train.py: 'iter N: loss X, time Yms, mfu Z%' and the eval "
                      "line 'step N: train loss X, val loss Y'"),
    "hf": Preset("hf", "{'loss': 2.1, 'grad_norm': 1.2, 'learning_rate': 5e-05, 'epoch': 0.5}",
                 "Hugging Face Trainer: its logged dicts plus the tqdm bar's n/total for the step"),
    "tqdm": Preset("tqdm", " 12%|█▏        | 120/1000 [00:10<01:20, 11.2it/s, loss=2.31]",
                   "any tqdm bar: n/total, and key=value postfix metrics ('loss' is the loss)"),
    "lightning": Preset("lightning", "Epoch 0:  45%|████▌     | 45/100 [00:10<00:12,  4.50it/s, "
                        "v_num=0, train_loss=2.310]",
                        "PyTorch Lightning's TQDMProgressBar: epoch, batch n/total, postfix metrics"),
}

_NANOGPT_ITER = re.compile(rf"^\s*iter (?P<step>\d+): loss (?P<loss>{_NUM}), time (?P<time_ms>{_NUM})ms"
                           rf"(?:, mfu (?P<mfu>{_NUM})%)?")
_NANOGPT_EVAL = re.compile(rf"^\s*step (?P<step>\d+): train loss (?P<train_loss>{_NUM}), "
                           rf"val loss (?P<val_loss>{_NUM})")
_BAR_RE = re.compile(_BAR)
_LIGHTNING_RE = re.compile(r"Epoch (?P<epoch>\d+):?\s*(?:\d+%\|[^|]*\|\s*)?(?P<n>\d+)/(?P<batches>\d+)\s*"
                           r"\[[^\]]*?(?:it/s|s/it|\?it/s)(?:,\s*(?P<postfix>[^\]]*))?\]")
_DICT_RE = re.compile(r"\{'[A-Za-z_][^{}]*\}")
_KV_RE = re.compile(rf"(?P<k>[A-Za-z_][\w./-]*)=(?P<v>{_NUM})(?=,|\s|$)")


class PatternError(ValueError):
    """A progress_pattern that is neither a preset nor a usable regex; says which and why."""


def compile_pattern(pattern: str) -> str | re.Pattern[str]:
    """A preset name as is, or the compiled regex; PatternError says what is wrong."""
    if pattern in PRESETS:
        return pattern
    try:
        rx = re.compile(pattern)
    except re.error as e:
        raise PatternError(f"{pattern!r} is neither a preset ({', '.join(PRESETS)}) nor a valid "
                           f"regular expression: {e}") from None
    if not rx.groupindex:
        raise PatternError(f"{pattern!r} has no named groups: name at least one, e.g. "
                           r"'step (?P<step>\d+) loss (?P<loss>[\d.]+)', or use a preset "
                           f"({', '.join(PRESETS)})")
    return rx


def _num(text: object) -> float | None:
    if isinstance(text, bool):
        return None
    if isinstance(text, (int, float)):
        return float(text)
    try:
        return float(str(text).strip().rstrip("%"))
    except ValueError:
        return None


def _int(text: object) -> int | None:
    v = _num(text)
    return int(v) if v is not None and math.isfinite(v) else None


def _last(rx: re.Pattern[str], seg: str) -> re.Match[str] | None:
    """The last match in a segment (a bar drawn twice without a \\r between counts once)."""
    found = None
    for found in rx.finditer(seg):  # noqa: B007 - the loop variable is the result
        pass
    return found


def _postfix(text: str | None) -> dict[str, float]:
    return {m["k"]: float(m["v"]) for m in _KV_RE.finditer(text or "")}


def _loss_from(metrics: dict[str, float]) -> float | None:
    """The training loss among postfix metrics: 'loss' or 'train_loss' first, else a key ending
    in 'loss' that is not a validation one."""
    for k in ("loss", "train_loss", "train_loss_step", "train/loss"):
        if k in metrics:
            return metrics[k]
    for k, v in metrics.items():
        if k.endswith("loss") and not k.startswith(("val", "eval", "test")):
            return v
    return None


@dataclass
class _Hit:
    """What one segment of output said."""
    kind: str = "progress"  # progress | eval
    step: int | None = None
    total: int | None = None
    loss: float | None = None
    epoch: float | None = None
    metrics: Mapping[str, float | None] | None = None
    bar: bool = False  # a progress-bar redraw (only the last one in a line counts)


class OutputProgress:
    """Feeds on output lines; returns progress records in progress.jsonl's shape."""

    def __init__(self, pattern: str, clock: Callable[[], float] = time.time,
                 total_steps: int | None = None):
        self.pattern = compile_pattern(pattern)
        self.clock = clock
        self.total_steps = total_steps
        self.step: int | None = None  # newest step seen (a bar's, or a line's)
        self._emitted_step: int | None = None
        self._bar_total: int | None = None  # the first bar's total: the training bar's
        self._partial = ""

    # -- parsing one segment -------------------------------------------------------------
    def _parse(self, seg: str) -> _Hit | None:
        p = self.pattern
        if isinstance(p, re.Pattern):
            return self._parse_regex(p, seg)
        return getattr(self, f"_parse_{p}")(seg)

    @staticmethod
    def _parse_regex(rx: re.Pattern[str], seg: str) -> _Hit | None:
        m = rx.search(seg)
        if not m:
            return None
        g = {k: v for k, v in m.groupdict().items() if v is not None}
        metrics = {k: n for k, v in g.items() if k not in ("step", "total", "loss", "epoch")
                   and (n := _num(v)) is not None}
        return _Hit(step=_int(g.get("step")), total=_int(g.get("total")), loss=_num(g.get("loss")),
                    epoch=_num(g.get("epoch")), metrics=metrics)

    @staticmethod
    def _parse_nanogpt(seg: str) -> _Hit | None:
        if m := _NANOGPT_ITER.search(seg):
            metrics = {"time_ms": float(m["time_ms"])}
            if m["mfu"] is not None and float(m["mfu"]) >= 0:  # nanoGPT prints -100 before it knows
                metrics["mfu_pct"] = float(m["mfu"])
            return _Hit(step=int(m["step"]), loss=float(m["loss"]), metrics=metrics)
        if m := _NANOGPT_EVAL.search(seg):
            return _Hit(kind="eval", step=int(m["step"]),
                        metrics={"train_loss": float(m["train_loss"]), "val_loss": float(m["val_loss"])})
        return None

    @staticmethod
    def _parse_tqdm(seg: str) -> _Hit | None:
        m = _last(_BAR_RE, seg)
        if m is None:
            return None
        metrics = _postfix(m["postfix"])
        return _Hit(step=int(m["step"]), total=int(m["total"]), loss=_loss_from(metrics),
                    metrics=metrics, bar=True)

    def _parse_hf(self, seg: str) -> _Hit | None:
        d = None
        for m in _DICT_RE.finditer(seg):
            try:
                v = ast.literal_eval(m.group(0))
            except (ValueError, SyntaxError, MemoryError, RecursionError):
                continue
            if isinstance(v, dict):
                d = v
        if d is None:
            return self._parse_tqdm(seg)
        nums = {k: n for k, v in d.items() if isinstance(k, str) and (n := _num(v)) is not None}
        epoch = nums.pop("epoch", None)
        if any(k.startswith("eval_") for k in nums):
            return _Hit(kind="eval", epoch=epoch,
                        metrics={("val_loss" if k == "eval_loss" else k): v for k, v in nums.items()})
        loss = nums.pop("loss", None)
        if "step" in nums:  # some loggers put the step in the dict
            step = _int(nums.pop("step"))
        else:
            step = None
        return _Hit(step=step, loss=loss, epoch=epoch, metrics=nums)

    @staticmethod
    def _parse_lightning(seg: str) -> _Hit | None:
        m = _last(_LIGHTNING_RE, seg)
        if m is None:
            return None
        epoch, n, batches = int(m["epoch"]), int(m["n"]), int(m["batches"])
        metrics = {k: v for k, v in _postfix(m["postfix"]).items() if k != "v_num"}
        return _Hit(step=epoch * batches + n, loss=_loss_from(metrics), epoch=float(epoch),
                    metrics=metrics, bar=True)

    # -- lines -> records ----------------------------------------------------------------
    def feed(self, line: str) -> ProgressRecord | None:
        """One line of output (up to a newline; it may hold ``\\r`` redraws) -> a record or None."""
        hits = [h for seg in line.rstrip("\n").split("\r") if seg.strip() and (h := self._parse(seg))]
        if not hits:
            return None
        if self.pattern in ("tqdm", "hf"):
            # an evaluation bar ("13/13") drawn during training is not the run's progress: the
            # first bar seen is the training bar, and only bars with its total count
            for h in hits:
                if h.bar and self._bar_total is None:
                    self._bar_total = h.total
            hits = [h for h in hits if not h.bar or h.total == self._bar_total]
        # Segments in order; a bar counts only as the newest redraw before the next other hit
        # (a dict's loss takes the step of the bar drawn before it) and at the end of the line.
        recs: list[dict[str, object] | None] = []
        bar: _Hit | None = None
        for h in hits:
            if h.bar:
                bar = h
                continue
            if bar is not None:
                recs.append(self._record(bar))
                bar = None
            recs.append(self._record(h))
        if bar is not None:
            recs.append(self._record(bar))
        found = [r for r in recs if r is not None]
        if not found:
            return None
        # one record a line: the last one with a loss (the watchdog's input), else the last
        with_loss = [r for r in found if r.get("loss") is not None]
        try:  # the same schema as progress.jsonl lines: a NaN loss becomes the "nan" marker
            return validate_record(with_loss[-1] if with_loss else found[-1])
        except BadRecord:
            return None

    def feed_chunk(self, text: str) -> list[ProgressRecord]:
        """Raw output as it arrives (``\\r`` and ``\\n`` both end a segment); an unfinished
        segment waits for the next chunk. For readers that do not split lines themselves."""
        buf = self._partial + text
        out: list[ProgressRecord] = []
        last = max(buf.rfind("\n"), buf.rfind("\r"))
        if last < 0:
            self._partial = buf[-65536:]
            return out
        self._partial = buf[last + 1:]
        for line in buf[:last].split("\n"):
            if (r := self.feed(line)) is not None:
                out.append(r)
        return out

    def _record(self, h: _Hit) -> dict[str, object] | None:
        """A record to validate (validate_record makes it a ProgressRecord)."""
        t = float(self.clock())
        if h.total:
            self.total_steps = h.total
        if h.kind == "eval":
            step = h.step if h.step is not None else self.step
            if step is None:
                return None  # the record schema wants a step
            rec: dict[str, object] = {"kind": "eval", "t": t, "step": step, "metrics": dict(h.metrics or {})}
            if h.epoch is not None:
                rec["epoch"] = h.epoch
            return rec
        step = h.step if h.step is not None else self.step
        if step is None or ((h.bar or h.loss is None) and step == self._emitted_step):
            return None  # no step known yet (JobFacts needs one), or a redraw of the same step
        if h.step is not None:
            self.step = h.step
        self._emitted_step = step
        rec = {"kind": "progress", "t": t, "step": step, "total_steps": self.total_steps,
               "loss": h.loss, "metrics": dict(h.metrics or {})}
        if h.epoch is not None:
            rec["epoch"] = h.epoch
        return rec


def last_logged_step(log_path: str | os.PathLike[str], parser: OutputProgress, tail_bytes: int = 65536) -> int | None:
    """The furthest step in the last ``tail_bytes`` of the job's log, read with a fresh parser
    (a script's progress is its output: after a daemon restart nothing else remembers it).
    The first line of the tail is skipped: it may be cut mid-line. None: no step, or no log."""
    try:
        with open(log_path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - tail_bytes))
            text = fh.read().decode("utf-8", "replace")
    except OSError:
        return None
    found = [step for r in map(parser.feed, text.splitlines()[1:])
             if r is not None and isinstance(step := r.get("step"), int)]
    return max(found) if found else None
