"""The Modal backend: the job on a Modal A100 with one Volume per run (and one per job's data).

The app is built from the config (``build_app``): an image with the job's Python, its
requirements, the job's own workdir as an image layer (``add_local_dir(copy=True)`` at
``REMOTE_WORKDIR``, minus ``[offload] exclude``: daemon.cloud.offload.carry) and this project's source;
the GPU pinned (default "A100-40GB": a bare "A100" may land on an 80 GB card at twice the price);
a per-attempt timeout; modal.Retries (GPU functions are preemptible and Modal restarts the input,
which resumes from the volume); the run's volume at ``MOUNT`` and, with ``[offload] data``, the
data volume at ``DATA_MOUNT`` (each data dir linked into the workdir at its relative path). The
remote body is daemon.cloud.offload.remote.run_remote, committing the volume after every checkpoint
and at exit. The FunctionCall id goes into the store, so a restarted daemon re-attaches with
FunctionCall.from_id instead of launching twice.

Behaviour checked against the modal 1.6.4 SDK source (no live call is possible here):
- ``FunctionCall.get(timeout=0)`` raises the *builtin* TimeoutError while the call runs; once it
  has finished it returns the body's result or re-raises the body's own exception (so an
  OSError from the job is the job's failure, not a network problem); a cancelled input ends as
  GENERIC_STATUS_TERMINATED without data, which ``get`` raises as ``RemoteError``; an attempt
  over its timeout is ``FunctionTimeoutError``; a Modal-side failure of the input is
  ``InternalFailure``. Modal's ConnectionError / ServiceError / InternalError /
  ResourceExhaustedError (a rate limit: the SDK's gRPC layer does not retry RESOURCE_EXHAUSTED)
  and its other TimeoutErrors are about reaching Modal: a retryable OffloadError, never a
  verdict on the run (daemon/core/remote_run.py retries with backoff up to its unreachable window).
- ``FunctionCall.cancel()`` makes the container send itself SIGUSR1, which the SDK turns into
  ``InputCancellation`` (a BaseException) in a sync body: run_remote catches it, TERMs the job,
  waits, adopts, commits, re-raises. ``poll`` keeps saying "running" until the call has settled,
  then "cancelled": the daemon pulls only after the final checkpoint is on the volume. The body
  writes ``run/summary.json`` with "state": "final" just before its last commit: seen while
  ``get`` still says running, a cancelled call has settled as far as the volume is concerned.
  A "preempted" one is not an end: Modal runs the same input again in the same call (SIGINT,
  then a new container from the volume's newest checkpoint), so it reads "running"; a launch
  removes an earlier call's summary first (it would be read as the new call's).
- ``Volume.read_file`` of a missing path raises the builtin FileNotFoundError; ``listdir`` of a
  missing path raises ``modal.exception.NotFoundError`` (the server's NOT_FOUND, unconverted).
- A poll reads ``run/summary.json`` (a few hundred bytes), never the whole progress.jsonl.
- ``spawn`` inside ``app.run``: the call id is handed to ``on_call`` (the launch journal) the
  moment it exists; an error while leaving ``app.run`` after that does not lose the call.

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
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from daemon.cloud.offload.base import (
    JobSpec,
    OffloadAuthError,
    OffloadBackend,
    OffloadError,
    OffloadThrottled,
    RemoteResult,
    RemoteSpec,
    RemoteStatus,
    RemoteSummary,
    UploadResult,
    progress_summary,
    read_summary,
)
from daemon.cloud.offload.carry import MANIFEST_DIR, Carry, manifest_name, newest_adopted_dir
from daemon.cloud.offload.remote import SUMMARY
from daemon.policy.cfgtypes import OffloadConfig

if TYPE_CHECKING:  # the SDK is imported where a backend uses it: a daemon without Modal never loads it
    import modal

log = logging.getLogger("nightshift.offload.modal")

MOUNT = "/vol"
DATA_MOUNT = "/data"
REMOTE_WORKDIR = "/job"
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
    workdir: str | None = None  # the job's workdir, shipped as an image layer at REMOTE_WORKDIR
    exclude: tuple[str, ...] = ()
    data: tuple[str, ...] = ()
    data_volume_name: str | None = None


def settings_from_config(cfg_offload: OffloadConfig, run_key: str, carry: Carry | None = None) -> ModalSettings:
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
    """The exclusions as a Modal pattern matcher with daemon.cloud.offload.sync's semantics (the SSH and
    local backends leave out the same files), allowing directory pruning: a 30 GB data dir is
    skipped, not walked. ``!`` negations are not supported (sync skips them), so pruning is safe."""
    import modal.file_pattern_matcher as fpm

    from daemon.cloud.offload.sync import excluded

    class _Exclude(fpm._AbstractPatternMatcher):
        def can_prune_directories(self) -> bool:
            return True

        def __call__(self, path: Path) -> bool:
            return excluded(Path(path).as_posix(), patterns)

    return _Exclude()._with_repr(f"nightshift-exclude{list(patterns)}")


def remote_body(spec: RemoteSpec, volume_root: str = MOUNT, commit: bool = True) -> RemoteResult:
    """Runs in the Modal container: resume from the volume, run the job, commit as it goes."""
    from daemon.cloud.offload.remote import run_remote

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


def build_app(cfg_offload: OffloadConfig, run_key: str, carry: Carry | None = None):
    """(app, function, volume, settings, image, retries), built offline: no network."""
    import modal

    s = settings_from_config(cfg_offload, run_key, carry)
    app = modal.App(s.app_name)
    volume = modal.Volume.from_name(s.volume_name, create_if_missing=True)
    image = modal.Image.debian_slim(python_version=s.python_version).pip_install(*s.packages)
    if s.workdir:  # a real layer (copy=True): writable in the container, cached by content
        image = image.add_local_dir(s.workdir, REMOTE_WORKDIR, copy=True, ignore=workdir_ignore(s.exclude))
    image = image.add_local_python_source(*s.local_sources, copy=False)
    volumes: dict[str | PurePosixPath, modal.Volume | modal.CloudBucketMount] = {MOUNT: volume}
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
    """An error about reaching Modal (worth retrying), by the SDK's exception classes: what its
    gRPC layer raises once its own retries are spent (UNAVAILABLE, INTERNAL, DEADLINE_EXCEEDED,
    CANCELLED, UNKNOWN -> ServiceError/InternalError; OSError -> ConnectionError), and
    RESOURCE_EXHAUSTED (a rate limit), which it raises at once."""
    import modal.exception as mx
    if isinstance(e, (mx.FunctionTimeoutError, mx.OutputExpiredError)):
        return False  # final outcomes of the call, not transport trouble
    return isinstance(e, (mx.ConnectionError, mx.ServiceError, mx.InternalError, mx.TimeoutError,
                          mx.ResourceExhaustedError, mx.ClientClosed))


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


def _same_checkpoint(local: Path, remote_meta: bytes) -> bool:
    """A local step directory holding what the remote meta.json describes: the same meta (its
    per-chunk digests name every byte) and files that verify."""
    from trainer.format import CorruptCheckpoint, verify
    try:
        if json.loads((local / "meta.json").read_bytes()) != json.loads(remote_meta):
            return False
        verify(local)
        return True
    except (OSError, ValueError, CorruptCheckpoint):
        return False


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

    def __init__(self, cfg_offload: OffloadConfig, carry: Carry | None = None):
        self.cfg = cfg_offload
        self.carry = carry
        self._keys: dict[str, str] = {}  # call id -> run key, to read the run's volume
        self._volumes: dict[str, modal.Volume] = {}  # run key -> modal.Volume (looked up once)
        self._cancelling: set[str] = set()
        self.on_call: Callable[[str], None] | None = None  # set by the Offloader: journals a call id the moment it exists
        self.bytes_read = 0  # bytes downloaded by polls (the bench's figure)
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

        from daemon.cloud.offload.sync import dump_manifest, load_manifest, plan, scan
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
    def spec_for(self, job: JobSpec, s: ModalSettings) -> RemoteSpec:
        spec = job.to_dict()
        spec["volume_name"] = s.volume_name
        c = self.carry
        if c is not None:
            spec.update({"workdir": REMOTE_WORKDIR, "data": list(c.data),
                         "data_root": DATA_MOUNT if c.data else None, "checkpoint_glob": c.checkpoint_glob,
                         "progress_pattern": c.progress_pattern, "keep": c.keep})
        return spec

    def launch(self, run_key: str, job: JobSpec) -> str:
        self._check()
        self.warnings = launch_warnings(job, self.cfg["gpu"])
        for w in self.warnings:
            log.warning("%s", w)
        try:
            app, function, _, s, _, _ = build_app(self.cfg, run_key, self.carry)
            spec = self.spec_for(job, s)
        except Exception as e:  # noqa: BLE001 - InvalidError from the build included
            raise _translate(e, "launch") from None
        self._clear_summary(run_key)
        call_id: str | None = None
        try:
            with app.run(detach=True):
                call_id = function.spawn(spec, MOUNT, True).object_id
                self._keys[call_id] = run_key
                if self.on_call is not None:
                    self.on_call(call_id)  # journalled before anything else can fail
        except Exception as e:  # noqa: BLE001
            if call_id is None:
                raise _translate(e, "launch") from None
            # the call exists and runs (detached): an error on the way out of app.run must not
            # make the daemon launch a second paid GPU
            log.warning("launched %s, then leaving app.run failed: %s: %s", call_id, type(e).__name__, e)
        assert call_id is not None
        return call_id

    def _clear_summary(self, run_key: str) -> None:
        """The summary an earlier call of this run left on the volume ("final", "cancelled") would
        be read as the new call's until its first commit: a fresh attempt after a cut, or a run
        moved to the cloud again, read as cancelled at once. Removed before the spawn."""
        import modal.exception as mx
        try:
            self._volume(run_key).remove_file(f"/run/{SUMMARY}")
        except (FileNotFoundError, mx.NotFoundError):
            pass  # the run's first call
        except Exception as e:  # noqa: BLE001 - nothing launched yet: the launch is tried again
            raise _translate(e, "launch") from None

    # poll -------------------------------------------------------------------------------
    def poll(self, call_id: str) -> RemoteStatus:
        """The call's state. "running" until it has settled; "failed" for the job's own error
        (the call is cancelled so it stops billing) or a timed-out attempt; "cancelled" once a
        cancel settled (or the body's final summary says so); "preempted" for a Modal-side
        failure of the input (the daemon may launch again). Trouble reaching Modal raises a
        retryable OffloadError: how long to keep trying is the daemon's call."""
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
        prog = self._progress(call_id)
        if res is None:
            if prog.get("state") == "final" and prog.get("result") == "cancelled":
                # the body's last commit is done; the call itself ends in a moment
                return RemoteStatus("cancelled", prog["step"], prog["total_steps"], prog["loss"],
                                    prog["steps_per_s"])
            # a "preempted" summary while the call runs: Modal runs the same input again in this
            # call (from the checkpoint just committed), and the new container has not committed
            # yet. Running, not over: a relaunch now would start a second GPU on the same volume
            return RemoteStatus("running", prog["step"], prog["total_steps"], prog["loss"], prog["steps_per_s"])
        if not isinstance(res, dict):
            return RemoteStatus("failed", error=f"the remote body returned {type(res).__name__}, not a result")
        return RemoteStatus(res.get("state", "failed"), res.get("step") or prog["step"], prog["total_steps"],
                            prog["loss"], prog["steps_per_s"], res.get("error"))

    def _classify(self, call_id: str, e: Exception) -> RemoteStatus:
        import modal.exception as mx
        if isinstance(e, mx.ResourceExhaustedError):
            raise OffloadThrottled(f"Modal is rate-limiting us: {type(e).__name__}: {e}") from None
        if _reaching_modal(e):
            raise OffloadError(f"cannot reach Modal: {type(e).__name__}: {e}", retryable=True) from None
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

    def _volume(self, key: str) -> modal.Volume:
        import modal
        if key not in self._volumes:
            self._volumes[key] = modal.Volume.from_name(volume_name(key))
        return self._volumes[key]

    def _progress(self, call_id: str) -> RemoteSummary:
        """The body's summary (daemon/cloud/offload/remote.py, written at each commit): the same few
        hundred bytes at step 50 and at step 50,000."""
        empty: RemoteSummary = {**progress_summary([])}
        key = self._keys.get(call_id)
        if not key:
            return empty
        try:
            data = b"".join(self._volume(key).read_file(f"run/{SUMMARY}"))
        except Exception:  # noqa: BLE001 - progress is best effort (none before the first commit)
            return empty
        self.bytes_read += len(data)
        try:
            got = json.loads(data)
        except ValueError:
            return empty
        return read_summary(got)

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
    def _download(vol: modal.Volume, remote: str, local: Path) -> None:
        local.parent.mkdir(parents=True, exist_ok=True)
        with open(local, "wb") as f:
            for chunk in vol.read_file(remote):
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())

    def _pull_trainer(self, vol: modal.Volume, dest: Path) -> Path | None:
        """The newest remote step that verifies here, newest first: a corrupt one is skipped for
        the next older (as the SSH backend does). A local step identical to the remote one (the
        checkpoint that went up, when the cloud never got to its own) is kept as it is. Files
        land in a temp dir, verified, then renamed; no ``.tmp-`` dir survives any failure."""
        import modal.exception as mx

        from trainer.format import CorruptCheckpoint, ckpt_name, fsync_dir, verify
        try:
            entries = vol.listdir("/ckpt")
        except (FileNotFoundError, mx.NotFoundError):
            return None  # listdir of a missing path: the SDK's NotFoundError
        steps = sorted({int(e.path.rsplit("_", 1)[-1]) for e in entries if re.search(r"step_\d+$", e.path)},
                       reverse=True)
        dest.mkdir(parents=True, exist_ok=True)
        for step in steps:
            name = ckpt_name(step)
            final = dest / name
            try:
                remote_meta = b"".join(vol.read_file(f"/ckpt/{name}/meta.json"))
            except FileNotFoundError:
                log.warning("remote %s has no meta.json: skipped for an older one", name)
                continue
            if final.is_dir() and _same_checkpoint(final, remote_meta):
                return final  # already here, byte for byte (its digests say so): nothing to move
            tmp = dest / f".tmp-{name}-{os.getpid()}"
            shutil.rmtree(tmp, ignore_errors=True)
            try:
                tmp.mkdir(parents=True)
                for entry in vol.listdir(f"/ckpt/{name}"):
                    fname = entry.path.rsplit("/", 1)[-1]
                    self._download(vol, f"/ckpt/{name}/{fname}", tmp / fname)
                verify(tmp)
            except CorruptCheckpoint as e:
                shutil.rmtree(tmp, ignore_errors=True)
                log.warning("remote %s does not verify (%s): trying the next older one", name, e)
                continue
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            if final.exists():  # a different local copy of the same step: the cloud's wins
                aside = dest / f".tmp-replaced-{name}-{os.getpid()}"
                os.rename(final, aside)
                os.rename(tmp, final)
                shutil.rmtree(aside, ignore_errors=True)
            else:
                os.rename(tmp, final)
            fsync_dir(final.parent)
            return final
        return None

    def _pull_adopted(self, vol: modal.Volume) -> Path | None:
        """Newest version first; a copy that does not verify here is skipped for the next one."""
        from daemon.job.adopt import Adopter
        assert self.carry is not None
        import modal.exception as mx
        try:
            names = sorted((e.path.rsplit("/", 1)[-1] for e in vol.listdir("/adopted")), reverse=True)
        except (FileNotFoundError, mx.NotFoundError):
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
