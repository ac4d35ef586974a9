"""The few lines a PyTorch training loop adds to get exact resume and the daemon's controls.

    rt = Runtime(model, optimizer, scheduler=sched, total_steps=N, checkpoint_interval=100)
    start = rt.resume()                      # newest valid checkpoint, or 0
    for step in range(start, N):
        if rt.skip(step):                    # batches skipped after a divergence rollback
            continue
        loss = train_one_step(step)
        rt.step_end(step + 1, loss=loss.item(), samples=batch_size)
    rt.finish()

Environment (set by the daemon; all optional for a plain run): NIGHTSHIFT_RUN_DIR,
NIGHTSHIFT_CHECKPOINT_DIR, NIGHTSHIFT_RESUME, NIGHTSHIFT_CHECKPOINT_INTERVAL,
NIGHTSHIFT_TOTAL_STEPS, NIGHTSHIFT_SKIP_STEPS.

Checkpoints are two-phase (trainer.checkpoint.AsyncCheckpointer): the optimizer's next
``step()`` waits until the snapshot's parameters and optimizer state are copied, so code that
changes optimized weights in place between ``step_end`` and that step calls
``rt.ckpt.wait_copy()`` first.
"""

from __future__ import annotations

import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

from trainer import simhook
from trainer.checkpoint import AsyncCheckpointer, load_checkpoint
from trainer.control import ControlChannel
from trainer.format import CorruptCheckpoint, list_checkpoints
from trainer.progress import ProgressWriter
from trainer.protocol import (
    ENV_BEST_METRIC,
    ENV_CHECKPOINT_DIR,
    ENV_CHECKPOINT_INTERVAL,
    ENV_CHECKPOINT_KEEP,
    ENV_RESUME,
    ENV_RUN_DIR,
    ENV_SKIP_STEPS,
    ENV_TOTAL_STEPS,
    PROTOCOL_VERSION,
    parse_skip,
)
from trainer.state import capture, restore

HEARTBEAT_S = 10.0  # a held job's heartbeat period (the daemon's hang timeout is far longer)


def _env_int(name: str) -> int | None:
    v = os.environ.get(name, "").strip()
    if not v:
        return None
    try:
        n = int(v)
    except ValueError:
        raise ValueError(f"{name}={v!r} is not a whole number of steps") from None
    if n <= 0:
        raise ValueError(f"{name}={v!r} must be a positive number of steps")
    return n


class Runtime:
    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None,
                 scheduler: Any = None, scaler: Any = None, *, total_steps: int | None = None,
                 checkpoint_interval: int = 100, extra_state: Any = None, keep: int = 3,
                 best_metric: str | None = None, run_dir: str | None = None,
                 checkpoint_dir: str | None = None):
        env = os.environ
        self.model, self.optimizer, self.scheduler, self.scaler = model, optimizer, scheduler, scaler
        self.extra = extra_state
        self.run_dir = Path(env.get(ENV_RUN_DIR) or run_dir or "runs/local")
        self.ckpt_dir = Path(env.get(ENV_CHECKPOINT_DIR) or checkpoint_dir or self.run_dir / "checkpoints")
        self.total_steps = _env_int(ENV_TOTAL_STEPS) or total_steps or None
        self.interval = _env_int(ENV_CHECKPOINT_INTERVAL) or checkpoint_interval
        self.skips = parse_skip(env.get(ENV_SKIP_STEPS, ""))
        # the daemon's [checkpoint] keep and best_metric win over the script's defaults
        keep = _env_int(ENV_CHECKPOINT_KEEP) or keep
        best_metric = env.get(ENV_BEST_METRIC, "").strip() or best_metric
        self.best_metric = best_metric
        self.progress = ProgressWriter(self.run_dir)
        self.control = ControlChannel(self.run_dir)
        self.ckpt = AsyncCheckpointer(self.ckpt_dir, keep=keep, best_metric=best_metric,
                                      on_persisted=self._persisted, on_error=self._persist_failed)
        self.step = 0
        self._worst: tuple[float, int] | None = None  # the highest loss since the last record
        self.epoch = 0
        self.metrics: dict[str, Any] = {}
        self.last_ckpt_step: int | None = None
        self._rate_t = time.monotonic()
        self._rate_step = 0
        self._samples = 0
        self.steps_per_s: float | None = None  # over the last >= 2 s window; None before
        self.samples_per_s: float | None = None

    # resume -------------------------------------------------------------------------------
    def _log(self, msg: str) -> None:
        print(f"[trainer] {msg}", file=sys.stderr, flush=True)

    def resume(self) -> int:
        """Restore everything from NIGHTSHIFT_RESUME or the newest valid checkpoint; return the step."""
        path, loaded = self._load_newest_valid()
        device = next(self.model.parameters()).device.type if any(True for _ in self.model.parameters()) else "cpu"
        if loaded is not None:
            groups, meta = loaded
            restore(groups, meta, self.model, self.optimizer, scheduler=self.scheduler,
                    scaler=self.scaler, extra=self.extra)
            self.step, self.epoch = int(meta["step"]), int(meta.get("epoch", 0))
            self.metrics = dict(meta.get("metrics") or {})
            self.last_ckpt_step = self.step
            self._log(f"resumed at step {self.step} from {path}")
        else:
            self._log(f"starting fresh at step 0 (no valid checkpoint in {self.ckpt_dir})")
        self._rate_t, self._rate_step = time.monotonic(), self.step
        self.progress.write("start", step=self.step, resumed_from=str(path) if path else None,
                            protocol=PROTOCOL_VERSION, pid=os.getpid(), total_steps=self.total_steps, device=device)
        # A hold or exit already in force (the daemon paused us, then restarted us or itself)
        # applies before the first step, not after it.
        self._obey(self.control.poll(force=True))
        return self.step

    def _load_newest_valid(self) -> tuple[Path | None, Any]:
        """NIGHTSHIFT_RESUME if it verifies, else the newest checkpoint that does. Each candidate
        is verified once, by the load itself (a second deep verify would double resume time)."""
        wanted = os.environ.get(ENV_RESUME, "").strip()
        candidates = ([Path(wanted)] if wanted else []) + list_checkpoints(self.ckpt_dir)
        for i, p in enumerate(candidates):
            if i and wanted and p == Path(wanted):
                continue  # already tried first
            try:
                return p, load_checkpoint(p, device="cpu")
            except (CorruptCheckpoint, OSError) as e:
                what = "the checkpoint to resume from (NIGHTSHIFT_RESUME)" if wanted and i == 0 \
                    else f"checkpoint {p.name}"
                self._log(f"skipping {what}: {getattr(e, 'reason', e)}; trying the previous one")
        return None, None

    def skip(self, step: int) -> bool:
        """True for a batch the daemon asked to skip after a divergence rollback."""
        return any(a <= step <= b for a, b in self.skips)

    # the loop -----------------------------------------------------------------------------
    def step_end(self, step: int, loss: float | None = None, metrics: dict[str, Any] | None = None,
                 samples: int | None = None, epoch: int | None = None) -> None:
        self.step = step
        if epoch is not None:
            self.epoch = epoch
        if metrics:
            self.metrics.update(metrics)
        if samples:
            self._samples += samples
        simhook.on_step()
        now = time.monotonic()
        if now - self._rate_t >= 2.0:
            self.steps_per_s = (step - self._rate_step) / (now - self._rate_t)
            self.samples_per_s = self._samples / (now - self._rate_t) if self._samples else None
            self._rate_t, self._rate_step, self._samples = now, step, 0
        # Records are rate-limited, so the worst loss since the last one travels with it: a
        # spike between two records must still reach the divergence watchdog, with its step.
        if loss is not None and (self._worst is None or not math.isfinite(loss)
                                 or (math.isfinite(self._worst[0]) and loss > self._worst[0])):
            self._worst = (loss, step)
        wrote = self.progress.progress(step=step, loss=loss, total_steps=self.total_steps,
                                       steps_per_s=self.steps_per_s,
                                       samples_per_s=self.samples_per_s, epoch=self.epoch,
                                       metrics=metrics or None,
                                       loss_max=self._worst[0] if self._worst else None,
                                       loss_max_step=self._worst[1] if self._worst else None)
        if wrote:
            self._worst = None
        if self.control.interval:
            self.interval = self.control.interval
        if self.interval and step % self.interval == 0 and (self.total_steps is None or step < self.total_steps):
            self.checkpoint()
        self._obey(self.control.poll())

    def report_eval(self, metrics: dict[str, Any], step: int | None = None) -> None:
        """Validation metrics (kept in the next checkpoint; ``best_metric`` picks the best one)."""
        self.metrics.update(metrics)
        self.progress.write("eval", step=self.step if step is None else step, metrics=metrics)

    def checkpoint(self, wait: bool = False) -> None:
        """Snapshot now, persist in the background; ``wait`` for it to be durable.

        The stall is the copy of buffers and small state only: parameters and optimizer state
        are copied in the background while the next forward/backward run, and the optimizer's
        next ``step()`` waits for that copy. A loop that changes optimized weights in place
        outside ``optimizer.step()`` (an EMA written into them, say) calls
        ``self.ckpt.wait_copy()`` before doing so."""
        if self.last_ckpt_step == self.step and not self.ckpt.busy and self.ckpt.last_error is None \
                and (self.ckpt_dir / f"step_{self.step:09d}").exists():
            return  # this exact state is already on disk
        groups, meta = capture(self.model, self.optimizer, step=self.step, epoch=self.epoch,
                               scheduler=self.scheduler, scaler=self.scaler, extra=self.extra,
                               metrics=self.metrics)
        metric = self.metrics.get(self.best_metric) if self.best_metric else None
        self.ckpt.snapshot(self.step, groups, meta, metric=metric, optimizer=self.optimizer)
        self.last_ckpt_step = self.step
        if wait:
            self.ckpt.wait()

    def _persisted(self, info: dict[str, Any]) -> None:
        self.progress.write("checkpoint", **info)

    def _persist_failed(self, step: int, exc: BaseException) -> None:
        self.progress.write("checkpoint_error", step=step, error=f"{type(exc).__name__}: {exc}")
        self.last_ckpt_step = None

    def _durable(self) -> str | None:
        """The checkpoint of the current step if it is on disk (None after a failed persist)."""
        ck = self.ckpt_dir / f"step_{self.step:09d}"
        return str(ck) if self.ckpt.last_error is None and ck.is_dir() else None

    def _sync(self) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()  # the device is idle while held

    def _obey(self, commands: list[tuple[str, int]]) -> None:
        """One-shot commands first, in seq order, then the hold state: a pause and a checkpoint
        asked together both happen, whichever came first."""
        for command, seq in commands:
            self.progress.write("control_ack", seq=seq, command=command, step=self.step)
            if command == "checkpoint":
                self.checkpoint()
            elif command == "exit":
                self._exit("exit-command")
        if self.control.hold:
            self._hold()

    def _hold(self) -> None:
        self.checkpoint(wait=True)
        self._sync()
        self.progress.write("held", step=self.step, checkpoint=self._durable())
        last_beat = time.monotonic()
        while self.control.hold:
            time.sleep(0.1)
            for command, seq in self.control.poll():
                self.progress.write("control_ack", seq=seq, command=command, step=self.step)
                if command == "exit":
                    self._exit("exit-command")
                # "checkpoint" while held: the hold's checkpoint is already this step's
            if time.monotonic() - last_beat >= HEARTBEAT_S:
                self.progress.write("heartbeat", state="held", step=self.step)
                last_beat = time.monotonic()
        self.progress.write("released", step=self.step)
        self._rate_t, self._rate_step, self._samples = time.monotonic(), self.step, 0

    def _exit(self, reason: str) -> None:
        self.checkpoint(wait=True)
        self.progress.write("exiting", step=self.step, reason=reason, checkpoint=self._durable())
        self.control.restore_default_signal()
        self.ckpt.close()
        self.progress.close()
        sys.exit(0)

    def finish(self, metrics: dict[str, Any] | None = None) -> None:
        """Final checkpoint (durable before returning) and the "done" record."""
        if metrics:
            self.metrics.update(metrics)
        self.checkpoint(wait=True)
        self.ckpt.close()
        # A hold or exit arriving now would otherwise kill the finished job at shutdown.
        self.control.restore_default_signal()
        final = self._durable()
        if final is None:
            # Not "done": the daemon must see a failed job and restart it, which resumes from the
            # previous checkpoint (the checkpoint_error record says why).
            self.progress.close()
            raise RuntimeError(f"the final checkpoint at step {self.step} failed "
                               f"({self.ckpt.last_error}); free disk space and run the job again "
                               "to resume from the previous checkpoint")
        self.progress.write("done", step=self.step, checkpoint=final, metrics=self.metrics or None)
        self.progress.close()
        self._log(f"done at step {self.step}; final checkpoint {final}")
