"""What of the user's job travels on failover: its workdir (minus exclusions), its data dirs (by
manifest, once), and its own checkpoints at their relative paths. Shared by the Modal and local
backends; the tree scan, exclusion syntax and manifest are daemon.cloud.offload.sync's (the SSH
backend's), so every backend leaves out the same files.

Exclusions (``job_excludes``): always .git, __pycache__, *.pyc, .venv; then ``[offload] exclude``
when set, else the workdir's .gitignore; and always the data dirs (they go to the data volume,
not with every launch), the trainer checkpoint dir and the ``checkpoint_glob`` files (they go
through the checkpoint path, the newest *valid* copy only).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from daemon.cloud.offload.sync import (
    ALWAYS_EXCLUDED,
    Entry,
    dump_manifest,
    excluded,
    gitignore_patterns,
    load_manifest,
    plan,
    scan,
)
from daemon.policy.cfgtypes import Config, workdir
from trainer.format import fsync_dir

MANIFEST_DIR = ".nightshift"  # inside a data volume: one manifest per data dir


@dataclass(frozen=True)
class Carry:
    """The job as it travels: built once from the config, handed to a backend."""
    workdir: Path
    exclude: tuple[str, ...]  # effective patterns (sync.excluded syntax), relative to workdir
    data: tuple[str, ...] = ()  # dirs relative to the workdir
    checkpoint_glob: str | None = None
    progress_pattern: str | None = None
    adopted_store: Path | None = None  # the daemon's Adopter store: its newest copy goes up
    keep: int = 3

    def excluded(self, rel: str) -> bool:
        return excluded(rel, self.exclude)

    def files(self) -> dict[str, tuple[int, int]]:
        """The workdir's files that travel: relpath -> (size, mtime_ns)."""
        return scan(self.workdir, self.exclude)


def job_excludes(workdir: str | os.PathLike, exclude: Sequence[str] | None, data: Sequence[str] = (),
                 checkpoint_dir: str | os.PathLike | None = None,
                 checkpoint_glob: str | None = None) -> tuple[str, ...]:
    """The effective exclusion patterns (see the module docstring for the order)."""
    wd = Path(workdir).resolve()
    pats = [*ALWAYS_EXCLUDED, *(exclude if exclude is not None else gitignore_patterns(wd))]
    pats += ["/" + d.strip("/") for d in data]
    if checkpoint_dir:
        ck = Path(checkpoint_dir).resolve()
        if ck != wd and ck.is_relative_to(wd):
            pats.append("/" + ck.relative_to(wd).as_posix())
    if checkpoint_glob:
        pats.append("/" + checkpoint_glob.lstrip("/"))
    return tuple(dict.fromkeys(pats))


def from_config(cfg: Config, adopted_store: str | os.PathLike | None = None) -> Carry:
    """The Carry for a validated config (``cfg["job"]``, ``cfg["offload"]``, ``cfg["checkpoint"]``)."""
    j, o = cfg["job"], cfg["offload"]
    return Carry(Path(workdir(j)).resolve(),
                 job_excludes(workdir(j), o.get("exclude"), o.get("data", ()), j.get("checkpoint_dir"),
                              j.get("checkpoint_glob")),
                 tuple(d.strip("/") for d in o.get("data", ())), j.get("checkpoint_glob"),
                 j.get("progress_pattern"), Path(adopted_store) if adopted_store else None,
                 int(cfg.get("checkpoint", {}).get("keep", 3)))


def newest_adopted_dir(store: Path | None) -> Path | None:
    """The newest valid version directory (``v_000012/``) of an Adopter store, or None."""
    if store is None:
        return None
    from daemon.job.adopt import Adopter
    c = Adopter(store, "__none__", store).newest()  # only the store side is used
    return store / f"v_{c.version:06d}" if c else None


# -- local copies (the local backend; the remote body placing files) -----------------------
def copy_tree(src: Path, dst: Path, files: Iterable[str]) -> int:
    """Copy ``files`` (relpaths) from ``src`` to ``dst``; return bytes."""
    total = 0
    for rel in files:
        s, d = src / rel, dst / rel
        d.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(s, d)
        total += d.stat().st_size
    return total


def sync_dir(src: Path, dst: Path, manifest: Path, exclude: Sequence[str] = ()) -> tuple[int, int]:
    """Mirror ``src`` into ``dst`` sending only what changed since the manifest (size, mtime,
    hash: daemon.cloud.offload.sync), each file via a temp name and a rename; the manifest is written
    last, atomically. Returns (files sent, bytes sent)."""
    try:
        old = load_manifest(manifest.read_bytes()) if dst.is_dir() else {}
    except OSError:
        old = {}
    local = scan(src, exclude)
    p = plan(src, local, old)
    sent = 0
    for rel in p.send:
        d = dst / rel
        d.parent.mkdir(parents=True, exist_ok=True)
        tmp = d.with_name(f".nightshift-tmp-{d.name}")
        shutil.copy2(src / rel, tmp)
        os.replace(tmp, d)
        sent += local[rel][0]
    for rel in p.delete:  # only files the manifest says we put there
        (dst / rel).unlink(missing_ok=True)
    write_atomic(manifest, dump_manifest(p.manifest))
    return len(p.send), sent


def write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".nightshift-tmp-{path.name}-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def manifest_name(data_rel: str) -> str:
    return "data-" + "".join(c if c.isalnum() or c in "._-" else "_" for c in data_rel) + ".json"


def link_data(workdir: Path, data_root: Path, data: Iterable[str]) -> None:
    """Make each data dir appear at its relative path in the workdir (a symlink into the data
    volume), replacing whatever stood there."""
    for rel in data:
        link = workdir / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.is_symlink() or link.is_file():
            link.unlink()
        elif link.is_dir():
            shutil.rmtree(link)
        os.symlink(data_root / rel, link, target_is_directory=True)


__all__ = ["Carry", "Entry", "MANIFEST_DIR", "copy_tree", "from_config", "job_excludes", "link_data",
           "manifest_name", "newest_adopted_dir", "sync_dir", "write_atomic"]
