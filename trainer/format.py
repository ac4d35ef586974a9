"""The checkpoint layout on disk, torch-free, so the daemon can find and verify checkpoints.

    <checkpoint_dir>/step_000001234/
        model.safetensors, optimizer.safetensors, ...   tensors (safetensors format)
        meta.json                                        everything else + sizes and checksums

A checkpoint is written as ``.tmp-step_000001234-<pid>/`` in the same parent, every file
fsynced, renamed into place, then the parent fsynced: a crash at any instant leaves either the
old set or the new one. A directory that fails verification is never loaded: the next older
valid one is.

Checksums: each file is cut into CHUNK-sized pieces, each with its own xxh3-64 digest
(``files[name] = {"size", "chunk", "xxh3": ["<16 hex>", ...]}``), so threads verify one file in
parallel and at memory speed (xxh3 runs at ~15 GB/s a core; zlib's crc32, format 1, at ~1.4,
slower than the disk). Format-1 checkpoints (``"crc32"`` lists) are still verified and loaded.

No pickle: meta.json is plain JSON. A checkpoint whose meta carries a pickled object (format 1
could, as a last resort for odd scheduler fields) is refused by ``verify``: unpickling runs code.
"""

from __future__ import annotations

import json
import mmap
import os
import re
import shutil
import struct
import zlib
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

try:
    import xxhash
except ImportError:  # an environment without it (say a cloud image built from an old list)
    xxhash = None  # type: ignore[assignment]  # still writes and checks format-1 crc32 digests

FORMAT = 2
META = "meta.json"
PICKLE_TAG = "__pickle__"  # how format 1 tagged a pickled value in meta.json
_NAME = re.compile(r"^step_(\d{9,})$")
_TMP = re.compile(r"^\.tmp-step_(\d+)-(\d+)$")
CHUNK = 8 << 20  # checksum granularity: per-chunk CRCs let threads verify a big file in parallel


class CorruptCheckpoint(Exception):
    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{self.path.name}: {reason}")


class UnsafeCheckpoint(CorruptCheckpoint):
    """The checkpoint carries pickled objects: refused, never unpickled (that can run code)."""


@dataclass
class CheckpointInfo:
    path: Path
    step: int
    meta: dict[str, Any]


def ckpt_name(step: int) -> str:
    return f"step_{step:09d}"


def tmp_name(step: int, pid: int | None = None) -> str:
    return f".tmp-step_{step:09d}-{os.getpid() if pid is None else pid}"


def list_checkpoints(ckpt_dir: str | os.PathLike) -> list[Path]:
    """Committed checkpoint directories, newest step first (temporary ones are ignored)."""
    d = Path(ckpt_dir)
    try:
        names = os.listdir(d)
    except FileNotFoundError:
        return []
    found = [(int(m.group(1)), d / n) for n in names if (m := _NAME.match(n))]
    return [p for _, p in sorted(found, reverse=True)]


def read_meta(path: str | os.PathLike) -> dict[str, Any]:
    p = Path(path) / META
    try:
        meta = json.loads(p.read_text())
    except FileNotFoundError:
        raise CorruptCheckpoint(path, "meta.json is missing") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise CorruptCheckpoint(path, f"meta.json is not valid JSON ({e})") from None
    if not isinstance(meta, dict) or "files" not in meta or "step" not in meta:
        raise CorruptCheckpoint(path, "meta.json lacks 'files' or 'step'")
    return meta


DIGEST = "xxh3" if xxhash is not None else "crc32"  # what new checkpoints carry


def xxh3_hex(buf: memoryview | bytes) -> str:
    if xxhash is None:
        raise RuntimeError("this checkpoint's xxh3 digests need the xxhash package: "
                           "pip install 'xxhash>=3'")
    return f"{xxhash.xxh3_64_intdigest(buf):016x}"


def chunk_digests(buf: memoryview | bytes | mmap.mmap, chunk: int = CHUNK,
                  pool: Executor | None = None, fn: Callable[[Any], Any] = xxh3_hex) -> list[Any]:
    """One digest per ``chunk`` bytes (an empty buffer has one, of nothing). xxhash and zlib
    release the GIL, so a pool hashes the chunks in parallel."""
    mv = memoryview(buf).cast("B")
    try:
        if not len(mv):
            return [fn(b"")]
        starts = range(0, len(mv), chunk)

        def work(i: int) -> Any:
            return fn(mv[i:i + chunk])

        return list(pool.map(work, starts)) if pool else [work(i) for i in starts]
    finally:
        mv.release()


def digest_kind(entry: dict[str, Any]) -> tuple[str, Callable[[Any], Any]]:
    """Which checksum a file entry carries: xxh3 (format 2) or zlib crc32 (format 1)."""
    if "xxh3" in entry:
        if xxhash is None:
            raise KeyError("xxh3 digests, and the xxhash package is not installed "
                           "(pip install 'xxhash>=3')")
        return "xxh3", xxh3_hex
    if "crc32" in entry:
        return "crc32", zlib.crc32
    raise KeyError("no checksums (neither 'xxh3' nor 'crc32')")


def check_digests(buf: memoryview | bytes | mmap.mmap, entry: dict[str, Any],
                  pool: Executor | None = None) -> bool:
    key, fn = digest_kind(entry)
    return chunk_digests(buf, int(entry.get("chunk", CHUNK)), pool, fn) == entry[key]


def read_header(fd: int, size: int) -> tuple[int, dict[str, Any]]:
    """A safetensors file starts with an 8-byte header length and a JSON header; the tensor
    data must end exactly at the end of the file. Returns (data offset, header)."""
    head = os.pread(fd, 8, 0)
    if len(head) < 8:
        raise ValueError("shorter than a safetensors header")
    (n,) = struct.unpack("<Q", head)
    if n > size - 8 or n > 100 << 20:
        raise ValueError("bad safetensors header length")
    header = json.loads(os.pread(fd, n, 8))
    if not isinstance(header, dict):
        raise ValueError("the safetensors header is not a JSON object")
    end = 0
    for k, v in header.items():
        if k != "__metadata__":
            end = max(end, v["data_offsets"][1])
    if 8 + n + end != size:
        raise ValueError(f"tensor data ends at {8 + n + end} but the file has {size} bytes")
    return 8 + n, header


def check_file(fd: int, name: str, entry: dict[str, Any], deep: bool,
               pool: Executor | None = None) -> str | None:
    """Size, safetensors header and (deep) checksums of one open file: None if good, else why.
    The data is hashed through a read-only mapping of the page cache (no copy, no buffer)."""
    size = os.fstat(fd).st_size
    if size != entry["size"]:
        return f"{name} has {size} bytes, expected {entry['size']} (truncated?)"
    if name.endswith(".safetensors"):
        try:
            read_header(fd, size)
        except (ValueError, KeyError, TypeError, IndexError) as e:
            return f"{name}: {e}"
    if deep:
        try:
            digest_kind(entry)
        except KeyError as e:
            return f"{name}: {e.args[0]}"
        ok = True
        if size:
            with mmap.mmap(fd, size, access=mmap.ACCESS_READ) as m:
                ok = check_digests(m, entry, pool)
        else:
            ok = check_digests(b"", entry)
        if not ok:
            return f"checksum mismatch in {name} (corrupted on disk?)"
    return None


def _verify_file(path: Path, entry: dict[str, Any], deep: bool, pool: Executor | None) -> str | None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return f"{path.name} is missing"
    try:
        return check_file(fd, path.name, entry, deep, pool)
    finally:
        os.close(fd)


def pickle_path(v: Any, at: str = "") -> str | None:
    """Where in a meta.json value a pickled object sits (format 1's fallback), or None."""
    if isinstance(v, dict):
        if PICKLE_TAG in v:
            return at or "(top)"
        for k, x in v.items():
            if (found := pickle_path(x, f"{at}.{k}" if at else str(k))) is not None:
                return found
    elif isinstance(v, list):
        for i, x in enumerate(v):
            if (found := pickle_path(x, f"{at}[{i}]")) is not None:
                return found
    return None


def refuse_pickle(path: str | os.PathLike, meta: dict[str, Any]) -> None:
    where = pickle_path(meta)
    if where is not None:
        raise UnsafeCheckpoint(path, f"meta.json carries a pickled Python object at {where}; "
                               "refusing to load it (unpickling can run code). Resume from a "
                               "checkpoint written by this version, or start fresh")


def verify(path: str | os.PathLike, deep: bool = True, workers: int = 4) -> dict[str, Any]:
    """Check sizes, headers and (deep) checksums of every file, and that meta.json carries no
    pickle; return meta or raise CorruptCheckpoint (UnsafeCheckpoint for pickle).

    Files are checked one after the other, each one's chunks hashed by ``workers`` threads, so
    at most one file is mapped at a time."""
    p = Path(path)
    meta = read_meta(p)
    refuse_pickle(p, meta)
    files = meta["files"]
    if not isinstance(files, dict):
        raise CorruptCheckpoint(p, "meta.json's 'files' is not a mapping")
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for name, entry in files.items():
            try:
                err = _verify_file(p / name, entry, deep, pool)
            except (KeyError, TypeError, ValueError) as e:
                err = f"{name}: bad entry in meta.json ({e})"
            if err:
                raise CorruptCheckpoint(p, err)
    return meta


def find_latest_valid(ckpt_dir: str | os.PathLike, log: Callable[[str], None] | None = None,
                      deep: bool = True) -> CheckpointInfo | None:
    """The newest checkpoint that verifies; each skipped one is logged with its reason."""
    for p in list_checkpoints(ckpt_dir):
        try:
            meta = verify(p, deep=deep)
        except CorruptCheckpoint as e:
            if log:
                log(f"skipping checkpoint {p.name}: {e.reason}; trying the previous one")
            continue
        except OSError as e:
            if log:
                log(f"skipping checkpoint {p.name}: cannot read it ({e}); trying the previous one")
            continue
        return CheckpointInfo(p, int(meta["step"]), meta)
    return None


def fsync_dir(path: str | os.PathLike) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def commit(tmp_dir: Path, final_dir: Path) -> None:
    """Rename a fully written, fsynced temp dir into place and make the rename durable."""
    if final_dir.exists():  # the same step again (e.g. after a resume): replace atomically
        old = final_dir.with_name(f".old-{final_dir.name}-{os.getpid()}")
        os.rename(final_dir, old)
        os.rename(tmp_dir, final_dir)
        fsync_dir(final_dir.parent)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp_dir, final_dir)
        fsync_dir(final_dir.parent)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def cleanup_stale_tmp(ckpt_dir: str | os.PathLike) -> list[Path]:
    """Remove temp dirs left by writers that died (their pid is gone)."""
    d = Path(ckpt_dir)
    removed = []
    try:
        names = os.listdir(d)
    except FileNotFoundError:
        return []
    for n in names:
        m = _TMP.match(n) or re.match(r"^\.(?:old|del)-step_\d+-(\d+)$", n)
        if not m:
            continue
        pid = int(m.group(m.lastindex or 1))
        if pid != os.getpid() and not _pid_alive(pid):
            shutil.rmtree(d / n, ignore_errors=True)
            removed.append(d / n)
    return removed


def apply_retention(ckpt_dir: str | os.PathLike, keep: int, best_metric: str | None = None,
                    mode: str = "min") -> list[Path]:
    """Keep the newest ``keep`` valid checkpoints plus the best by ``best_metric``; remove the rest.

    Invalid ones are never counted as kept, so the newest *valid* one always survives.
    """
    paths = list_checkpoints(ckpt_dir)
    valid: list[tuple[Path, dict[str, Any]]] = []
    for p in paths:
        try:
            valid.append((p, verify(p, deep=False)))
        except (CorruptCheckpoint, OSError):
            continue
    keep_set = {p for p, _ in valid[:max(1, keep)]}
    if best_metric:
        scored = [(m.get("metrics", {}).get(best_metric), p) for p, m in valid]
        scored = [(v, p) for v, p in scored if isinstance(v, (int, float))]
        if scored:
            keep_set.add((min if mode == "min" else max)(scored)[1])
    removed = []
    newest_valid_step = int(valid[0][1]["step"]) if valid else None
    for p in paths:
        if p in keep_set:
            continue
        m = _NAME.match(p.name)
        # a broken checkpoint newer than the newest valid one is kept for inspection
        if m and newest_valid_step is not None and int(m.group(1)) > newest_valid_step:
            continue
        _remove(p)
        removed.append(p)
    return removed


def _remove(p: Path) -> None:
    """Rename out of the checkpoint namespace first, then delete: a kill during the deletion
    must not leave a committed-looking directory with files missing."""
    doomed = p.with_name(f".del-{p.name}-{os.getpid()}")
    try:
        os.rename(p, doomed)
    except FileNotFoundError:
        return
    shutil.rmtree(doomed, ignore_errors=True)


# NIGHTSHIFT_SKIP_STEPS, the skip list of a divergence rollback: written by the daemon
# (daemon.night.divergence), read by the job (trainer.runtime). One format, parsed in one place.
def format_skip(ranges: list[tuple[int, int]] | tuple[tuple[int, int], ...]) -> str:
    return ",".join(f"{a}-{b}" for a, b in ranges)


def parse_skip(text: str) -> list[tuple[int, int]]:
    """``"120-170,300-310,400"`` -> [(120, 170), (300, 310), (400, 400)] (inclusive ranges)."""
    out = []
    for part in filter(None, (p.strip() for p in (text or "").split(","))):
        a, _, b = part.partition("-")
        try:
            lo, hi = int(a), int(b or a)
        except ValueError:
            raise ValueError(f"NIGHTSHIFT_SKIP_STEPS={text!r}: {part!r} is not a step or a "
                             "range like 120-170") from None
        if hi < lo:
            raise ValueError(f"NIGHTSHIFT_SKIP_STEPS={text!r}: range {part!r} ends before it starts")
        out.append((lo, hi))
    return out
