"""A run's checkpoint namespace, ``<checkpoint_dir>/run-N/``, and the state dir it belongs to.

The checkpoint dir's lock (daemon/state/lock.py) keeps a second daemon off it, but a lock does not
hold on every mount (NFS without lockd, one share seen by two machines). So each namespace also
records whose run it is: ``run-N/.owner`` names the state dir (its ``identity`` file, a random
id made once, and its real path). A run of another state dir that finds ``run-N`` owned by
someone else uses ``run-N-<its id>`` instead: two daemons' runs never share checkpoints.

The owner matches by id or by path: a state dir moved keeps its id, a state dir whose id file
was lost (or that is read-only, see ``state_identity``) keeps its path. A ``run-N`` without
``.owner`` (written before this existed) is claimed by the first daemon that uses it.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from pathlib import Path

IDENTITY_FILE = "identity"
OWNER_FILE = ".owner"
_cache: dict[tuple[str, int, str], Path] = {}


def state_identity(state_dir: str | os.PathLike) -> str:
    """The state dir's id: ``<state_dir>/identity`` (created 0600 on first use), or, when it
    cannot be written, a hash of the dir's real path (stable as long as the dir stays put)."""
    p = Path(state_dir) / IDENTITY_FILE
    for _ in range(2):
        try:
            text = p.read_text().strip()
            if text:
                return text
        except OSError:
            pass
        try:
            fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except FileExistsError:
            continue  # another process made it meanwhile: read theirs
        except OSError:
            break
        ident = secrets.token_hex(8)
        try:
            os.write(fd, f"{ident}\n".encode())
            os.fsync(fd)
        except OSError:
            os.close(fd)
            p.unlink(missing_ok=True)
            break
        os.close(fd)
        return ident
    return hashlib.sha256(os.path.realpath(state_dir).encode()).hexdigest()[:16]


def _claim(d: Path, me: dict[str, str]) -> dict[str, str] | None:
    """``d``'s owner, after making us the owner if it had none; None if it cannot be told."""
    try:
        d.mkdir(parents=True, exist_ok=True)
        fd = os.open(d / OWNER_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    except FileExistsError:
        try:
            owner = json.loads((d / OWNER_FILE).read_text())
            return owner if isinstance(owner, dict) else None
        except (OSError, ValueError):
            return None  # unreadable or torn: no proof it is someone else's
    except OSError:
        return None  # a read-only or full checkpoint dir: the job will say so itself
    try:
        os.write(fd, json.dumps(me).encode())
    except OSError:
        pass
    finally:
        os.close(fd)
    return me


def _ours(owner: dict[str, str] | None, me: dict[str, str]) -> bool:
    return owner is None or owner.get("identity") == me["identity"] or \
        owner.get("state_dir") == me["state_dir"]


def namespace(checkpoint_dir: str | os.PathLike, run_id: int, state_dir: str | os.PathLike) -> Path:
    """Where run ``run_id`` of the daemon with ``state_dir`` keeps its checkpoints."""
    key = (str(checkpoint_dir), run_id, str(state_dir))
    if key in _cache:
        return _cache[key]
    me = {"identity": state_identity(state_dir), "state_dir": os.path.realpath(state_dir)}
    plain = Path(checkpoint_dir) / f"run-{run_id}"
    found = plain
    if not _ours(_claim(plain, me), me):
        found = Path(checkpoint_dir) / f"run-{run_id}-{me['identity'][:8]}"
        _claim(found, me)
    _cache[key] = found
    return found
