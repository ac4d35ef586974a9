"""The control token: generated on first start into a 0600 file, compared in constant time.

The token file is refused, the way ssh refuses a readable private key, unless it is a regular
file (not a symlink: one pointing at /etc/hostname made the hostname the token) owned by the
user reading it and without group or other permissions. It is opened with O_NOFOLLOW and
checked on the open descriptor, so a file swapped in between a check and the read is caught.
"""

from __future__ import annotations

import errno
import hmac
import os
import secrets
import stat
from pathlib import Path

MAX_TOKEN_BYTES = 4096


class InsecureTokenFile(OSError):
    """The token file is a symlink, not a regular file, not ours, or readable by others."""


def _open_checked(p: Path, require_owner: bool) -> str:
    try:
        fd = os.open(p, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        if e.errno == errno.ELOOP:
            target = os.readlink(p) if p.is_symlink() else "?"
            raise InsecureTokenFile(
                f"the API token file {p} is a symlink (to {target}); the token must be a regular "
                f"file: remove it (rm {p}) and restart the daemon to create a new one") from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise InsecureTokenFile(f"the API token file {p} is not a regular file; remove it and "
                                    "restart the daemon to create a new one")
        if require_owner and st.st_uid != os.geteuid():
            raise InsecureTokenFile(
                f"the API token file {p} belongs to uid {st.st_uid}, not to this user (uid "
                f"{os.geteuid()}); remove it and restart the daemon to create a new one")
        if st.st_mode & 0o077:
            raise InsecureTokenFile(
                f"the API token file {p} is accessible by group or others (mode "
                f"{stat.S_IMODE(st.st_mode):04o}): run chmod 600 {p}, or remove it and restart the "
                "daemon to create a new token (anyone who read it could control the job)")
        return os.read(fd, MAX_TOKEN_BYTES).decode("utf-8", "replace").strip()
    finally:
        os.close(fd)


def load_or_create_token(path: str | os.PathLike) -> str:
    """The daemon's token: read from ``path`` (checked, see above) or created there, 0600."""
    p = Path(path)
    try:
        token = _open_checked(p, require_owner=True)
        if token:
            return token
    except FileNotFoundError:
        pass
    p.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    token = secrets.token_urlsafe(32)
    # O_EXCL + mode 0600 at creation: the secret is never readable by others, not even briefly
    tmp = p.with_name(p.name + f".{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    os.replace(tmp, p)
    return token


def read_token(path: str | os.PathLike) -> str:
    """The token for a CLI client. Same checks, except that root may read another user's."""
    return _open_checked(Path(path), require_owner=os.geteuid() != 0)


def check(header: str | None, token: str) -> bool:
    if not header or not header.startswith("Bearer "):
        return False
    return hmac.compare_digest(header[7:].strip().encode(), token.encode())
