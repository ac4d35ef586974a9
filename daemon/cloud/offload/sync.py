"""Manifest sync: mirror a local tree into a remote directory over SFTP, sending only what changed.

The remote side keeps a manifest (JSON: relative path -> size, mtime_ns, hash) of what *we* put
there, written after the files it lists have landed. A file is sent when it is new, or when its
size differs, or when its size matches but mtime moved and its content hash differs (a touched but
unchanged 30 GB corpus costs a local hash, not an upload). Only files whose size or mtime changed
are hashed, so a second night over unchanged data is one stat per file. Each file lands under a
temporary name and is renamed into place, so an interrupted sync never leaves a torn file that
the manifest calls current; files the manifest does not know (written remotely by the job) are
never deleted.

Exclusion patterns follow .gitignore's common forms: ``name`` or ``*.pyc`` matches that name at
any depth, ``dir/sub`` or ``/dir`` matches from the root, a trailing ``/`` is ignored, ``!``
negations are not supported (they are skipped).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import posixpath
from collections.abc import Iterable
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # asyncssh is imported where a link is used: a daemon without ssh never loads it
    from asyncssh import SFTPClient

ALWAYS_EXCLUDED = (".git", "__pycache__", "*.pyc", ".venv", ".nightshift-tmp-*")
TMP_PREFIX = ".nightshift-tmp-"
PARALLEL = 8  # files in flight at once: hides the round trips of many small files


@dataclass(frozen=True)
class Entry:
    size: int
    mtime_ns: int
    hash: str


@dataclass
class SyncPlan:
    send: list[str] = field(default_factory=list)
    delete: list[str] = field(default_factory=list)
    manifest: dict[str, Entry] = field(default_factory=dict)  # what the remote holds afterwards
    hashed: int = 0


@dataclass(frozen=True)
class SyncResult:
    files: int  # in the tree
    sent: int
    bytes: int
    deleted: int
    hashed: int


def excluded(rel: str, patterns: Iterable[str]) -> bool:
    parts = rel.split("/")
    for pat in patterns:
        pat = pat.strip().rstrip("/")
        if not pat or pat.startswith(("#", "!")):
            continue
        if "/" in pat.lstrip("/"):  # anchored at the root
            p = pat.lstrip("/")
            if fnmatchcase(rel, p) or rel.startswith(p + "/"):
                return True
        elif pat.startswith("/"):
            if fnmatchcase(parts[0], pat[1:]):
                return True
        elif any(fnmatchcase(part, pat) for part in parts):
            return True
    return False


def gitignore_patterns(root: Path) -> list[str]:
    try:
        lines = (root / ".gitignore").read_text(errors="replace").splitlines()
    except OSError:
        return []
    return [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith(("#", "!"))]


def scan(root: Path, exclude: Iterable[str] = ()) -> dict[str, tuple[int, int]]:
    """relative path -> (size, mtime_ns) of every regular file under ``root`` not excluded."""
    pats = [*ALWAYS_EXCLUDED, *exclude]
    out: dict[str, tuple[int, int]] = {}
    root = Path(root)
    for dirpath, dirnames, filenames in os.walk(root):
        base = Path(dirpath).relative_to(root).as_posix()
        base = "" if base == "." else base + "/"
        dirnames[:] = sorted(d for d in dirnames if not excluded(base + d, pats)
                             and not os.path.islink(os.path.join(dirpath, d)))
        for name in filenames:
            rel = base + name
            if excluded(rel, pats):
                continue
            try:
                st = os.stat(os.path.join(dirpath, name))
            except OSError:  # vanished, or a dangling link: not part of the tree
                continue
            if os.path.isfile(os.path.join(dirpath, name)):
                out[rel] = (st.st_size, st.st_mtime_ns)
    return out


def file_hash(path: Path) -> str:
    h = hashlib.blake2b(digest_size=20)
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return "b2:" + h.hexdigest()


def plan(root: Path, local: dict[str, tuple[int, int]], remote: dict[str, Entry]) -> SyncPlan:
    p = SyncPlan()
    for rel, (size, mtime) in sorted(local.items()):
        old = remote.get(rel)
        if old is not None and old.size == size and old.mtime_ns == mtime:
            p.manifest[rel] = old
            continue
        digest = file_hash(root / rel)
        p.hashed += 1
        if old is not None and old.size == size and old.hash == digest:
            p.manifest[rel] = Entry(size, mtime, digest)  # touched, not changed: nothing to send
            continue
        p.send.append(rel)
        p.manifest[rel] = Entry(size, mtime, digest)
    p.delete = sorted(set(remote) - set(local))
    return p


def dump_manifest(m: dict[str, Entry]) -> bytes:
    return json.dumps({"version": 1, "files": {k: [e.size, e.mtime_ns, e.hash] for k, e in m.items()}},
                      separators=(",", ":")).encode()


def load_manifest(data: bytes) -> dict[str, Entry]:
    try:
        body = json.loads(data)
        return {k: Entry(int(v[0]), int(v[1]), str(v[2])) for k, v in body["files"].items()}
    except (ValueError, KeyError, TypeError, IndexError):
        return {}  # unreadable: treat the remote as empty and send everything again


async def read_remote(sftp: SFTPClient, path: str) -> bytes | None:
    import asyncssh
    try:
        async with sftp.open(path, "rb") as f:
            data = await f.read()
            return data if isinstance(data, bytes) else data.encode()  # "rb": bytes
    except asyncssh.SFTPNoSuchFile:
        return None


async def write_remote(sftp: SFTPClient, path: str, data: bytes) -> None:
    """Write a small remote file atomically (temporary name, then POSIX rename)."""
    tmp = posixpath.join(posixpath.dirname(path), TMP_PREFIX + posixpath.basename(path))
    async with sftp.open(tmp, "wb") as f:
        await f.write(data)
    await sftp.posix_rename(tmp, path)


async def put_file(sftp: SFTPClient, local: Path, remote: str) -> None:
    tmp = posixpath.join(posixpath.dirname(remote), TMP_PREFIX + posixpath.basename(remote))
    await sftp.put(str(local), tmp)
    await sftp.posix_rename(tmp, remote)


async def push_tree(sftp: SFTPClient, root: Path, remote_root: str, manifest_path: str,
                    exclude: Iterable[str] = ()) -> SyncResult:
    """Mirror ``root`` into ``remote_root``; the manifest lives at ``manifest_path``."""
    import asyncssh
    root = Path(root)
    raw = await read_remote(sftp, manifest_path)
    remote = load_manifest(raw) if raw is not None and await sftp.isdir(remote_root) else {}
    exclude = list(exclude)
    local = await asyncio.to_thread(scan, root, exclude)
    p = await asyncio.to_thread(plan, root, local, remote)
    await sftp.makedirs(remote_root, exist_ok=True)
    for d in sorted({posixpath.dirname(rel) for rel in p.send} - {""}):
        await sftp.makedirs(posixpath.join(remote_root, d), exist_ok=True)
    gate = asyncio.Semaphore(PARALLEL)
    sent_bytes = 0

    async def send(rel: str) -> None:
        nonlocal sent_bytes
        async with gate:
            await put_file(sftp, root / rel, posixpath.join(remote_root, rel))
        try:
            st = os.stat(root / rel)
        except OSError:
            st = None
        if st is None or (st.st_size, st.st_mtime_ns) != local[rel]:
            p.manifest.pop(rel, None)  # changed while we sent it: the next sync sends it again
        sent_bytes += local[rel][0]

    await asyncio.gather(*(send(rel) for rel in p.send))
    for rel in p.delete:
        try:
            await sftp.remove(posixpath.join(remote_root, rel))
        except asyncssh.SFTPNoSuchFile:
            pass
    await sftp.makedirs(posixpath.dirname(manifest_path), exist_ok=True)
    await write_remote(sftp, manifest_path, dump_manifest(p.manifest))
    return SyncResult(files=len(local), sent=len(p.send), bytes=sent_bytes, deleted=len(p.delete),
                      hashed=p.hashed)
