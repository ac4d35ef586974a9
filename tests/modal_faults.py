"""Modal faked at its network boundary, for the cloud_fault tests (issue 27).

Everything the daemon calls in the modal 1.6.4 SDK that leaves the machine is replaced, and
nothing else: ``App.run`` (creates the app on the server), ``Function.spawn`` (FunctionMap),
``FunctionCall.from_id(...).get/cancel`` (FunctionGetOutputs, FunctionCallCancel), and the
Volume's ``listdir``/``read_file``/``batch_upload``/``remove_file`` (VolumeListFiles2,
VolumeGetFile2 + block downloads, VolumePutFiles2). The SDK's own objects are built for real
(``build_app``: App, Image, Function, Retries, Volume.from_name), and the faults raise the SDK's
own exception classes, with the behaviour its source has once its gRPC layer is done:

- ``get(timeout=0)`` while the call runs: the builtin ``TimeoutError`` (``poll_function``).
- UNAVAILABLE / INTERNAL / DEADLINE_EXCEEDED: retried 3 times inside the SDK (0.1-0.4 s), then
  ``ServiceError`` / ``InternalError``; RESOURCE_EXHAUSTED is not retried by the SDK:
  ``ResourceExhaustedError`` at once (``_retry_transient_errors``, ``_STATUS_TO_EXCEPTION``).
- A cancelled input ends GENERIC_STATUS_TERMINATED, which ``get`` raises as ``RemoteError``
  with the (empty) exception text (``_process_result``).
- ``Volume.listdir`` of a missing path: ``NotFoundError`` (the server's NOT_FOUND, not
  converted); ``read_file`` of a missing path: the builtin ``FileNotFoundError``.

The cloud side is a simulated container on the test's fake clock: it trains at ``rate``
steps/s from the newest checkpoint on its volume, writes a real checkpoint every ``interval``
steps and commits (the summary with it, as daemon/cloud/offload/remote.py does). After ``cancel()``
the body TERMs the job, which saves at the step it reached; that save and its commit land
``settle_s - 1`` s later, and the call reads TERMINATED ``settle_s`` after the cancel. With
``timeout_s`` (the function's ``timeout``, no retries left) the attempt is killed at that age
without a save (what was not committed is lost) and ``get`` raises ``FunctionTimeoutError``.
``Call.preempt(at)``: Modal's preemption (SIGINT): the body saves, commits the "final"
"preempted" summary, and Modal runs the same input again in the same call ``restart_s`` later,
from the newest checkpoint on the volume (the call reads running all along).
"""

from __future__ import annotations

import contextlib
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import modal
import modal.exception as mx

from tests.harness import write_checkpoint


@dataclass
class Fault:
    """Raise ``make()`` for calls of ``op`` ("get", "cancel", "read_file", "listdir", "spawn",
    "upload", or "*") while ``start <= t < end`` and at most ``times`` times."""
    op: str
    make: Callable[[], BaseException]
    start: float = float("-inf")
    end: float = float("inf")
    times: int | None = None
    used: int = 0

    def hits(self, op: str, t: float) -> bool:
        return (self.op in (op, "*") and self.start <= t < self.end
                and (self.times is None or self.used < self.times))


@dataclass
class Call:
    """One spawned input: the remote body and the job in it, on the fake clock."""
    id: str
    vol: Path
    started: float
    start_step: int
    total: int
    rate: float
    interval: int
    settle_s: float
    timeout_s: float | None = None
    cancelled_at: float | None = None
    preempted_at: float | None = None  # a preemption to come (Call.preempt)
    restart_s: float = 30.0  # Modal runs the input again this long after a preemption
    preemptions: int = 0
    loss: Callable[[int], float] = lambda step: 1.0 / (1 + step)  # the job's loss at a step
    cancels: int = 0
    written: list[int] = field(default_factory=list)

    def step_at(self, t: float) -> int:
        return min(self.total, self.start_step + max(0, int((t - self.started) * self.rate)))

    def preempt(self, at: float) -> None:
        self.preempted_at = at

    def _preempted(self, now: float) -> None:
        """The attempt interrupted at ``preempted_at``: saved and committed on the way out, then
        the same input again from that step (a new container, the same call)."""
        at = self.preempted_at
        if at is None or now < at:
            return
        self.preempted_at = None
        self.advance(at)
        stop = self.step_at(at)
        if not self.written or self.written[-1] != stop:
            write_checkpoint(self.vol / "ckpt" / f"step_{stop:09d}", stop)
            self.written.append(stop)
        self._commit(stop, at, "final", "preempted")
        self.started, self.start_step, self.preemptions = at + self.restart_s, stop, self.preemptions + 1

    def _commit(self, step: int, t: float, state: str = "running", result: str | None = None) -> None:
        run = self.vol / "run"
        run.mkdir(parents=True, exist_ok=True)
        (run / "summary.json").write_text(json.dumps({
            "t": t, "state": state, "result": result, "checkpoint_step": step, "step": step,
            "total_steps": self.total, "loss": self.loss(step), "steps_per_s": self.rate}))

    def killed_at(self) -> float | None:
        """When Modal kills the attempt at its timeout (None: never, or a cancel came first)."""
        if self.timeout_s is None:
            return None
        at = self.started + self.timeout_s
        return None if self.cancelled_at is not None and self.cancelled_at < at else at

    def advance(self, now: float) -> None:
        self._preempted(now)
        until = now if self.cancelled_at is None else min(now, self.cancelled_at)
        killed = self.killed_at()
        if killed is not None and until >= killed:  # killed: no save on the way out
            until = killed
            last = self.written[-1] if self.written else self.start_step
            s = self.step_at(until)
            for step in range(last - last % self.interval + self.interval, s + 1, self.interval):
                write_checkpoint(self.vol / "ckpt" / f"step_{step:09d}", step)
                self.written.append(step)
                self._commit(step, until)
            return
        last = self.written[-1] if self.written else self.start_step
        s = self.step_at(until)
        for step in range(last - last % self.interval + self.interval, s + 1, self.interval):
            write_checkpoint(self.vol / "ckpt" / f"step_{step:09d}", step)
            self.written.append(step)
            self._commit(step, now)
        if s >= self.total and (not self.written or self.written[-1] != self.total):
            write_checkpoint(self.vol / "ckpt" / f"step_{self.total:09d}", self.total)
            self.written.append(self.total)
        if s >= self.total:
            self._commit(self.total, now, "final", "succeeded")
        if self.cancelled_at is not None and now >= self.cancelled_at + self.settle_s - 1:
            stop = self.step_at(self.cancelled_at)
            if not self.written or self.written[-1] != stop:  # the save on the way out, committed
                write_checkpoint(self.vol / "ckpt" / f"step_{stop:09d}", stop)
                self.written.append(stop)
                self._commit(stop, now, "final", "cancelled")

    def outcome(self, now: float) -> Any:
        self.advance(now)
        killed = self.killed_at()
        if killed is not None and now >= killed:
            raise mx.FunctionTimeoutError(f"Function exceeded its timeout of {self.timeout_s:.0f} seconds")
        if self.cancelled_at is not None and now >= self.cancelled_at + self.settle_s:
            raise mx.RemoteError("")  # GENERIC_STATUS_TERMINATED: its exception text is empty
        if self.step_at(now) >= self.total and self.cancelled_at is None:
            return {"state": "succeeded", "step": self.total, "returncode": 0}
        raise TimeoutError()  # the builtin one: not finished yet


class Cloud:
    """The Modal side. ``install(monkeypatch)`` puts it at the SDK's network boundary."""

    def __init__(self, root: Path, clock: Callable[[], float], *, rate: float = 10.0, total: int = 100_000,
                 interval: int = 50, settle_s: float = 20.0, timeout_s: float | None = None,
                 loss: Callable[[int], float] | None = None):
        self.loss = loss
        self.root, self.clock = root, clock
        self.timeout_s = timeout_s
        self.rate, self.total, self.interval, self.settle_s = rate, total, interval, settle_s
        self.calls: dict[str, Call] = {}
        self.faults: list[Fault] = []
        self.log: list[tuple[float, str, str]] = []  # (t, op, "ok" | exception class)
        self.bytes_read: dict[str, int] = {}  # path -> bytes handed out by read_file
        self.exit_error: BaseException | None = None  # raised while leaving app.run

    # -- faults
    def _gate(self, op: str) -> None:
        t = self.clock()
        for f in self.faults:
            if f.hits(op, t):
                f.used += 1
                e = f.make()
                self.log.append((t, op, type(e).__name__))
                raise e
        self.log.append((t, op, "ok"))

    def count(self, op: str, outcome: str = "ok") -> int:
        return sum(1 for _, o, r in self.log if o == op and r == outcome)

    def vol(self, name: str) -> Path:
        return self.root / name

    def running(self) -> list[Call]:
        now = self.clock()
        out = []
        for c in self.calls.values():
            try:
                c.outcome(now)
            except TimeoutError:
                out.append(c)
            except mx.Error:
                pass
        return out

    # -- the boundary
    def install(self, monkeypatch: Any) -> None:
        cloud = self
        monkeypatch.setenv("MODAL_TOKEN_ID", "ak-test")
        monkeypatch.setenv("MODAL_TOKEN_SECRET", "as-test")

        @contextlib.contextmanager
        def app_run(app: Any, *a: Any, **kw: Any):
            cloud._gate("app_run")
            yield app
            if cloud.exit_error is not None:
                raise cloud.exit_error

        def spawn(fn: Any, spec: dict[str, Any], mount: str, commit: bool) -> Any:
            cloud._gate("spawn")
            vol = cloud.vol(spec["volume_name"])
            steps = sorted(int(p.name.rsplit("_", 1)[1]) for p in (vol / "ckpt").glob("step_*"))
            cid = f"fc-{len(cloud.calls) + 1:04d}"
            cloud.calls[cid] = Call(cid, vol, cloud.clock(), steps[-1] if steps else 0, spec.get("total_steps")
                                    or cloud.total, cloud.rate, cloud.interval, cloud.settle_s,
                                    cloud.timeout_s, written=steps[-1:])
            if cloud.loss is not None:
                cloud.calls[cid].loss = cloud.loss
            return _Handle(cloud, cid)

        monkeypatch.setattr(modal.App, "run", app_run)
        monkeypatch.setattr(modal.Function, "spawn", spawn)
        monkeypatch.setattr(modal.FunctionCall, "from_id", staticmethod(lambda cid, client=None: _Handle(cloud, cid)))
        monkeypatch.setattr(modal.Volume, "listdir", lambda v, path, recursive=False: cloud._listdir(v.name, path))
        monkeypatch.setattr(modal.Volume, "read_file", lambda v, path: cloud._read(v.name, path))
        monkeypatch.setattr(modal.Volume, "batch_upload", lambda v, force=False: _Batch(cloud, v.name))
        monkeypatch.setattr(modal.Volume, "remove_file", lambda v, path, recursive=False: cloud._remove(v.name, path))

    def _advance_all(self) -> None:
        for c in self.calls.values():
            c.advance(self.clock())

    def _listdir(self, name: str, path: str) -> list[Any]:
        self._gate("listdir")
        self._advance_all()
        d = self.vol(name) / path.lstrip("/")
        if not d.is_dir():
            raise mx.NotFoundError(f"No such file or directory: {path}")  # not FileNotFoundError
        return [type("FileEntry", (), {"path": (d / n).relative_to(self.vol(name)).as_posix()})()
                for n in sorted(p.name for p in d.iterdir())]

    def _read(self, name: str, path: str) -> Any:
        self._gate("read_file")
        self._advance_all()
        p = self.vol(name) / path.lstrip("/")
        if not p.is_file():
            raise FileNotFoundError(path)  # read_file converts the server's NotFoundError
        data = p.read_bytes()
        self.bytes_read[path] = self.bytes_read.get(path, 0) + len(data)

        def gen():
            yield data
        return gen()

    def _remove(self, name: str, path: str) -> None:
        self._gate("remove_file")
        (self.vol(name) / path.lstrip("/")).unlink()


class _Handle:
    """What FunctionCall.from_id / spawn give: get and cancel go over the network."""

    def __init__(self, cloud: Cloud, cid: str):
        self.cloud, self.object_id = cloud, cid

    def get(self, timeout: float | None = None, *, index: int = 0) -> Any:
        self.cloud._gate("get")
        return self.cloud.calls[self.object_id].outcome(self.cloud.clock())

    def cancel(self, terminate_containers: bool = False) -> None:
        self.cloud._gate("cancel")
        c = self.cloud.calls[self.object_id]
        c.cancels += 1
        if c.cancelled_at is None:
            c.advance(self.cloud.clock())
            c.cancelled_at = self.cloud.clock()


class _Batch:
    def __init__(self, cloud: Cloud, name: str):
        self.cloud, self.name = cloud, name

    def __enter__(self) -> _Batch:
        self.cloud._gate("upload")
        return self

    def __exit__(self, *exc: Any) -> bool:
        return False

    def put_file(self, local: Any, remote: str) -> None:
        dest = self.cloud.vol(self.name) / remote.lstrip("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(local, dest)

    def put_directory(self, local: Any, remote: str) -> None:
        for f in sorted(Path(local).rglob("*")):
            if f.is_file():
                self.put_file(f, f"{remote}/{f.relative_to(local).as_posix()}")
