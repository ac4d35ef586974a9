"""Adopted checkpoints: the checkpoints of an unmodified script, kept safe by the daemon.

nanoGPT writes one ``out/ckpt.pt`` and overwrites it in place, not atomically: a kill mid-save
leaves a torn file and no older copy. ``[job] checkpoint_glob`` names such files (or
directories, e.g. Hugging Face's ``out/checkpoint-*``); the Adopter copies each one, once it
has settled and verifies, into a versioned store of its own::

    <store_dir>/v_000012/<relpath>     the copy (a file or a directory), at its relative path
    <store_dir>/v_000012/meta.json     relpath, size, sha256 per file, source mtime, step, t

written like trainer checkpoints (temp dir, fsync, rename, parent fsync: trainer.format), keeping
``keep`` copies. Before a restart, ``restore_newest`` puts the newest valid copy back in place,
so a torn ckpt.pt costs one checkpoint interval, never the run.

When is a file a checkpoint worth adopting? It is judged by what it claims to be:
- A ``.pt``/``.pth``/``.bin``/``.ckpt`` file claims to be torch.save's zip archive (torch >= 1.6):
  its central directory must parse and every member's CRC must match (zipfile, no torch
  import: the daemon never imports torch). Zeros or random bytes of the right size (a power
  cut after a GPU hang; nanoGPT neither fsyncs nor renames) are refused as "not a torch zip".
  ``*.safetensors`` files need a header consistent with their size, ``*.json`` files must
  parse, a Hugging Face ``checkpoint-N`` directory needs its ``trainer_state.json`` (written
  last). Such a file is adopted as soon as it verifies: a complete zip needs no quiet period,
  so saves a few seconds apart are all kept. One that does not verify yet may be mid-write: it
  is refused (and said) only once it has stayed the same for ``settle_s`` or its writer exited.
- Every other file cannot be checked: it is adopted once *settled* (size and mtime the same at
  two observations ``settle_s`` apart; ``meta["verified"] == "settled"``), and a restore never
  prefers it over a copy that verified.
- The copy is what gets verified (the source may change under us), and the source must still
  have the same size and mtime after the copy, or the copy is thrown away.

A run owns only what it wrote. With ``claim_found``, the matches present when the Adopter is
first made for a run (its store dir did not exist yet) are recorded in ``before.json``: as long
as such a file is unchanged it is never adopted nor resumed (it is an older run's, or the
quickstart's); the first threaded call copies it aside into ``<store_dir>/before/<relpath>`` so
nothing is lost, and ``found`` says where (the Supervisor turns it into an event). A directory
(Hugging Face's ``checkpoint-N``) is moved aside instead, in place, to
``.nightshift-before-<name>``: HF's own resume takes the newest ``checkpoint-N`` in its output dir,
so an older run's left there would be resumed whatever we copied. ``own`` takes a match back
(``run --resume-from`` chose it on purpose).

Before a restart the matches that must not be resumed leave the script's way (hidden names, no
``checkpoint-N`` pattern, kept): a torn one (``.nightshift-torn-``), and a directory whose copy
is marked (``.nightshift-suspect-``, ``-failed-``, ``-set-aside-``).

``marks.json`` remembers what a copy turned out to be: ``failed`` (the job could not load it,
see ``mark_failed``), ``suspect`` (written after the last normal loss before a divergence, by
the attempt that diverged: ``mark_suspect_after`` opens a window, ``close_suspect`` at the next
start closes it, so copies that descend from a good one are never suspect) or ``set aside``
(newer than a copy the user restored on purpose, ``choose``). None of them is put back by
``restore`` nor offered by ``newest``; all stay on disk. ``choose`` also lifts a copy's own mark.

The step: read from the checkpoint when it says (nanoGPT's ``iter_num``, found by walking the
zip's pickle opcodes with pickletools — nothing is unpickled; HF's ``trainer_state.json``
``global_step``), else the step the caller passed when the change was first seen.

Calls do blocking file I/O (copy, fsync, sha256): run them in a worker thread.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickletools
import re
import shutil
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict

from daemon.job.progress import ProgressRecord
from trainer.format import fsync_dir

META = "meta.json"
_VER = re.compile(r"^v_(\d{6,})$")
_STEP_KEYS = ("iter_num", "global_step", "step")  # in this order of trust
_HF_DIR = re.compile(r"^checkpoint-\d+$")
# names that claim torch.save's format: a zip archive since torch 1.6
TORCH_SUFFIXES = frozenset({".pt", ".pth", ".bin", ".ckpt"})
BEFORE = "before.json"
MARKS = "marks.json"


class FileEntry(TypedDict):
    size: int
    sha256: str


class Meta(TypedDict):
    """A stored copy's meta.json."""

    version: int
    relpath: str
    step: int | None
    t: float
    bytes: int
    sha256: str
    files: dict[str, FileEntry]  # "." for a single file
    source_mtime_ns: int
    verified: str


class Window(TypedDict):
    """A divergence window: copies of a step past ``step`` are suspect, those adopted up to
    version ``through`` (None: still open, the next good start closes it)."""

    step: int
    why: str
    through: int | None


class Marks(TypedDict, total=False):
    """marks.json: what copies turned out to be (version -> why)."""

    failed: dict[str, str]
    set_aside: dict[str, str]
    chosen: list[int]  # restored on purpose: no mark holds for them
    suspect: list[Window]


@dataclass(frozen=True)
class AdoptedCheckpoint:
    version: int
    relpath: str  # where it lives in the job's workdir
    path: Path  # the stored copy
    step: int | None
    t: float  # when it was adopted (the injected clock)
    bytes: int
    sha256: str  # of the file, or of the directory's sorted (name, sha256) list
    source_mtime_ns: int
    verified: str  # "zip-crc" | "contents" | "settled"
    mark: str | None = None  # "failed" | "suspect" | "set aside" (marks.json), with why in mark_why
    mark_why: str = ""

    def as_record(self) -> ProgressRecord:
        """A progress.jsonl ``checkpoint`` record, so JobFacts (newest checkpoint, status) takes
        an adopted copy like a trainer checkpoint."""
        return {"kind": "checkpoint", "t": self.t, "step": self.step if self.step is not None else 0,
                "path": str(self.path), "bytes": self.bytes}

    def to_status(self, now: float) -> dict[str, int | float | str | bool | None]:
        """The fields status shows: step, path, age."""
        return {"step": self.step, "path": self.relpath, "t": self.t, "bytes": self.bytes,
                "age_s": round(max(0.0, now - self.t), 1), "adopted": True}


class Unverifiable(Exception):
    """A candidate that is torn or incomplete; says why."""


# -- verification (torch-free) -------------------------------------------------------------
def _check_safetensors(path: Path, size: int) -> None:
    """An 8-byte header length, a JSON header, tensor data ending exactly at the file's end."""
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ValueError("shorter than a safetensors header")
        n = int.from_bytes(head, "little")
        if n > size - 8 or n > 100 << 20:
            raise ValueError("bad safetensors header length")
        header = json.loads(f.read(n))
    end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    if 8 + n + end != size:
        raise ValueError(f"tensor data ends at {8 + n + end} but the file has {size} bytes")


def _is_zip(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(4) == b"PK\x03\x04"


def verify_file(path: Path) -> str:
    """How far a file could be checked ("zip-crc", "contents", "settled"); Unverifiable if torn."""
    try:
        size = path.stat().st_size
        if size == 0:
            raise Unverifiable(f"{path.name} is empty")
        claims_zip = path.suffix.lower() in TORCH_SUFFIXES
        if claims_zip and not _is_zip(path):
            raise Unverifiable(f"{path.name}: not a torch zip (torch.save has written zip archives "
                               "since torch 1.6; this file does not start like one)")
        if claims_zip or _is_zip(path):
            try:
                with zipfile.ZipFile(path) as z:
                    bad = z.testzip()  # reads every member, checks its CRC-32
            except (zipfile.BadZipFile, EOFError, zipfile.LargeZipFile) as e:
                raise Unverifiable(f"{path.name}: not a complete zip archive ({e})") from None
            if bad is not None:
                raise Unverifiable(f"{path.name}: CRC mismatch in member {bad}")
            return "zip-crc"
        if path.suffix == ".safetensors":
            try:
                _check_safetensors(path, size)
            except (ValueError, KeyError, TypeError) as e:
                raise Unverifiable(f"{path.name}: {e}") from None
            return "contents"
        if path.suffix == ".json":
            try:
                json.loads(path.read_bytes())
            except ValueError as e:
                raise Unverifiable(f"{path.name}: not valid JSON ({e})") from None
            return "contents"
    except OSError as e:
        raise Unverifiable(f"{path.name}: cannot read it ({e.strerror})") from None
    return "settled"


def claims_verifiable(path: Path) -> bool:
    """Whether the file (or directory) says what it is, so it can be checked the moment it is
    complete (no settling wait): torch zips, safetensors, JSON, Hugging Face checkpoint dirs."""
    if path.is_dir():
        return bool(_HF_DIR.match(path.name))
    if path.suffix.lower() in TORCH_SUFFIXES | {".safetensors", ".json"}:
        return True
    return _is_zip_quiet(path)


def _is_zip_quiet(path: Path) -> bool:
    try:
        return _is_zip(path)
    except OSError:
        return False


def looks_complete(path: Path) -> bool:
    """A cheap look before copying: a zip's central directory (at its end) parses. A torch.save
    caught mid-write has none yet; copying it would be wasted."""
    if path.is_dir() or not (path.suffix.lower() in TORCH_SUFFIXES or _is_zip_quiet(path)):
        return True
    try:
        with zipfile.ZipFile(path):
            return True
    except (OSError, zipfile.BadZipFile, EOFError, ValueError):
        return False


def verify_tree(path: Path) -> str:
    """verify_file for a file, or for every file of a directory (the weakest level wins)."""
    if not path.is_dir():
        return verify_file(path)
    files = [p for p in sorted(path.rglob("*")) if p.is_file()]
    if not files:
        raise Unverifiable(f"{path.name} is an empty directory")
    if _HF_DIR.match(path.name) and not (path / "trainer_state.json").exists():
        raise Unverifiable(f"{path.name}: trainer_state.json is missing (the save did not finish)")
    levels = {verify_file(p) for p in files}
    return "settled" if "settled" in levels else ("contents" if "contents" in levels else "zip-crc")


def step_of(path: Path) -> int | None:
    """The step a checkpoint says it holds, read without unpickling (None if it doesn't say)."""
    try:
        if path.is_dir():
            st = path / "trainer_state.json"
            if st.exists():
                v = json.loads(st.read_text()).get("global_step")
                return int(v) if isinstance(v, int) else None
            return None
        if not _is_zip(path):
            return None
        with zipfile.ZipFile(path) as z:
            name = next((n for n in z.namelist() if n.endswith("data.pkl")), None)
            if name is None:
                return None
            return _pickle_int(z.read(name), _STEP_KEYS)
    except (OSError, ValueError, zipfile.BadZipFile):
        return None


def _pickle_int(data: bytes, keys: tuple[str, ...]) -> int | None:
    """The int stored under the first of ``keys`` found as a dict key in a pickle, by walking its
    opcodes (pickletools.genops parses, it never executes): a string op naming the key directly
    followed by an int op is ``key: value``."""
    found: dict[str, int] = {}
    prev: str | None = None
    try:
        for op, arg, _ in pickletools.genops(data):
            if op.name in ("MEMOIZE", "BINPUT", "LONG_BINPUT", "PUT"):
                continue  # protocol 2+ memoizes the key string between it and its value
            if prev is not None and op.name in ("BININT", "BININT1", "BININT2", "LONG1", "INT", "LONG"):
                if isinstance(arg, int) and not isinstance(arg, bool):
                    found.setdefault(prev, int(arg))
            prev = arg if "UNICODE" in op.name and arg in keys else None
    except Exception:  # noqa: BLE001 - a torn or odd pickle just says no step
        pass
    for k in keys:
        if k in found:
            return found[k]
    return None


# -- hashing and atomic copies ------------------------------------------------------------
def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(8 << 20):
            h.update(chunk)
    return h.hexdigest()


def _tree_files(path: Path) -> list[Path]:
    return [path] if not path.is_dir() else [p for p in sorted(path.rglob("*")) if p.is_file()]


def _digest(path: Path) -> tuple[str, dict[str, FileEntry], int]:
    """(sha256, {relname: {size, sha256}}, bytes) of a file or directory."""
    files: dict[str, FileEntry] = {}
    for p in _tree_files(path):
        rel = "." if p == path else p.relative_to(path).as_posix()
        files[rel] = {"size": p.stat().st_size, "sha256": _sha256(p)}
    if list(files) == ["."]:
        sha = files["."]["sha256"]
    else:
        sha = hashlib.sha256(json.dumps(sorted((k, v["sha256"]) for k, v in files.items())).encode()).hexdigest()
    return sha, files, sum(v["size"] for v in files.values())


def _copy_fsynced(src: Path, dst: Path) -> None:
    """Copy a file or tree to ``dst`` (which must not exist), every file fsynced."""
    if src.is_dir():
        shutil.copytree(src, dst)
        for p in _tree_files(dst):
            with open(p, "rb") as f:
                os.fsync(f.fileno())
        for d in sorted({p.parent for p in _tree_files(dst)} | {dst}, key=lambda x: -len(x.parts)):
            fsync_dir(d)
    else:
        dst.parent.mkdir(parents=True, exist_ok=True)
        with open(src, "rb") as fi, open(dst, "wb") as fo:
            shutil.copyfileobj(fi, fo, 8 << 20)
            fo.flush()
            os.fsync(fo.fileno())


def _signature(path: Path) -> tuple | None:
    """Size and mtime of a file, or of every file in a directory; None if it vanished."""
    try:
        if path.is_dir():
            return tuple((p.relative_to(path).as_posix(), (st := p.stat()).st_size, st.st_mtime_ns)
                         for p in _tree_files(path))
        st = path.stat()
        return (st.st_size, st.st_mtime_ns)
    except OSError:
        return None


def place(src: Path, dest: Path) -> None:
    """Put a copy of ``src`` at ``dest`` atomically: a temp sibling, fsynced, renamed over it
    (a directory in place is renamed away first and deleted after), the parent fsynced."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".nightshift-tmp-{dest.name}-{os.getpid()}")
    _rm(tmp)
    _copy_fsynced(src, tmp)
    if tmp.is_dir() and dest.exists():
        old = dest.with_name(f".nightshift-old-{dest.name}-{os.getpid()}")
        _rm(old)
        os.rename(dest, old)
        os.rename(tmp, dest)
        fsync_dir(dest.parent)
        _rm(old)
    else:
        os.replace(tmp, dest)
        fsync_dir(dest.parent)


def _rm(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    else:
        p.unlink(missing_ok=True)


@dataclass
class _Pending:
    sig: tuple
    since: float
    step: int | None


@dataclass(frozen=True)
class Found:
    """A match that was there before the run began: never this run's."""
    relpath: str
    kept: Path | None  # the copy aside in the state dir (None: it changed before it was copied)
    step: int | None
    moved: bool = False  # ``kept`` is the directory itself, moved aside in place (not a copy)


class Adopter:
    """Watches ``glob`` under ``workdir``; adopts verified (or, for formats that cannot be
    checked, settled) matches into ``store_dir``; puts the newest good copy back."""

    def __init__(self, workdir: str | os.PathLike, glob: str, store_dir: str | os.PathLike,
                 keep: int = 3, clock: Callable[[], float] = time.time, settle_s: float = 2.0,
                 log: Callable[[str], None] | None = None, claim_found: bool = False):
        self.workdir = Path(workdir)
        self.glob = glob
        self.store = Path(store_dir)
        self.keep = max(1, int(keep))
        self.clock = clock
        self.settle_s = float(settle_s)
        self.log = log or (lambda msg: None)
        self._pending: dict[str, _Pending] = {}
        self._adopted_sig: dict[str, tuple] = {}  # what is already in the store, per relpath
        self._refused_sig: dict[str, tuple] = {}  # a torn file is reported once, not per poll
        self.last_refusal: str | None = None
        self.found: list[Found] = []  # set aside for the caller to say (taken by take_found)
        self.restored_at: float | None = None  # when ``restore`` last put a copy back (its clock)
        self._before: dict[str, list] = {}  # relpath -> signature of a file older than the run
        if claim_found:
            self._claim_found()
        for c in self._versions():  # a restarted daemon does not adopt the same file again
            src = self.workdir / c.relpath
            if _signature(src) is not None and c.source_mtime_ns == self._mtime(src):
                self._adopted_sig.setdefault(c.relpath, _signature(src))  # type: ignore[arg-type]

    # -- files that were there before the run ---------------------------------------------
    def _claim_found(self) -> None:
        """The first Adopter of a run records what already matches (stat only: this runs on the
        loop); a later one (a restarted daemon) reads that record back."""
        path = self.store / BEFORE
        try:
            self._before = {k: list(v) for k, v in json.loads(path.read_text())["files"].items()}
            return
        except FileNotFoundError:
            pass
        except (OSError, ValueError, KeyError, AttributeError):
            return  # unreadable: nothing is treated as foreign (the run's own copies still verify)
        before = {}
        # a store with copies but no record (made before this rule): those files are the run's own
        for src in ([] if self._versions() else self._matches()):
            sig = _signature(src)
            if sig is not None:
                before[src.relative_to(self.workdir).as_posix()] = list(sig)
        self.store.mkdir(parents=True, exist_ok=True)
        _write_json(path, {"files": before, "kept": {}})
        self._before = before
        self._unkept = set(before)

    def _is_before(self, rel: str, sig: tuple | None) -> bool:
        b = self._before.get(rel)
        return b is not None and sig is not None and _as_tuple(b) == sig

    def _keep_found(self) -> None:
        """Copy the files found before the run aside (once, in the worker thread)."""
        todo: set[str] = getattr(self, "_unkept", set())
        if not todo:
            return
        self._unkept = set()
        for rel in sorted(todo):
            src, dst = self.workdir / rel, self.store / "before" / rel
            kept: Path | None = None
            if src.is_dir():  # HF resumes the newest checkpoint-N in place: it must leave
                try:
                    kept = _move_aside(src, "before")
                    self.log(f"moved {rel} aside to {kept.name} (found before the run)")
                except OSError as e:
                    self.log(f"could not move {rel} aside (found before the run): {e}")
                self.found.append(Found(rel, kept, step_of(kept) if kept else None, moved=True))
                continue
            try:
                _rm(dst)
                _copy_fsynced(src, dst)
                if self._is_before(rel, _signature(src)):
                    kept = dst
                else:
                    _rm(dst)  # rewritten while we copied: the run's job has taken it over
            except OSError as e:
                self.log(f"could not keep a copy of {rel} (found before the run): {e}")
            self.found.append(Found(rel, kept, step_of(dst) if kept else None))

    def own(self, path: str | os.PathLike) -> None:
        """A match present before the run that the run was started from on purpose
        (``run --resume-from``): this run's own, adopted and resumed like its own saves."""
        p = Path(path)
        rel = (p.relative_to(self.workdir) if p.is_absolute() and p.is_relative_to(self.workdir) else p).as_posix()
        if rel not in self._before:
            return
        del self._before[rel]
        getattr(self, "_unkept", set()).discard(rel)
        path_b = self.store / BEFORE
        try:
            doc = json.loads(path_b.read_text())
            doc.get("files", {}).pop(rel, None)
            _write_json(path_b, doc)
        except (OSError, ValueError, AttributeError):
            pass

    def take_found(self) -> list[Found]:
        out, self.found = self.found, []
        return out

    # -- the store ----------------------------------------------------------------------
    def _versions(self) -> list[AdoptedCheckpoint]:
        """Committed versions, newest first, read from their meta.json (sizes not yet checked)."""
        try:
            names = os.listdir(self.store)
        except FileNotFoundError:
            return []
        marks = self._marks()
        out = []
        for n in names:
            if not (m := _VER.match(n)):
                continue
            try:
                meta = _read_meta(json.loads((self.store / n / META).read_text()))
                out.append(self._from_meta(int(m.group(1)), meta, marks))
            except (OSError, ValueError, KeyError, TypeError):
                continue
        return sorted(out, key=lambda c: c.version, reverse=True)

    def _from_meta(self, version: int, meta: Meta, marks: Marks | None = None) -> AdoptedCheckpoint:
        mark, why = _mark_of(version, meta["step"], marks or {})
        return AdoptedCheckpoint(version, meta["relpath"], self.store / f"v_{version:06d}" / meta["relpath"],
                                 meta["step"], meta["t"], meta["bytes"], meta["sha256"],
                                 meta["source_mtime_ns"], meta["verified"], mark, why)

    def _marks(self) -> Marks:
        try:
            return _read_marks(json.loads((self.store / MARKS).read_text()))
        except (OSError, ValueError):
            return {}

    def _set_marks(self, marks: Marks) -> None:
        self.store.mkdir(parents=True, exist_ok=True)
        _write_json(self.store / MARKS, marks)

    def mark_failed(self, version: int, why: str) -> None:
        """The job could not load this copy: never put back again (kept on disk to look at)."""
        marks = self._marks()
        marks.setdefault("failed", {})[str(version)] = why
        self._set_marks(marks)

    def mark_suspect_after(self, step: int, why: str) -> list[AdoptedCheckpoint]:
        """Copies of a step past ``step`` (the last normal loss before a divergence), and any
        adopted with such a step until ``close_suspect``, are suspect: not offered, not
        restored unless asked. Returns the copies marked now."""
        marks = self._marks()
        windows = list(marks.get("suspect", []))
        if windows and windows[-1]["through"] is None:  # still open: the lowest step wins
            windows[-1] = {**windows[-1], "step": min(int(step), windows[-1]["step"]), "why": why}
        else:
            windows.append({"step": int(step), "why": why, "through": None})
        marks["suspect"] = windows
        self._set_marks(marks)
        return [c for c in self._versions() if c.mark == "suspect"]

    def suspect_window(self) -> tuple[int, str] | None:
        """The open divergence window: (the last normal step, why), or None."""
        windows = self._marks().get("suspect", [])
        if windows and windows[-1]["through"] is None:
            return windows[-1]["step"], windows[-1]["why"]
        return None

    def close_suspect(self) -> bool:
        """The next attempt starts from a good copy: what it writes is not suspect, whatever its
        step. True if a window was open."""
        marks = self._marks()
        windows = list(marks.get("suspect", []))
        if not windows or windows[-1]["through"] is not None:
            return False
        versions = self._versions()
        windows[-1] = {**windows[-1], "through": versions[0].version if versions else 0}
        marks["suspect"] = windows
        self._set_marks(marks)
        return True

    def choose(self, version: int, why: str) -> list[AdoptedCheckpoint]:
        """The user restores this copy on purpose: its own mark is lifted, the copies newer than
        it are set aside (so ``restore`` puts this one back), the window closes. Returns the
        copies set aside now."""
        self.close_suspect()
        marks = self._marks()
        marks["chosen"] = sorted({*marks.get("chosen", []), int(version)})
        aside = marks.setdefault("set_aside", {})
        newer = [c for c in self._versions() if c.version > version and c.mark is None]
        for c in newer:
            aside[str(c.version)] = why
        self._set_marks(marks)
        return newer

    def _check_copy(self, c: AdoptedCheckpoint, deep: bool) -> str | None:
        """Why a stored copy is not usable, or None. Shallow: sizes; deep: sha256 and zip CRCs."""
        try:
            meta = _read_meta(json.loads((self.store / f"v_{c.version:06d}" / META).read_text()))
            for rel, entry in meta["files"].items():
                p = c.path if rel == "." else c.path / rel
                if p.stat().st_size != entry["size"]:
                    return f"{rel} has {p.stat().st_size} bytes, expected {entry['size']}"
                if deep and _sha256(p) != entry["sha256"]:
                    return f"{rel}: checksum mismatch (corrupted in the store)"
            if deep:
                verify_tree(c.path)
        except Unverifiable as e:
            return str(e)
        except (OSError, ValueError, KeyError) as e:
            return f"unreadable ({e})"
        return None

    def candidates(self) -> list[AdoptedCheckpoint]:
        """Copies a restore may put back, in the order it tries them: unmarked only, the
        verified ones (newest first) before any that could only settle."""
        good = [c for c in self._versions() if c.mark is None]
        return sorted(good, key=lambda c: (c.verified != "settled", c.version), reverse=True)

    def newest(self) -> AdoptedCheckpoint | None:
        """The copy a restore would put back first (its files there at their recorded sizes)."""
        return next((c for c in self.candidates() if self._check_copy(c, deep=False) is None), None)

    def newest_any(self) -> AdoptedCheckpoint | None:
        """The newest copy, marked or not (status says what its mark is)."""
        return next(iter(self._versions()), None)

    def has_any(self) -> bool:
        """Whether a restart has something to resume from (the lead: resume_command or command)."""
        return self.newest() is not None

    # -- adopting -----------------------------------------------------------------------
    def _matches(self) -> list[Path]:
        return sorted(p for p in self.workdir.glob(self.glob)
                      if not p.name.startswith(".nightshift-") and (p.is_file() or p.is_dir()))

    @staticmethod
    def _mtime(p: Path) -> int:
        try:
            if p.is_dir():
                return max((f.stat().st_mtime_ns for f in _tree_files(p)), default=p.stat().st_mtime_ns)
            return p.stat().st_mtime_ns
        except OSError:
            return 0

    def observe(self, step: int | None = None, *, writer_stopped: bool = False) -> AdoptedCheckpoint | None:
        """One poll: adopt every match that changed and verifies (or, for a format that cannot
        be checked, has settled); return the newest adopted now, or None. ``step`` is the job's
        current step (from its output), used when the checkpoint does not say its own.
        ``writer_stopped``: the job has exited, so a file that does not verify now never will."""
        self._keep_found()
        now = float(self.clock())
        adopted = None
        for src in self._matches():
            rel = src.relative_to(self.workdir).as_posix()
            sig = _signature(src)
            if sig is None or sig == self._adopted_sig.get(rel) or sig == self._refused_sig.get(rel) \
                    or self._is_before(rel, sig):
                self._pending.pop(rel, None)
                continue
            p = self._pending.get(rel)
            if p is None or p.sig != sig:
                self._pending[rel] = p = _Pending(sig, now, step)
            settled = now - p.since >= self.settle_s and p.since < now
            if not claims_verifiable(src) and not settled:
                continue  # nothing to check it by: only quiet says it is complete
            final = settled or writer_stopped  # torn and no longer changing: say so
            c = self._adopt(src, rel, sig, p.step if p.step is not None else step, now, final)
            if c is not None:
                adopted = c
        return adopted

    def _adopt(self, src: Path, rel: str, sig: tuple, step: int | None, now: float,
               final: bool) -> AdoptedCheckpoint | None:
        if not final and not looks_complete(src):
            return None  # most likely mid-save: look again next poll, say nothing yet
        self.store.mkdir(parents=True, exist_ok=True)
        versions = self._versions()
        version = (versions[0].version + 1) if versions else 1
        name = f"v_{version:06d}"
        tmp = self.store / f".tmp-{name}-{os.getpid()}"
        _rm(tmp)
        try:
            _copy_fsynced(src, tmp / rel)
            if _signature(src) != sig:
                _rm(tmp)
                self._pending.pop(rel, None)  # rewritten while we copied: start over
                return None
            try:
                verified = verify_tree(tmp / rel)  # the copy is what we keep, so the copy is checked
            except Unverifiable:
                if not final:
                    _rm(tmp)
                    return None  # may still be in the writer's hands: judged when it is quiet
                raise
            sha, files, nbytes = _digest(tmp / rel)
            newest = versions[0] if versions else None
            if newest is not None and newest.relpath == rel and newest.sha256 == sha:
                _rm(tmp)  # the same bytes again (e.g. touched, or our own restore)
                self._adopted_sig[rel] = sig
                self._pending.pop(rel, None)
                return None
            found_step = step_of(tmp / rel)
            meta: Meta = {"version": version, "relpath": rel, "step": step if found_step is None else found_step,
                          "t": now, "bytes": nbytes, "sha256": sha, "files": files,
                          "source_mtime_ns": self._mtime(src), "verified": verified}
            mp = tmp / META
            with open(mp, "w") as f:
                json.dump(meta, f, indent=1)
                f.flush()
                os.fsync(f.fileno())
            for d in sorted({p.parent for p in tmp.rglob("*")} | {tmp}, key=lambda x: -len(x.parts)):
                fsync_dir(d)  # out/ inside the copy too, deepest first
            os.rename(tmp, self.store / name)
            fsync_dir(self.store)
        except Unverifiable as e:
            _rm(tmp)
            self._refused_sig[rel] = sig
            self._pending.pop(rel, None)
            self.last_refusal = f"{rel}: {e}"
            self.log(f"not adopting {rel}: {e}")
            return None
        except OSError as e:
            _rm(tmp)
            self.log(f"could not adopt {rel}: {e}; will try again")
            return None
        self._adopted_sig[rel] = sig
        self._pending.pop(rel, None)
        self._retain()
        c = self._from_meta(version, meta, self._marks())
        self.log(f"adopted {rel} as {name} (step {c.step}, {c.bytes} bytes, {verified})")
        return c

    def _retain(self) -> None:
        """Keep the newest ``keep`` good copies, and as many marked ones (a divergence must not
        push the last good copy out); a copy is renamed out of the namespace before it is
        deleted, so a kill mid-delete never leaves a committed-looking half copy."""
        versions = self._versions()
        good = [c for c in versions if c.mark is None]
        marked = [c for c in versions if c.mark is not None]
        for c in good[self.keep:] + marked[self.keep:]:
            vdir = self.store / f"v_{c.version:06d}"
            doomed = self.store / f".del-{vdir.name}-{os.getpid()}"
            try:
                os.rename(vdir, doomed)
            except OSError:
                continue
            shutil.rmtree(doomed, ignore_errors=True)
        for n in os.listdir(self.store):  # leftovers of a daemon killed mid-adopt
            if n.startswith((".tmp-v_", ".del-v_")) and not n.endswith(f"-{os.getpid()}"):
                _rm(self.store / n)

    # -- restoring ------------------------------------------------------------------------
    def restore(self, dest_workdir: str | os.PathLike | None = None) -> AdoptedCheckpoint | None:
        """Before a restart (the job has exited): put the best copy back at its relative path
        under ``dest_workdir`` (default: the job's workdir), atomically: the newest verified one
        that is neither failed nor suspect, else the newest settled one. Into the job's own
        workdir, a live file that verifies is adopted first (it may be newer than the store); a
        torn one is replaced, or, with no copy to replace it, moved aside to a hidden
        ``.nightshift-torn-<name>`` (so the script's own "latest checkpoint" lookup skips it and
        a resume never runs on it). Returns what was put in place (None: the job starts fresh)."""
        own = dest_workdir is None or Path(dest_workdir).resolve() == self.workdir.resolve()
        dest = self.workdir if dest_workdir is None else Path(dest_workdir)
        if own:
            self.observe(writer_stopped=True)
        for c in self.candidates():
            why = self._check_copy(c, deep=True)
            if why is not None:
                self.log(f"skipping adopted copy v_{c.version:06d} ({c.relpath}): {why}; trying the previous one")
                continue
            target = dest / c.relpath
            if own:
                self._set_aside_torn(c.relpath)
            if not (target.exists() and _digest(target)[0] == c.sha256):
                place(c.path, target)
                self.log(f"restored {c.relpath} from v_{c.version:06d} (step {c.step})")
            if own:
                self._adopted_sig[c.relpath] = _signature(target)  # type: ignore[assignment]
                self._pending.pop(c.relpath, None)
                self.restored_at = float(self.clock())
            return c
        if own:
            self._set_aside_torn(None)
        return None

    restore_newest = restore  # the name the offload backends use

    def set_aside(self, relpath: str, why: str) -> Path | None:
        """Move a file the job could not load out of the script's way (hidden, kept)."""
        src = self.workdir / relpath
        if not src.exists():
            return None
        aside = src.with_name(f".nightshift-bad-{src.name}")
        _rm(aside)
        os.rename(src, aside)
        fsync_dir(src.parent)
        self._adopted_sig.pop(relpath, None)
        self.log(f"moved {relpath} aside to {aside.name} ({why})")
        return aside

    def _set_aside_torn(self, keep_rel: str | None) -> None:
        """Matches that do not verify (a file with no copy to replace it, or a directory) go
        aside, and so does a directory whose copy is marked (suspect, failed, set aside): a
        script that resumes "the newest checkpoint-N" on its own must not find them. An older
        run's file (``before.json``) is left alone: it is not ours to move."""
        newest_of: dict[str, AdoptedCheckpoint] = {}
        for v in self._versions():  # newest first: the copy of what is in place now
            newest_of.setdefault(v.relpath, v)
        for src in self._matches():
            rel = src.relative_to(self.workdir).as_posix()
            if rel == keep_rel or (keep_rel is not None and not src.is_dir()) \
                    or self._is_before(rel, _signature(src)):
                continue
            c = newest_of.get(rel)
            if src.is_dir() and c is not None and c.mark is not None \
                    and (c.source_mtime_ns == self._mtime(src) or _digest(src)[0] == c.sha256):
                aside = _move_aside(src, c.mark.replace(" ", "-"))
                self._adopted_sig.pop(rel, None)
                self.log(f"moved {rel} aside to {aside.name} (its copy is {c.mark}: {c.mark_why})")
                continue
            try:
                verify_tree(src)
            except Unverifiable as e:
                aside = src.with_name(f".nightshift-torn-{src.name}")
                _rm(aside)
                os.rename(src, aside)
                self._refused_sig.pop(rel, None)
                self.log(f"moved the torn {rel} aside ({e})")


def _move_aside(src: Path, why: str) -> Path:
    """Rename ``src`` to a hidden ``.nightshift-<why>-<name>`` beside it (never over another
    one: a number is added), fsynced; nothing is deleted."""
    aside, n = src.with_name(f".nightshift-{why}-{src.name}"), 1
    while aside.exists():
        n += 1
        aside = src.with_name(f".nightshift-{why}-{src.name}.{n}")
    os.rename(src, aside)
    fsync_dir(src.parent)
    return aside


def _as_tuple(v: object) -> object:
    return tuple(_as_tuple(x) for x in v) if isinstance(v, list) else v


def _int(v: object) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def _read_meta(raw: object) -> Meta:
    """A meta.json as this module writes it; ValueError naming the field that is not."""
    d = raw if isinstance(raw, dict) else {}
    version, step, t, nbytes, mtime = (_int(d.get("version")), d.get("step"), d.get("t"),
                                       _int(d.get("bytes")), _int(d.get("source_mtime_ns")))
    relpath, sha, verified, files = d.get("relpath"), d.get("sha256"), d.get("verified"), d.get("files")
    if version is None or nbytes is None or mtime is None or not isinstance(t, (int, float)) \
            or not isinstance(relpath, str) or not isinstance(sha, str) or not isinstance(verified, str) \
            or not isinstance(files, dict) or (step is not None and _int(step) is None):
        raise ValueError("meta.json is not a stored copy's: a field is missing or of another type")
    entries: dict[str, FileEntry] = {}
    for rel, e in files.items():
        size, digest = _int(e.get("size")) if isinstance(e, dict) else None, \
            e.get("sha256") if isinstance(e, dict) else None
        if size is None or not isinstance(digest, str):
            raise ValueError(f"meta.json: files[{rel!r}] is not a size and a sha256")
        entries[str(rel)] = {"size": size, "sha256": digest}
    return {"version": version, "relpath": relpath, "step": _int(step), "t": float(t), "bytes": nbytes,
            "sha256": sha, "files": entries, "source_mtime_ns": mtime, "verified": verified}


def _read_marks(raw: object) -> Marks:
    """marks.json as written (a field of another shape reads as absent). ``suspect_after``: the
    one open window of a store written before windows closed, read as the newest window."""
    d = raw if isinstance(raw, dict) else {}
    out: Marks = {}
    failed, aside, chosen = d.get("failed"), d.get("set_aside"), d.get("chosen")
    if isinstance(failed, dict):
        out["failed"] = {str(k): str(v) for k, v in failed.items()}
    if isinstance(aside, dict):
        out["set_aside"] = {str(k): str(v) for k, v in aside.items()}
    if isinstance(chosen, list):
        out["chosen"] = [i for v in chosen if (i := _int(v)) is not None]
    windows: list[Window] = []
    suspect, old = d.get("suspect"), d.get("suspect_after")
    for w in [*(suspect if isinstance(suspect, list) else []), *([old] if isinstance(old, dict) else [])]:
        step = _int(w.get("step")) if isinstance(w, dict) else None
        if isinstance(w, dict) and step is not None:
            through = _int(w.get("through")) if w is not old else None
            windows.append({"step": step, "why": str(w.get("why") or ""), "through": through})
    if windows:
        out["suspect"] = windows
    return out


def _mark_of(version: int, step: int | None, marks: Marks) -> tuple[str | None, str]:
    if version in marks.get("chosen", []):
        return None, ""  # restored on purpose: whatever it was, the user took it
    failed = marks.get("failed", {}).get(str(version))
    if failed is not None:
        return "failed", failed
    aside = marks.get("set_aside", {}).get(str(version))
    if aside is not None:
        return "set aside", aside
    for w in marks.get("suspect", []):
        through = w["through"]
        if step is not None and step > w["step"] and (through is None or version <= through):
            return "suspect", w["why"]
    return None, ""


def _write_json(path: Path, value: object) -> None:
    tmp = path.with_name(f".tmp-{path.name}-{os.getpid()}")
    with open(tmp, "w") as f:
        json.dump(value, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)
