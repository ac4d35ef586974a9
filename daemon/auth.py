"""The control token: generated on first start into a 0600 file, compared in constant time."""

from __future__ import annotations

import hmac
import os
import secrets
from pathlib import Path


def load_or_create_token(path: str | os.PathLike) -> str:
    p = Path(path)
    try:
        token = p.read_text().strip()
        if token:
            return token
    except FileNotFoundError:
        pass
    p.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    # O_EXCL + mode 0600 at creation: the secret is never readable by others, not even briefly
    tmp = p.with_name(p.name + f".{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    os.replace(tmp, p)
    return token


def read_token(path: str | os.PathLike) -> str:
    return Path(path).read_text().strip()


def check(header: str | None, token: str) -> bool:
    if not header or not header.startswith("Bearer "):
        return False
    return hmac.compare_digest(header[7:].strip().encode(), token.encode())
