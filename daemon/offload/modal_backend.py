"""The Modal backend: the job on a Modal A100 with one Volume per job.

The app is built from the config (``build_app``): an image with the job's Python, its
requirements and this project's source; the GPU pinned (default "A100-40GB": a bare "A100"
may land on an 80 GB card at twice the price); a per-attempt timeout; modal.Retries (GPU
functions are preemptible and Modal restarts the input, which resumes from the volume); the
volume mounted at /vol. The remote body is daemon.offload.remote.run_remote, committing the
volume after every checkpoint and at exit. The FunctionCall id goes into the store, so a
restarted daemon re-attaches with FunctionCall.from_id instead of launching twice.

modal is imported lazily: the daemon runs without it unless [offload] backend = "modal".
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from daemon.offload.base import (
    JobSpec,
    OffloadAuthError,
    OffloadBackend,
    OffloadError,
    RemoteStatus,
    UploadResult,
    progress_summary,
)

MOUNT = "/vol"
TORCH_PIN = "torch==2.13.0"


@dataclass(frozen=True)
class ModalSettings:
    """Everything the app is built from, kept so status and tests can show it."""
    app_name: str
    volume_name: str
    gpu: str
    timeout_s: int
    max_retries: int
    python_version: str
    packages: tuple[str, ...]
    local_sources: tuple[str, ...] = ("daemon", "trainer")
    env: dict[str, str] = field(default_factory=dict)


def settings_from_config(cfg_offload: dict[str, Any], run_key: str) -> ModalSettings:
    pkgs = [TORCH_PIN, "safetensors", "numpy", "psutil", *cfg_offload.get("requirements", [])]
    timeout = int(min(24 * 3600, max(60, cfg_offload["timeout_s"])))  # Modal's per-attempt cap is 24 h
    return ModalSettings(app_name=cfg_offload["app_name"], volume_name=volume_name(run_key),
                         gpu=cfg_offload["gpu"], timeout_s=timeout, max_retries=int(cfg_offload["retries"]),
                         python_version=cfg_offload["python_version"], packages=tuple(dict.fromkeys(pkgs)))


def volume_name(run_key: str) -> str:
    return "nightshift-" + re.sub(r"[^a-zA-Z0-9-]", "-", run_key)[:50]


def remote_body(spec: dict[str, Any], volume_root: str = MOUNT, commit: bool = True) -> dict[str, Any]:
    """Runs in the Modal container: resume from the volume, run the job, commit as it goes."""
    from daemon.offload.remote import run_remote

    vol = None
    if commit:
        import modal
        vol = modal.Volume.from_name(spec["volume_name"])
    return run_remote(spec, volume_root, commit=(vol.commit if vol is not None else (lambda: None)))


def build_app(cfg_offload: dict[str, Any], run_key: str):
    """(app, function, volume, settings), built offline: nothing here touches the network."""
    import modal

    s = settings_from_config(cfg_offload, run_key)
    app = modal.App(s.app_name)
    volume = modal.Volume.from_name(s.volume_name, create_if_missing=True)
    image = (modal.Image.debian_slim(python_version=s.python_version)
             .pip_install(*s.packages)
             .add_local_python_source(*s.local_sources, copy=False))
    retries = modal.Retries(max_retries=s.max_retries, backoff_coefficient=2.0, initial_delay=10.0,
                            max_delay=60.0)  # Modal caps it at 60 s
    function = app.function(gpu=s.gpu, timeout=s.timeout_s, retries=retries, volumes={MOUNT: volume},
                            image=image, serialized=True, name="nightshift_job")(remote_body)
    return app, function, volume, s, image, retries


def credentials_present() -> bool:
    if os.environ.get("MODAL_TOKEN_ID") and os.environ.get("MODAL_TOKEN_SECRET"):
        return True
    cfg = os.environ.get("MODAL_CONFIG_PATH") or str(Path.home() / ".modal.toml")
    return Path(cfg).exists()


def _translate(e: BaseException) -> OffloadError:
    import modal.exception as mx
    if isinstance(e, mx.AuthError):
        return OffloadAuthError()
    if isinstance(e, (mx.ConnectionError, ConnectionError, TimeoutError, OSError)):
        return OffloadError(f"cannot reach Modal: {e}", retryable=True)
    return OffloadError(f"Modal error: {e}", retryable=False)


class ModalBackend(OffloadBackend):
    name = "modal"

    def __init__(self, cfg_offload: dict[str, Any]):
        self.cfg = cfg_offload
        self._keys: dict[str, str] = {}  # call id -> run key, to read the run's volume

    def _check(self) -> None:
        if not credentials_present():  # fail fast and clearly, without a network round trip
            raise OffloadAuthError()

    def upload(self, run_key: str, checkpoint: Path | None, files: list[Path]) -> UploadResult:
        self._check()
        import modal
        t0 = time.monotonic()
        total = 0
        try:
            vol = modal.Volume.from_name(volume_name(run_key), create_if_missing=True)
            with vol.batch_upload(force=True) as batch:
                if checkpoint is not None:
                    batch.put_directory(str(checkpoint), f"/ckpt/{Path(checkpoint).name}")
                    total += sum(f.stat().st_size for f in Path(checkpoint).iterdir())
                for f in files:
                    batch.put_file(str(f), f"/files/{Path(f).name}")
                    total += Path(f).stat().st_size
        except Exception as e:  # noqa: BLE001 - every SDK failure becomes a clear OffloadError
            raise _translate(e) from None
        return UploadResult(total, time.monotonic() - t0)

    def launch(self, run_key: str, job: JobSpec) -> str:
        self._check()
        app, function, _, s, _, _ = build_app(self.cfg, run_key)
        spec = job.to_dict() | {"volume_name": s.volume_name}
        try:
            with app.run(detach=True):
                fc = function.spawn(spec, MOUNT, True)
        except Exception as e:  # noqa: BLE001
            raise _translate(e) from None
        return fc.object_id

    def poll(self, call_id: str) -> RemoteStatus:
        import modal
        try:
            fc = modal.FunctionCall.from_id(call_id)
            try:
                res = fc.get(timeout=0)
            except TimeoutError:
                res = None
        except Exception as e:  # noqa: BLE001
            if type(e).__name__ in ("FunctionTimeoutError",):
                return RemoteStatus("failed", error=f"remote attempt timed out: {e}")
            err = _translate(e)
            if err.retryable:
                raise err from None
            return RemoteStatus("failed", error=str(e))
        prog = self._progress(call_id)
        if res is None:
            return RemoteStatus("running", prog["step"], prog["total_steps"], prog["loss"], prog["steps_per_s"])
        return RemoteStatus(res.get("state", "failed"), res.get("step") or prog["step"], prog["total_steps"],
                            prog["loss"], prog["steps_per_s"], res.get("error"))

    def _progress(self, call_id: str) -> dict[str, Any]:
        import modal
        key = self._keys.get(call_id)
        if not key:
            return progress_summary([])
        try:
            data = b"".join(modal.Volume.from_name(volume_name(key)).read_file("run/progress.jsonl"))
        except Exception:  # noqa: BLE001 - progress is best effort; the call's state is what counts
            return progress_summary([])
        recs = []
        for line in data.decode(errors="replace").splitlines():
            try:
                recs.append(json.loads(line))
            except ValueError:
                pass
        return progress_summary(recs)

    def remember(self, call_id: str, run_key: str) -> None:
        self._keys[call_id] = run_key

    def cancel(self, call_id: str) -> None:
        import modal
        try:
            modal.FunctionCall.from_id(call_id).cancel()  # the container gets its exit grace
        except Exception as e:  # noqa: BLE001
            raise _translate(e) from None

    def pull(self, run_key: str, call_id: str, dest_checkpoint_dir: Path) -> Path:
        import modal

        from trainer.format import ckpt_name, fsync_dir, verify
        try:
            vol = modal.Volume.from_name(volume_name(run_key))
            steps = sorted(int(e.path.rsplit("_", 1)[-1]) for e in vol.listdir("/ckpt")
                           if re.search(r"step_\d+$", e.path))
            if not steps:
                raise OffloadError("the Modal volume has no checkpoint to bring home")
            name = ckpt_name(steps[-1])
            tmp = Path(dest_checkpoint_dir) / f".tmp-{name}-{os.getpid()}"
            tmp.mkdir(parents=True, exist_ok=True)
            for entry in vol.listdir(f"/ckpt/{name}"):
                fname = entry.path.rsplit("/", 1)[-1]
                with open(tmp / fname, "wb") as f:
                    for chunk in vol.read_file(f"/ckpt/{name}/{fname}"):
                        f.write(chunk)
                    os.fsync(f.fileno())
        except OffloadError:
            raise
        except Exception as e:  # noqa: BLE001
            raise _translate(e) from None
        final = Path(dest_checkpoint_dir) / name
        os.rename(tmp, final)
        fsync_dir(final.parent)
        verify(final)
        return final
