"""The Modal backend: the job on a Modal A100 with one Volume per run (and one per job's data).

The app is built from the config (``build_app``): an image with the job's Python, its
requirements, the job's own workdir as an image layer (``add_local_dir(copy=True)`` at
``REMOTE_WORKDIR``, minus ``[offload] exclude``: daemon.offload.carry) and this project's source;
the GPU pinned (default "A100-40GB": a bare "A100" may land on an 80 GB card at twice the price);
a per-attempt timeout; modal.Retries (GPU functions are preemptible and Modal restarts the input,
which resumes from the volume); the run's volume at ``MOUNT`` and, with ``[offload] data``, the
data volume at ``DATA_MOUNT`` (each data dir linked into the workdir at its relative path). The
remote body is daemon.offload.remote.run_remote, committing the volume after every checkpoint
and at exit. The FunctionCall id goes into the store, so a restarted daemon re-attaches with
FunctionCall.from_id instead of launching twice.

Behaviour checked against the modal 1.6.4 SDK source (no live call is possible here):
- ``FunctionCall.get(timeout=0)`` raises the *builtin* TimeoutError while the call runs; once it
  has finished it returns the body's result or re-raises the body's own exception (so an
  OSError from the job is the job's failure, not a network problem); a cancelled input ends as
  GENERIC_STATUS_TERMINATED without data, which ``get`` raises as ``RemoteError``; an attempt
  over its timeout is ``FunctionTimeoutError``; a Modal-side failure of the input is
  ``InternalFailure``. Modal's ConnectionError / ServiceError / InternalError and its other
  TimeoutErrors are about reaching Modal: retried, at most ``poll_error_cap`` polls in a row.
- ``FunctionCall.cancel()`` makes the container send itself SIGUSR1, which the SDK turns into
  ``InputCancellation`` (a BaseException) in a sync body: run_remote catches it, TERMs the job,
  waits, adopts, commits, re-raises. ``poll`` keeps saying "running" until the call has settled,
  then "cancelled": the daemon pulls only after the final checkpoint is on the volume.
- ``Volume.read_file`` of a missing path raises the builtin FileNotFoundError: not retryable.

modal is imported lazily: the daemon runs without it unless [offload] backend = "modal".
"""

from __future__ import annotations

import json
import logging
import os
import re
import shlex
import shutil
import tempfile
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
from daemon.offload.carry import MANIFEST_DIR, Carry, manifest_name, newest_adopted_dir

log = logging.getLogger("nightshift.offload.modal")

MOUNT = "/vol"
DATA_MOUNT = "/data"
REMOTE_WORKDIR = "/job"
TORCH_PIN = "torch==2.13.0"
POLL_ERROR_CAP = 20  # retryable poll errors in a row before the run is called failed


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
    workdir: str | None = None  # the job's workdir, shipped as an image layer at REMOTE_WORKDIR
    exclude: tuple[str, ...] = ()
    data: tuple[str, ...] = ()
    data_volume_name: str | None = None


def settings_from_config(cfg_offload: dict[str, Any], run_key: str, carry: Carry | None = None) -> ModalSettings:
    pkgs = [TORCH_PIN, "safetensors", "numpy", "psutil", "xxhash", *cfg_offload.get("requirements", [])]
    timeout = int(min(24 * 3600, max(60, cfg_offload["timeout_s"])))  # Modal's per-attempt cap is 24 h
    return ModalSettings(app_name=cfg_offload["app_name"], volume_name=volume_name(run_key),
                         gpu=cfg_offload["gpu"], timeout_s=timeout, max_retries=int(cfg_offload["retries"]),
                         python_version=cfg_offload["python_version"], packages=tuple(dict.fromkeys(pkgs)),
                         workdir=str(carry.workdir) if carry else None,
                         exclude=carry.exclude if carry else (), data=carry.data if carry else (),
                         data_volume_name=data_volume_name(carry.workdir) if carry and carry.data else None)


def volume_name(run_key: str) -> str:
    return "nightshift-" + re.sub(r"[^a-zA-Z0-9-]", "-", run_key)[:50]


def data_volume_name(workdir: Path) -> str:
    """One data volume per job workdir, the same every night: that is what makes the second
    night's sync incremental."""
    import hashlib
    tag = re.sub(r"[^a-zA-Z0-9-]", "-", Path(workdir).name)[:30]
    return f"nightshift-data-{tag}-{hashlib.sha256(str(workdir).encode()).hexdigest()[:8]}"


def workdir_ignore(patterns: tuple[str, ...]):
    """The exclusions as a Modal pattern matcher with daemon.offload.sync's semantics (the SSH and
    local backends leave out the same files), allowing directory pruning: a 30 GB data dir is
    skipped, not walked. ``!`` negations are not supported (sync skips them), so pruning is safe."""
    import modal.file_pattern_matcher as fpm

    from daemon.offload.sync import excluded

    class _Exclude(fpm._AbstractPatternMatcher):
        def can_prune_directories(self) -> bool:
            return True

        def __call__(self, path: Path) -> bool:
            return excluded(Path(path).as_posix(), patterns)

    return _Exclude()._with_repr(f"nightshift-exclude{list(patterns)}")


def remote_body(spec: dict[str, Any], volume_root: str = MOUNT, commit: bool = True) -> dict[str, Any]:
    """Runs in the Modal container: resume from the volume, run the job, commit as it goes."""
    from daemon.offload.remote import run_remote

    save = None
    if commit:
        import modal
        vol = modal.Volume.from_name(spec["volume_name"])
        save = vol.commit
    try:
        return run_remote(spec, volume_root, commit=save or (lambda: None))
    except TimeoutError as e:
        # get(timeout=0) raises the builtin TimeoutError for "not finished yet": a body raising
        # one would be taken for a call that never ends
        raise RuntimeError(f"the remote body raised TimeoutError: {e}") from e


def build_app(cfg_offload: dict[str, Any], run_key: str, carry: Carry | None = None):
    """(app, function, volume, settings, image, retries), built offline: no network."""
    import modal

    s = settings_from_config(cfg_offload, run_key, carry)
    app = modal.App(s.app_name)
    volume = modal.Volume.from_name(s.volume_name, create_if_missing=True)
    image = modal.Image.debian_slim(python_version=s.python_version).pip_install(*s.packages)
    if s.workdir:  # a real layer (copy=True): writable in the container, cached by content
        image = image.add_local_dir(s.workdir, REMOTE_WORKDIR, copy=True, ignore=workdir_ignore(s.exclude))
    image = image.add_local_python_source(*s.local_sources, copy=False)
    volumes = {MOUNT: volume}
    if s.data_volume_name:
        volumes[DATA_MOUNT] = modal.Volume.from_name(s.data_volume_name, create_if_missing=True)
    retries = modal.Retries(max_retries=s.max_retries, backoff_coefficient=2.0, initial_delay=10.0,
                            max_delay=60.0)  # Modal caps it at 60 s
    function = app.function(gpu=s.gpu, timeout=s.timeout_s, retries=retries, volumes=volumes,
                            image=image, serialized=True, name="nightshift_job")(remote_body)
    return app, function, volume, s, image, retries


def credentials_present() -> bool:
    if os.environ.get("MODAL_TOKEN_ID") and os.environ.get("MODAL_TOKEN_SECRET"):
        return True
    cfg = os.environ.get("MODAL_CONFIG_PATH") or str(Path.home() / ".modal.toml")
    return Path(cfg).exists()


def _reaching_modal(e: BaseException) -> bool:
    """An error about reaching Modal (worth retrying), by the SDK's exception classes."""
    import modal.exception as mx
    if isinstance(e, (mx.FunctionTimeoutError, mx.OutputExpiredError)):
        return False  # final outcomes of the call, not transport trouble
    return isinstance(e, (mx.ConnectionError, mx.ServiceError, mx.InternalError, mx.TimeoutError))


def _translate(e: BaseException, what: str = "") -> OffloadError:
    """An SDK failure of a client-side operation (upload, launch, cancel, pull)."""
    import modal.exception as mx
    if isinstance(e, mx.AuthError):
        return OffloadAuthError()
    if isinstance(e, (FileNotFoundError, mx.NotFoundError)):
        return OffloadError(f"{what or 'Modal'}: {e or 'not found'} (missing on the volume?)", retryable=False)
    if _reaching_modal(e) or isinstance(e, (ConnectionError, TimeoutError)):
        return OffloadError(f"cannot reach Modal{' (' + what + ')' if what else ''}: {e}", retryable=True)
    return OffloadError(f"Modal error{' (' + what + ')' if what else ''}: {type(e).__name__}: {e}",
                        retryable=False)


def launch_warnings(job: JobSpec, gpu: str) -> list[str]:
    """Things in the command that would waste a paid GPU."""
    out = []
    for cmd in filter(None, (job.command, job.resume_command)):
        text = " ".join(cmd)
        if re.search(r"--device[= ]+[\"']?cpu\b", text):
            out.append(f"the command trains with --device cpu: on the paid {gpu} it would run on the "
                       f"container's CPU ({shlex.join(cmd)})")
            break
    return out


class ModalBackend(OffloadBackend):
    name = "modal"

    def __init__(self, cfg_offload: dict[str, Any], carry: Carry | None = None,
                 poll_error_cap: int = POLL_ERROR_CAP):
        self.cfg = cfg_offload
        self.carry = carry
        self.poll_error_cap = max(1, int(poll_error_cap))
        self._keys: dict[str, str] = {}  # call id -> run key, to read the run's volume
        self._errors: dict[str, int] = {}  # call id -> retryable poll errors in a row
        self._cancelling: set[str] = set()
        self.warnings: list[str] = []
        self.last_sync: dict[str, dict[str, int]] = {}

    def _check(self) -> None:
        if not credentials_present():  # fail fast and clearly, without a network round trip
            raise OffloadAuthError()

    # upload -----------------------------------------------------------------------------
    def upload(self, run_key: str, checkpoint: Path | None, files: list[Path]) -> UploadResult:
        self._check()
        import modal
        t0 = time.monotonic()
        total = 0
        try:
            vol = modal.Volume.from_name(volume_name(run_key), create_if_missing=True)
            newest = newest_adopted_dir(self.carry.adopted_store) if self.carry else None
            with vol.batch_upload(force=True) as batch:
                if checkpoint is not None:
                    batch.put_directory(str(checkpoint), f"/ckpt/{Path(checkpoint).name}")
                    total += sum(f.stat().st_size for f in Path(checkpoint).iterdir())
                if newest is not None:  # the daemon's newest valid adopted copy seeds the remote store
                    batch.put_directory(str(newest), f"/adopted/{newest.name}")
                    total += sum(f.stat().st_size for f in newest.rglob("*") if f.is_file())
                for f in files:  # a script's own checkpoint files, at their relative paths
                    batch.put_file(str(f), f"/files/{self._rel(Path(f))}")
                    total += Path(f).stat().st_size
            if self.carry is not None and self.carry.data:
                total += self._sync_data()
        except OffloadError:
            raise
        except Exception as e:  # noqa: BLE001 - every SDK failure becomes a clear OffloadError
            raise _translate(e, "upload") from None
        return UploadResult(total, time.monotonic() - t0)

    def _rel(self, f: Path) -> str:
        if self.carry is not None and f.resolve().is_relative_to(self.carry.workdir):
            return f.resolve().relative_to(self.carry.workdir).as_posix()
        return f.name

    def _sync_data(self) -> int:
        """Each data dir to the data volume, sending only what changed since its manifest."""
        import modal
        import modal.exception as mx

        from daemon.offload.sync import dump_manifest, load_manifest, plan, scan
        assert self.carry is not None
        dvol = modal.Volume.from_name(data_volume_name(self.carry.workdir), create_if_missing=True)
        sent = 0
        for rel in self.carry.data:
            src = self.carry.workdir / rel
            mpath = f"/{MANIFEST_DIR}/{manifest_name(rel)}"
            try:
                old = load_manifest(b"".join(dvol.read_file(mpath)))
            except (FileNotFoundError, mx.NotFoundError):
                old = {}  # first night
            local = scan(src)
            p = plan(src, local, old)
            with tempfile.TemporaryDirectory() as td:
                mfile = Path(td) / "manifest.json"
                mfile.write_bytes(dump_manifest(p.manifest))
                with dvol.batch_upload(force=True) as batch:
                    for f in p.send:
                        batch.put_file(str(src / f), f"/{rel}/{f}")
                    batch.put_file(str(mfile), mpath)  # in the same batch: lands with the files
            for f in p.delete:
                try:
                    dvol.remove_file(f"/{rel}/{f}")
                except (FileNotFoundError, mx.NotFoundError):
                    pass
            b = sum(local[f][0] for f in p.send)
            self.last_sync[f"data/{rel}"] = {"files": len(p.send), "bytes": b, "hashed": p.hashed}
            sent += b
        return sent

    # launch -----------------------------------------------------------------------------
    def spec_for(self, job: JobSpec, s: ModalSettings) -> dict[str, Any]:
        spec = job.to_dict() | {"volume_name": s.volume_name}
        c = self.carry
        if c is not None:
            spec.update(workdir=REMOTE_WORKDIR, data=list(c.data), data_root=DATA_MOUNT if c.data else None,
                        checkpoint_glob=c.checkpoint_glob, progress_pattern=c.progress_pattern, keep=c.keep)
        return spec

    def launch(self, run_key: str, job: JobSpec) -> str:
        self._check()
        self.warnings = launch_warnings(job, self.cfg["gpu"])
        for w in self.warnings:
            log.warning("%s", w)
        try:
            app, function, _, s, _, _ = build_app(self.cfg, run_key, self.carry)
            spec = self.spec_for(job, s)
            with app.run(detach=True):
                fc = function.spawn(spec, MOUNT, True)
        except Exception as e:  # noqa: BLE001 - InvalidError from the build included
            raise _translate(e, "launch") from None
        self._keys[fc.object_id] = run_key
        return fc.object_id

    # poll -------------------------------------------------------------------------------
    def poll(self, call_id: str) -> RemoteStatus:
        """The call's state. "running" until it has settled; "failed" for the job's own error
        (the call is cancelled so it stops billing), a timed-out attempt, or Modal unreachable
        ``poll_error_cap`` times in a row (cancel attempted); "cancelled" once a cancel settled;
        "preempted" for a Modal-side failure of the input (the daemon may launch again)."""
        import modal
        import modal.exception as mx
        try:
            fc = modal.FunctionCall.from_id(call_id)
            try:
                res = fc.get(timeout=0)
            except TimeoutError as e:  # builtin: not finished yet (Modal's own are subclasses of mx.Error)
                if isinstance(e, mx.Error):
                    raise
                res = None
        except mx.AuthError:
            raise OffloadAuthError() from None
        except Exception as e:  # noqa: BLE001 - classified by class below
            return self._classify(call_id, e)
        self._errors.pop(call_id, None)
        prog = self._progress(call_id)
        if res is None:
            return RemoteStatus("running", prog["step"], prog["total_steps"], prog["loss"], prog["steps_per_s"])
        if not isinstance(res, dict):
            return RemoteStatus("failed", error=f"the remote body returned {type(res).__name__}, not a result")
        return RemoteStatus(res.get("state", "failed"), res.get("step") or prog["step"], prog["total_steps"],
                            prog["loss"], prog["steps_per_s"], res.get("error"))

    def _classify(self, call_id: str, e: Exception) -> RemoteStatus:
        import modal.exception as mx
        if _reaching_modal(e):
            n = self._errors[call_id] = self._errors.get(call_id, 0) + 1
            if n < self.poll_error_cap:
                raise OffloadError(f"cannot reach Modal ({n}/{self.poll_error_cap}): {type(e).__name__}: {e}",
                                   retryable=True) from None
            self._errors.pop(call_id, None)
            why = (f"Modal unreachable for {n} polls in a row (last: {type(e).__name__}: {e}); the call "
                   "was asked to stop so it does not bill outside the budget")
            self._cancel_quietly(call_id)
            return RemoteStatus("failed", error=why)
        self._errors.pop(call_id, None)
        if isinstance(e, mx.FunctionTimeoutError):
            return RemoteStatus("failed", error=f"the remote attempt hit its timeout: {e}")
        if isinstance(e, mx.InternalFailure):
            return RemoteStatus("preempted", error=f"Modal failed the input (not the job): {e}")
        if isinstance(e, mx.RemoteError) and (call_id in self._cancelling or re.search(r"cancel|terminat", str(e), re.I)):
            self._cancelling.discard(call_id)
            return RemoteStatus("cancelled", error=None)
        # the job's (or the body's) own failure: stop the call so it bills no further
        self._cancel_quietly(call_id)
        return RemoteStatus("failed", error=f"the remote job failed: {type(e).__name__}: {e}")

    def _cancel_quietly(self, call_id: str) -> None:
        try:
            self.cancel(call_id)
        except OffloadError as err:
            log.warning("could not cancel %s: %s", call_id, err)

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
        """Ask Modal to cancel: the body gets InputCancellation, TERMs the job, commits. Returns at
        once; poll says "cancelled" once the call has settled (then pull)."""
        import modal
        self._cancelling.add(call_id)
        try:
            modal.FunctionCall.from_id(call_id).cancel()
        except Exception as e:  # noqa: BLE001
            raise _translate(e, "cancel") from None

    # pull -------------------------------------------------------------------------------
    def pull(self, run_key: str, call_id: str, dest_checkpoint_dir: Path) -> Path:
        """The newest trainer checkpoint into ``dest_checkpoint_dir`` and the newest valid
        adopted copy to its relative path in the workdir; returns the first of them."""
        import modal
        try:
            vol = modal.Volume.from_name(volume_name(run_key))
            got = self._pull_trainer(vol, Path(dest_checkpoint_dir))
            if self.carry is not None and self.carry.checkpoint_glob:
                placed = self._pull_adopted(vol)
                got = got or placed
        except OffloadError:
            raise
        except Exception as e:  # noqa: BLE001
            raise _translate(e, "pull") from None
        if got is None:
            raise OffloadError("the Modal volume has no valid checkpoint to bring home")
        return got

    @staticmethod
    def _download(vol: Any, remote: str, local: Path) -> None:
        local.parent.mkdir(parents=True, exist_ok=True)
        with open(local, "wb") as f:
            for chunk in vol.read_file(remote):
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())

    def _pull_trainer(self, vol: Any, dest: Path) -> Path | None:
        from trainer.format import ckpt_name, fsync_dir, verify
        try:
            entries = vol.listdir("/ckpt")
        except FileNotFoundError:
            return None
        steps = sorted(int(e.path.rsplit("_", 1)[-1]) for e in entries if re.search(r"step_\d+$", e.path))
        if not steps:
            return None
        name = ckpt_name(steps[-1])
        tmp = dest / f".tmp-{name}-{os.getpid()}"
        tmp.mkdir(parents=True, exist_ok=True)
        for entry in vol.listdir(f"/ckpt/{name}"):
            fname = entry.path.rsplit("/", 1)[-1]
            self._download(vol, f"/ckpt/{name}/{fname}", tmp / fname)
        final = dest / name
        os.rename(tmp, final)
        fsync_dir(final.parent)
        verify(final)
        return final

    def _pull_adopted(self, vol: Any) -> Path | None:
        """Newest version first; a copy that does not verify here is skipped for the next one."""
        from daemon.adopt import Adopter
        assert self.carry is not None
        try:
            names = sorted((e.path.rsplit("/", 1)[-1] for e in vol.listdir("/adopted")), reverse=True)
        except FileNotFoundError:
            return None
        with tempfile.TemporaryDirectory() as td:
            store = Path(td) / "adopted"
            for name in (n for n in names if re.fullmatch(r"v_\d{6,}", n)):
                meta = json.loads(b"".join(vol.read_file(f"/adopted/{name}/meta.json")))
                base = store / name
                for rel in meta["files"]:
                    sub = meta["relpath"] if rel == "." else f"{meta['relpath']}/{rel}"
                    self._download(vol, f"/adopted/{name}/{sub}", base / sub)
                (base / "meta.json").write_text(json.dumps(meta))
                # verified here (sha256, zip CRCs) and placed atomically; a bad one: the next older
                c = Adopter(store / ".none", "__none__", store).restore_newest(self.carry.workdir)
                if c is not None:
                    return self.carry.workdir / c.relpath
                shutil.rmtree(base, ignore_errors=True)
        return None
