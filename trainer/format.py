"""The checkpoint layout on disk, torch-free, so the daemon can find and verify checkpoints.

    <checkpoint_dir>/step_000001234/
        model.safetensors, optimizer.safetensors, ...   tensors (safetensors format)
        meta.json                                        everything else + sizes and checksums

A checkpoint is written as ``.tmp-step_000001234-<pid>/`` in the same parent, every file
fsynced, renamed into place, then the parent fsynced: a crash at any instant leaves either the
old set or the new one. A directory that fails verification is never loaded: the next older
valid one is.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FORMAT = 1
META = "meta.json"
_NAME = re.compile(r"^step_(\d{9,})$")
_TMP = re.compile(r"^\.tmp-step_(\d+)-(\d+)$")
CHUNK = 8 << 20  # checksum granularity: per-chunk CRCs let threads verify a big file in parallel


class CorruptCheckpoint(Exception):
    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{self.path.name}: {reason}")


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


def crc_chunks(buf: memoryview | bytes, chunk: int = CHUNK) -> list[int]:
    mv = memoryview(buf).cast("B")
    return [zlib.crc32(mv[i:i + chunk]) for i in range(0, max(len(mv), 1), chunk)] if len(mv) else [0]


def _check_header(path: Path, size: int) -> None:
    """A safetensors file starts with an 8-byte header length and a JSON header."""
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ValueError("shorter than a safetensors header")
        (n,) = struct.unpack("<Q", head)
        if n > size - 8 or n > 100 << 20:
            raise ValueError("bad safetensors header length")
        header = json.loads(f.read(n))
    end = 0
    for k, v in header.items():
        if k != "__metadata__":
            end = max(end, v["data_offsets"][1])
    if 8 + n + end != size:
        raise ValueError(f"tensor data ends at {8 + n + end} but the file has {size} bytes")


def _verify_file(path: Path, entry: dict[str, Any], deep: bool) -> str | None:
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return f"{path.name} is missing"
    if size != entry["size"]:
        return f"{path.name} has {size} bytes, expected {entry['size']} (truncated?)"
    if path.suffix == ".safetensors":
        try:
            _check_header(path, size)
        except (ValueError, KeyError, TypeError) as e:
            return f"{path.name}: {e}"
    if deep:
        with open(path, "rb") as f:
            data = f.read()
        if crc_chunks(data, entry.get("chunk", CHUNK)) != entry["crc32"]:
            return f"checksum mismatch in {path.name} (corrupted on disk?)"
    return None


def verify(path: str | os.PathLike, deep: bool = True, workers: int = 4) -> dict[str, Any]:
    """Check sizes, headers and (deep) checksums of every file; return meta or raise."""
    p = Path(path)
    meta = read_meta(p)
    files = meta["files"]
    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(files)))) as ex:
        for err in ex.map(lambda kv: _verify_file(p / kv[0], kv[1], deep), files.items()):
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
# (daemon.divergence), read by the job (trainer.runtime). One format, parsed in one place.
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
