"""Writing and reading checkpoints: safetensors files + meta.json, atomically, verified.

The writer produces the safetensors format itself (8-byte header length, JSON header, raw
tensor bytes) straight from the tensors' memory with large unbuffered writes, computing the
per-chunk CRCs as it goes: safetensors.save_file serialises to one big bytes object first and
writes at about torch.save's speed. Files stay loadable by the safetensors library.

Two-phase save (CheckFreq): ``AsyncCheckpointer.snapshot`` copies the state into reusable CPU
buffers at a step boundary (the only stall) and a background thread persists them.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import struct
import threading
import time
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch

from trainer.format import (
    CHUNK,
    FORMAT,
    META,
    CorruptCheckpoint,
    ckpt_name,
    cleanup_stale_tmp,
    commit,
    fsync_dir,
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

Groups = dict[str, dict[str, torch.Tensor]]


def _storage_key(t: torch.Tensor) -> tuple[int, int, int, tuple[int, ...], tuple[int, ...]]:
    return (t.untyped_storage().data_ptr(), t.storage_offset(), t.dtype.itemsize,
            tuple(t.shape), tuple(t.stride()))


def dedupe(tensors: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
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
    return memoryview(t.reshape(-1).view(torch.uint8).numpy())


def write_safetensors(path: Path, tensors: dict[str, torch.Tensor],
                      metadata: dict[str, str] | None = None) -> dict[str, Any]:
    """Write one safetensors file with large direct writes; fsync it. Returns size and CRCs."""
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
    crcs: list[int] = []
    state = {"crc": 0, "fill": 0}  # running CRC over CHUNK-sized pieces of the whole file

    def feed(mv: memoryview) -> None:
        pos = 0
        while pos < len(mv):
            take = min(CHUNK - state["fill"], len(mv) - pos)
            state["crc"] = zlib.crc32(mv[pos:pos + take], state["crc"])
            state["fill"] += take
            pos += take
            if state["fill"] == CHUNK:
                crcs.append(state["crc"])
                state["crc"], state["fill"] = 0, 0

    pieces = [memoryview(head)] + [b[i:i + (64 << 20)] for b in bufs for i in range(0, len(b), 64 << 20)]
    # The CRCs run in a second thread over the same memory while this one writes: zlib and
    # os.write both release the GIL, so the checksum costs no wall time next to the disk.
    crc_thread = threading.Thread(target=lambda: [feed(piece) for piece in pieces], name="ckpt-crc")
    crc_thread.start()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for piece in pieces:
            _write_all(fd, piece)
        os.fsync(fd)
    finally:
        os.close(fd)
        crc_thread.join()
    if state["fill"] or not crcs:
        crcs.append(state["crc"])
    return {"size": len(head) + off, "crc32": crcs, "chunk": CHUNK}


def _write_all(fd: int, mv: memoryview) -> None:
    while len(mv):
        n = os.write(fd, mv)
        mv = mv[n:]


def save_checkpoint(ckpt_dir: str | os.PathLike, step: int, groups: Groups, meta: dict[str, Any]) -> Path:
    """Write a complete checkpoint atomically; return its final path."""
    d = Path(ckpt_dir)
    d.mkdir(parents=True, exist_ok=True)
    tmp = d / tmp_name(step)
    final = d / ckpt_name(step)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        files: dict[str, Any] = {}
        aliases: dict[str, dict[str, str]] = {}
        for group, tensors in groups.items():
            unique, al = dedupe(tensors)
            if al:
                aliases[group] = al
            files[f"{group}.safetensors"] = write_safetensors(tmp / f"{group}.safetensors", unique)
        body = dict(meta)
        body.update({"format": FORMAT, "step": int(step), "created": time.time(), "files": files,
                     "aliases": aliases, "groups": sorted(groups)})
        with open(tmp / META, "w") as f:
            json.dump(body, f)
            f.flush()
            os.fsync(f.fileno())
        fsync_dir(tmp)
        commit(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # a failed write never leaves a half checkpoint
        raise
    return final


_FROM_CODE = {code: dt for dt, code in _DTYPES.items()}


def _read_verified(path: Path, entry: dict[str, Any] | None, pool: ThreadPoolExecutor) -> dict[str, torch.Tensor]:
    """Read a safetensors file once; check its chunk CRCs in parallel threads; build the
    tensors on the same memory (no second read, no copy)."""
    size = path.stat().st_size
    buf = bytearray(size)
    with open(path, "rb", buffering=0) as f:
        view, got = memoryview(buf), 0
        while got < size:
            n = f.readinto(view[got:])
            if not n:
                break
            got += n
    if entry is not None:
        chunk = entry.get("chunk", CHUNK)
        mv = memoryview(buf)
        crcs = list(pool.map(lambda i: zlib.crc32(mv[i:i + chunk]), range(0, max(size, 1), chunk))) if size else [0]
        if crcs != entry["crc32"]:
            raise CorruptCheckpoint(path.parent, f"checksum mismatch in {path.name} (corrupted on disk?)")
    (hlen,) = struct.unpack("<Q", bytes(buf[:8]))
    header = json.loads(bytes(buf[8:8 + hlen]))
    base = 8 + hlen
    out: dict[str, torch.Tensor] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        a, b = info["data_offsets"]
        dt = _FROM_CODE[info["dtype"]]
        n = (b - a) // dt.itemsize
        t = torch.frombuffer(buf, dtype=dt, count=n, offset=base + a) if n else torch.empty(0, dtype=dt)
        out[name] = t.reshape(info["shape"])
    return out


def load_checkpoint(path: str | os.PathLike, device: str = "cpu",
                    verify_checksums: bool = True) -> tuple[Groups, dict[str, Any]]:
    """Load every group of a checkpoint, verified (sizes, headers, CRCs); restore tied tensors."""
    p = Path(path)
    meta = verify(p, deep=False)  # sizes and headers; the CRCs are checked as the data is read
    groups: Groups = {}
    names = meta.get("groups") or [f[:-12] for f in meta["files"] if f.endswith(".safetensors")]
    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
        for group in names:
            fname = f"{group}.safetensors"
            out = _read_verified(p / fname, meta["files"][fname] if verify_checksums else None, pool)
            if device != "cpu":
                out = {k: v.to(device) for k, v in out.items()}
            for alias, target in (meta.get("aliases") or {}).get(group, {}).items():
                out[alias] = out[target]
            groups[group] = out
    return groups, meta


class AsyncCheckpointer:
    """Two-phase checkpointing: a short snapshot in the loop, the write in a background thread."""

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

    @property
    def busy(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def wait(self) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _copy(self, groups: Groups) -> Groups:
        out: Groups = {}
        for g, tensors in groups.items():
            unique, aliases = dedupe(tensors)
            snap: dict[str, torch.Tensor] = {}
            for name, t in unique.items():
                buf = self._buffers.get((g, name))
                if buf is None or buf.shape != t.shape or buf.dtype != t.dtype:
                    buf = torch.empty(t.shape, dtype=t.dtype, device="cpu")
                    self._buffers[(g, name)] = buf
                buf.copy_(t.detach(), non_blocking=False)
                snap[name] = buf
            for alias, target in aliases.items():
                snap[alias] = snap[target]
            out[g] = snap
        return out

    def snapshot(self, step: int, groups: Groups, meta: dict[str, Any],
                 metric: float | None = None) -> float:
        """Copy the state to CPU buffers and persist in the background. Returns the stall (s)."""
        t0 = time.perf_counter()
        self.wait()  # the buffers are reused: never overwrite a snapshot still being written
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        snap = self._copy(groups)
        stall = time.perf_counter() - t0
        body = dict(meta)
        if metric is not None and self.best_metric:
            body.setdefault("metrics", {})[self.best_metric] = metric
        self._thread = threading.Thread(target=self._persist, args=(step, snap, body, stall),
                                        name=f"ckpt-{step}", daemon=True)
        self._thread.start()
        return stall

    def _persist(self, step: int, snap: Groups, meta: dict[str, Any], stall: float) -> None:
        t0 = time.perf_counter()
        try:
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
            self.on_persisted({"step": step, "path": str(path), "bytes": size, "stall_s": stall,
                               "persist_s": time.perf_counter() - t0})

    def close(self) -> None:
        self.wait()
        self._buffers.clear()
