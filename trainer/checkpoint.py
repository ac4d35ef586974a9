"""Writing and reading checkpoints: safetensors files + meta.json, atomically, verified.

Persist, at the disk's speed: the writer produces the safetensors format itself (8-byte header
length, JSON header, raw tensor bytes) straight from the tensors' memory with large unbuffered
writes (no serialised copy, so no extra memory beyond one non-contiguous tensor), while a second
thread computes the per-chunk xxh3 digests over the same memory (xxhash releases the GIL).
After each 64 MiB written, ``sync_file_range(SYNC_FILE_RANGE_WRITE)`` starts the writeback of
that range: the device writes while we copy the next piece into the page cache, so the final
fsync finds little left to do (a plain write-then-fsync does the two one after the other).
Files stay loadable by the safetensors library.

Restore, verified and without a read buffer: ``load_checkpoint`` checks every file's size,
header and digests before returning anything (digests hashed by threads straight from a
read-only mapping of the page cache, so no file is read into a buffer), then hands out each
group lazily as tensors on a private (copy-on-write) mapping of its file: a model's
``load_state_dict`` copies from it once; an optimizer keeps the tensors as they are (same dtype,
same device), so its state is never copied by us. Left lazy, the optimizer's first step would
break copy-on-write one 4 KiB fault at a time (measured: 2-3x the cost of a plain copy on this
VM), so ``trainer.state.restore`` asks for that group ``writable``: a thread has the kernel
populate its pages for writing in one call (MADV_POPULATE_WRITE) while the model copies, and
the state ends in private memory, paid for up front. A group is mapped only while someone
holds it, so restoring group by group holds at most one group's pages beyond the restored
state. The file a CPU optimizer's state came from stays mapped (its disk space held after
retention deletes it) until those tensors are replaced or the process exits.

Two-phase save (CheckFreq): ``AsyncCheckpointer.snapshot`` takes the state of a step boundary
into reusable CPU buffers and a background thread persists them. Only what forward mutates
(buffers) and the small state are copied while the loop waits; parameters and optimizer state
are copied by the background thread while forward/backward run, and the optimizer's next
``step()`` waits for that copy (a step pre-hook): the snapshot is exactly the step's state.
"""

from __future__ import annotations

import ctypes
import json
import logging
import mmap
import os
import shutil
import threading
import time
import weakref
import zlib
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch

from trainer.format import (
    CHUNK,
    DIGEST,
    FORMAT,
    META,
    CorruptCheckpoint,
    check_file,
    ckpt_name,
    cleanup_stale_tmp,
    commit,
    fsync_dir,
    read_header,
    tmp_name,
    verify,
)
from trainer.format import apply_retention as _retention

log = logging.getLogger("trainer.checkpoint")

_DTYPES = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8",
    torch.uint8: "U8", torch.bool: "BOOL",
}
for _name, _code in (("float8_e4m3fn", "F8_E4M3"), ("float8_e5m2", "F8_E5M2"),
                     ("uint16", "U16"), ("uint32", "U32"), ("uint64", "U64")):
    if hasattr(torch, _name):
        _DTYPES[getattr(torch, _name)] = _code
_FROM_CODE = {code: dt for dt, code in _DTYPES.items()}

Groups = Mapping[str, dict[str, torch.Tensor]]
PIECE = 64 << 20  # one write() and one writeback kick per piece


def _sync_file_range() -> Callable[[int, int, int], None] | None:
    """libc's sync_file_range(fd, off, n, SYNC_FILE_RANGE_WRITE), or None off Linux."""
    try:
        fn = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return lambda fd, off, n: fn(fd, off, n, 2)  # a hint: its failure only costs speed


_start_writeback = _sync_file_range()
_MADV_POPULATE_WRITE = 23  # Linux 5.14+: fault a range in for writing in one call


def _libc_madvise() -> Callable[[int, int, int], int] | None:
    try:
        fn = ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn  # ctypes drops the GIL for the call: a thread can populate while we copy


_madvise = _libc_madvise()


def _storage_key(t: torch.Tensor) -> tuple[int, int, int, tuple[int, ...], tuple[int, ...]]:
    return (t.untyped_storage().data_ptr(), int(t.storage_offset()), t.dtype.itemsize,
            tuple(t.shape), tuple(t.stride()))


def dedupe(tensors: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """safetensors refuses shared tensors: keep one name per identical view, record aliases."""
    seen: dict[Any, str] = {}
    unique: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    for name in sorted(tensors):
        t = tensors[name]
        key = _storage_key(t) if t.numel() else None
        if key is not None and key in seen:
            aliases[name] = seen[key]
        else:
            if key is not None:
                seen[key] = name
            unique[name] = t
    return unique, aliases


def _as_bytes(t: torch.Tensor) -> memoryview:
    t = t.detach()
    if t.device.type != "cpu":
        t = t.cpu()
    t = t.contiguous()
    if t.numel() == 0:
        return memoryview(b"")
    return memoryview(t.reshape(-1).view(torch.uint8).numpy())  # type: ignore[arg-type]  # numpy's stubs lack __buffer__


class _ChunkHasher:
    """The digest (xxh3-64, or zlib crc32 without the xxhash package) of each CHUNK bytes of
    a stream fed in pieces of any size."""

    def __init__(self) -> None:
        self.fill = 0
        self.digests: list[Any] = []
        if DIGEST == "xxh3":
            import xxhash

            self.h = xxhash.xxh3_64()
        else:
            self.crc = 0

    def _update(self, mv: memoryview) -> None:
        if DIGEST == "xxh3":
            self.h.update(mv)
        else:
            self.crc = zlib.crc32(mv, self.crc)

    def _close_chunk(self) -> None:
        if DIGEST == "xxh3":
            self.digests.append(f"{self.h.intdigest():016x}")
            self.h.reset()
        else:
            self.digests.append(self.crc)
            self.crc = 0

    def feed(self, mv: memoryview) -> None:
        pos = 0
        while pos < len(mv):
            take = min(CHUNK - self.fill, len(mv) - pos)
            self._update(mv[pos:pos + take])
            self.fill += take
            pos += take
            if self.fill == CHUNK:
                self._close_chunk()
                self.fill = 0

    def result(self) -> list[Any]:
        if self.fill or not self.digests:
            self._close_chunk()
        return self.digests


def _write_file(path: Path, tensors: Mapping[str, torch.Tensor],
                metadata: dict[str, str] | None) -> tuple[int, dict[str, Any]]:
    """Write one safetensors file, hashing in a second thread and kicking writeback as it
    goes; return the still-open fd (not yet fsynced) and its meta entry."""
    header: dict[str, Any] = {}
    if metadata:
        header["__metadata__"] = metadata
    bufs = []
    off = 0
    for name in sorted(tensors):
        t = tensors[name]
        if t.dtype not in _DTYPES:
            raise TypeError(f"tensor {name!r} has dtype {t.dtype}, which safetensors cannot store")
        b = _as_bytes(t)
        header[name] = {"dtype": _DTYPES[t.dtype], "shape": list(t.shape),
                        "data_offsets": [off, off + len(b)]}
        bufs.append(b)
        off += len(b)
    hjson = json.dumps(header, separators=(",", ":")).encode()
    hjson += b" " * ((8 - len(hjson) % 8) % 8)  # keep tensor data 8-byte aligned, as safetensors does
    head = len(hjson).to_bytes(8, "little") + hjson
    pieces = [memoryview(head)] + [b[i:i + PIECE] for b in bufs for i in range(0, len(b), PIECE)]
    hasher = _ChunkHasher()
    failed: list[BaseException] = []

    def hash_all() -> None:
        try:
            for piece in pieces:
                hasher.feed(piece)
        except BaseException as e:  # noqa: BLE001 - re-raised in the writing thread
            failed.append(e)

    hash_thread = threading.Thread(target=hash_all, name="ckpt-hash")
    hash_thread.start()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        pos = 0
        for piece in pieces:
            _write_all(fd, piece)
            if _start_writeback is not None and len(piece) >= 1 << 20:
                _start_writeback(fd, pos, len(piece))
            pos += len(piece)
    except BaseException:
        os.close(fd)
        raise
    finally:
        hash_thread.join()
    if failed:
        os.close(fd)
        raise failed[0]
    return fd, {"size": len(head) + off, "chunk": CHUNK, DIGEST: hasher.result()}


def write_safetensors(path: Path, tensors: Mapping[str, torch.Tensor],
                      metadata: dict[str, str] | None = None) -> dict[str, Any]:
    """Write one safetensors file with large direct writes; fsync it. Returns its meta entry
    (size, chunk, xxh3 digests)."""
    fd, entry = _write_file(Path(path), tensors, metadata)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return entry


def _write_all(fd: int, mv: memoryview) -> None:
    while len(mv):
        n = os.write(fd, mv)
        mv = mv[n:]


def save_checkpoint(ckpt_dir: str | os.PathLike, step: int, groups: Groups, meta: dict[str, Any]) -> Path:
    """Write a complete checkpoint atomically; return its final path.

    Every group file is written (writeback already under way) before any is fsynced; then the
    files and the temp directory are fsynced at once, in threads (one journal commit serves
    them all, where one after the other each waited for its own); all are durable before the
    rename."""
    d = Path(ckpt_dir)
    d.mkdir(parents=True, exist_ok=True)
    tmp = d / tmp_name(step)
    final = d / ckpt_name(step)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    fds: list[int] = []
    try:
        files: dict[str, Any] = {}
        aliases: dict[str, dict[str, str]] = {}
        for group, tensors in groups.items():
            unique, al = dedupe(tensors)
            if al:
                aliases[group] = al
            fd, files[f"{group}.safetensors"] = _write_file(tmp / f"{group}.safetensors", unique, None)
            fds.append(fd)
        body = dict(meta)
        body.update({"format": FORMAT, "step": int(step), "created": time.time(), "files": files,
                     "aliases": aliases, "groups": sorted(groups)})
        data = json.dumps(body, allow_nan=True).encode()
        fd = os.open(tmp / META, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        fds.append(fd)
        _write_all(fd, memoryview(data))
        _fsync_all(fds + [tmp])
        while fds:
            os.close(fds.pop())
        commit(tmp, final)
    except BaseException:
        for fd in fds:
            os.close(fd)
        shutil.rmtree(tmp, ignore_errors=True)  # a failed write never leaves a half checkpoint
        raise
    return final


def _release(fds: list[int]) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass
    fds.clear()


def _fsync_all(targets: list[int | Path]) -> None:
    """fsync open fds and directories concurrently; raise the first failure."""

    def one(t: int | Path) -> None:
        if isinstance(t, Path):
            fsync_dir(t)
        else:
            os.fsync(t)

    with ThreadPoolExecutor(max_workers=len(targets)) as pool:
        for f in [pool.submit(one, t) for t in targets]:
            f.result()


class LoadedGroups(Mapping[str, dict[str, torch.Tensor]]):
    """The verified groups of one checkpoint, each mapped when asked for.

    Holds the files open (a rename or retention's delete can't pull them away after the
    check). ``groups[g]`` maps g's file copy-on-write on first use and returns its tensors on
    that mapping (on ``device`` if not the CPU), the same dict each time until ``release(g)``;
    a mapping lives as long as any of its tensors. ``trainer.state.restore`` releases each
    group once it is restored, so only one group's pages are mapped on top of the state."""

    def __init__(self, path: Path, files: dict[str, tuple[int, int, dict[str, Any]]],
                 aliases: dict[str, dict[str, str]], device: str):
        self.path = path
        self._files = files  # group -> (fd, data offset, safetensors header)
        self._aliases = aliases
        self._device = device
        self._held: dict[str, dict[str, torch.Tensor]] = {}
        self._populating: dict[str, threading.Thread] = {}
        self._whole: dict[str, torch.Tensor] = {}  # group -> its whole mapping as bytes
        self._finalizer = weakref.finalize(self, _release, [fd for fd, _, _ in files.values()])

    def __iter__(self) -> Iterator[str]:
        return iter(self._files)

    def __len__(self) -> int:
        return len(self._files)

    def __getitem__(self, group: str) -> dict[str, torch.Tensor]:
        if group in self._populating:
            self._populating.pop(group).join()
        if group in self._held:
            return self._held[group]
        return self._map(group)

    def writable(self, group: str) -> None:
        """The caller will write this group's tensors (optimizer state): map it now and have a
        thread break copy-on-write for all of it in one kernel call, while the caller goes on
        (say, copying the model); ``groups[group]`` waits for it. Without the call (kernel
        before 5.14, not Linux, not the CPU) the pages are copied as they are first written."""
        if group in self._held or group not in self._files or self._device != "cpu" or _madvise is None:
            return
        self._map(group)
        whole = self._whole.get(group)
        if whole is None:
            return
        addr, length = whole.data_ptr(), whole.numel()

        def populate(keep: torch.Tensor = whole) -> None:  # keeps the mapping alive meanwhile
            _madvise(addr, length, _MADV_POPULATE_WRITE)  # failure = lazy faults, still correct

        t = threading.Thread(target=populate, name="ckpt-populate", daemon=True)
        t.start()
        self._populating[group] = t

    def _map(self, group: str) -> dict[str, torch.Tensor]:
        if group not in self._files:
            raise KeyError(group)
        fd, base, header = self._files[group]
        mm = mmap.mmap(fd, 0, access=mmap.ACCESS_COPY) if os.fstat(fd).st_size else None
        out: dict[str, torch.Tensor] = {}
        for name, info in header.items():
            if name == "__metadata__":
                continue
            a, b = info["data_offsets"]
            dt = _FROM_CODE[info["dtype"]]
            n = (b - a) // dt.itemsize
            t = torch.frombuffer(mm, dtype=dt, count=n, offset=base + a) if n else torch.empty(0, dtype=dt)
            t = t.reshape(info["shape"])
            out[name] = t.to(self._device) if self._device != "cpu" else t
        for alias, target in self._aliases.get(group, {}).items():
            out[alias] = out[target]
        if mm is not None and self._device == "cpu":
            self._whole[group] = torch.frombuffer(mm, dtype=torch.uint8)
        self._held[group] = out
        return out

    def release(self, group: str) -> None:
        """Forget a group's tensors (its mapping goes when the last of them does)."""
        if group in self._populating:
            self._populating.pop(group).join()
        self._held.pop(group, None)
        self._whole.pop(group, None)

    def close(self) -> None:
        """Close the files (tensors already handed out keep their own mappings)."""
        self._finalizer()


def load_checkpoint(path: str | os.PathLike, device: str = "cpu",
                    verify_checksums: bool = True) -> tuple[LoadedGroups, dict[str, Any]]:
    """Verify a whole checkpoint (sizes, headers, digests; no pickle), then return its groups
    (mapped lazily, see LoadedGroups) and meta. Raises CorruptCheckpoint before any tensor is
    handed out, so a model is never half-restored from a bad checkpoint."""
    p = Path(path)
    meta = verify(p, deep=False)  # meta, no pickle, every file's size and header
    names = meta.get("groups") or [f[:-12] for f in meta["files"] if f.endswith(".safetensors")]
    files: dict[str, tuple[int, int, dict[str, Any]]] = {}
    try:
        with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
            for group in names:
                fname = f"{group}.safetensors"
                entry = meta["files"].get(fname)
                if entry is None:
                    raise CorruptCheckpoint(p, f"meta.json lists group {group!r} but not {fname}")
                fd = os.open(p / fname, os.O_RDONLY)
                files[group] = (fd, 0, {})
                err = check_file(fd, fname, entry, deep=verify_checksums, pool=pool)
                if err:
                    raise CorruptCheckpoint(p, err)
                base, header = read_header(fd, entry["size"])
                bad = [k for k, v in header.items() if k != "__metadata__" and v.get("dtype") not in _FROM_CODE]
                if bad:
                    raise CorruptCheckpoint(p, f"{fname}: tensor {bad[0]!r} has an unknown dtype")
                files[group] = (fd, base, header)
    except BaseException:
        _release([fd for fd, _, _ in files.values()])
        raise
    return LoadedGroups(p, files, meta.get("aliases") or {}, device), meta


class AsyncCheckpointer:
    """Two-phase checkpointing: a short snapshot at a step boundary, the copy and the write in a
    background thread.

    What ``optimizer.step()`` writes (its parameters and its state tensors) is copied into the
    reusable CPU buffers by the background thread while the loop runs on: forward and backward
    only read those tensors. The optimizer gets a step pre-hook (registered once) that makes its
    next ``step()`` wait until that copy is done, so no update can reach the snapshot. Everything
    else in the groups (buffers that forward updates in place, such as BatchNorm's running
    stats; parameters the optimizer does not own; RNG states) is copied before ``snapshot``
    returns, and the JSON meta is already a value. Caveat, documented in the Runtime: a tensor
    the optimizer owns that the loop changes in place *outside* ``optimizer.step()`` before the
    next step (an EMA written into optimized weights, say) must call ``wait_copy()`` first.
    Without an optimizer every tensor is copied in the snapshot, as before.
    """

    def __init__(self, ckpt_dir: str | os.PathLike, keep: int = 3, best_metric: str | None = None,
                 on_persisted: Callable[[dict[str, Any]], None] | None = None,
                 on_error: Callable[[int, BaseException], None] | None = None):
        self.dir = Path(ckpt_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        cleanup_stale_tmp(self.dir)
        self.keep = keep
        self.best_metric = best_metric
        self.on_persisted = on_persisted
        self.on_error = on_error
        self.last_error: BaseException | None = None
        self._buffers: dict[tuple[str, str], torch.Tensor] = {}
        self._thread: threading.Thread | None = None
        self._copied = threading.Event()  # set when the background copy of the last snapshot is done
        self._copied.set()
        # optimizer -> its step pre-hook's handle; weak, so a dropped optimizer's id, reused by
        # a new one, can never pass for "already fenced"
        self._hooks: weakref.WeakKeyDictionary[torch.optim.Optimizer, Any] = weakref.WeakKeyDictionary()
        self.fence_wait_s = 0.0  # how long optimizer.step() waited for the last snapshot's copy

    @property
    def busy(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def wait(self) -> None:
        """Until the last snapshot is persisted (or has failed)."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def wait_copy(self) -> float:
        """Until the last snapshot's background copy is done (the state may change after it).
        Returns the seconds waited."""
        if self._copied.is_set():
            return 0.0
        t0 = time.perf_counter()
        self._copied.wait()
        return time.perf_counter() - t0

    def _fence(self, optimizer: torch.optim.Optimizer) -> None:
        if optimizer not in self._hooks:
            def before_step(opt: Any, args: Any, kwargs: Any) -> None:
                if not self._copied.is_set():
                    self.fence_wait_s += self.wait_copy()
            self._hooks[optimizer] = optimizer.register_step_pre_hook(before_step)

    def _copy(self, group: str, tensors: Mapping[str, torch.Tensor], names: list[str],
              snap: dict[str, torch.Tensor]) -> None:
        for name in names:
            t = tensors[name]
            buf = self._buffers.get((group, name))
            if buf is None or buf.shape != t.shape or buf.dtype != t.dtype:
                buf = torch.empty(t.shape, dtype=t.dtype, device="cpu")
                self._buffers[(group, name)] = buf
            buf.copy_(t.detach(), non_blocking=False)
            snap[name] = buf

    def snapshot(self, step: int, groups: Groups, meta: dict[str, Any],
                 metric: float | None = None, optimizer: torch.optim.Optimizer | None = None) -> float:
        """Snapshot the state of ``step`` and persist it in the background. Returns the stall (s)
        spent here; the wait of the optimizer's next step (if the copy is still running) adds
        to ``fence_wait_s`` and to the ``stall_s`` reported when the checkpoint is durable."""
        t0 = time.perf_counter()
        self.wait()  # the buffers are reused: never overwrite a snapshot still being written
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        owned: set[int] = set()
        if optimizer is not None:
            owned = {p.untyped_storage().data_ptr() for g in optimizer.param_groups for p in g["params"]}
            owned |= {t.untyped_storage().data_ptr() for st in optimizer.state.values()
                      for t in st.values() if isinstance(t, torch.Tensor)}
        snap: dict[str, dict[str, torch.Tensor]] = {}
        later: list[tuple[str, Mapping[str, torch.Tensor], list[str]]] = []
        aliases_of: dict[str, dict[str, str]] = {}
        for g, tensors in groups.items():
            unique, aliases_of[g] = dedupe(tensors)
            snap[g] = {}
            deferred = [n for n, t in unique.items() if t.numel() and t.untyped_storage().data_ptr() in owned]
            now = [n for n in unique if n not in set(deferred)]
            self._copy(g, unique, now, snap[g])
            if deferred:
                later.append((g, unique, deferred))
        if later:
            self._copied.clear()
            self._fence(optimizer)  # type: ignore[arg-type]  # later is empty without an optimizer
        self.fence_wait_s = 0.0
        stall = time.perf_counter() - t0
        body = dict(meta)
        if metric is not None and self.best_metric:
            body.setdefault("metrics", {})[self.best_metric] = metric
        self._thread = threading.Thread(target=self._persist, args=(step, snap, later, aliases_of, body, stall),
                                        name=f"ckpt-{step}", daemon=True)
        self._thread.start()
        return stall

    def _persist(self, step: int, snap: dict[str, dict[str, torch.Tensor]],
                 later: list[tuple[str, Mapping[str, torch.Tensor], list[str]]],
                 aliases_of: dict[str, dict[str, str]], meta: dict[str, Any], stall: float) -> None:
        t0 = time.perf_counter()
        try:
            try:
                for g, tensors, names in later:
                    self._copy(g, tensors, names, snap[g])
            finally:
                later.clear()  # drop the references to the live tensors
                self._copied.set()  # a failed copy must not block the loop forever
            for g, aliases in aliases_of.items():
                for alias, target in aliases.items():
                    snap[g][alias] = snap[g][target]
            path = save_checkpoint(self.dir, step, snap, meta)
            size = sum(f.stat().st_size for f in path.iterdir())
            _retention(self.dir, self.keep, self.best_metric)
            self.last_error = None
        except BaseException as e:  # noqa: BLE001 - reported, never raised into the training loop
            self.last_error = e
            log.error("checkpoint at step %d failed: %s; the previous checkpoint stays usable", step, e)
            if self.on_error:
                self.on_error(step, e)
            return
        if self.on_persisted:
            # the fence wait was recorded when the next step ran; a loop slower than the copy
            # never waited (0). Read after the write, so a step that ran meanwhile is counted.
            self.on_persisted({"step": step, "path": str(path), "bytes": size,
                               "stall_s": stall + self.fence_wait_s, "persist_s": time.perf_counter() - t0})

    def close(self) -> None:
        self.wait()
        for handle in list(self._hooks.values()):
            handle.remove()
        self._hooks.clear()
        self._buffers.clear()
