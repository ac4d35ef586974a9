"""Tail the job's progress.jsonl incrementally: each call reads only the bytes added since."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


class ProgressTail:
    def __init__(self, path: str | Path, from_end: bool = False):
        self.path = Path(path)
        self.offset = 0
        self._partial = b""
        self._inode: int | None = None
        if from_end:
            try:
                st = self.path.stat()
                self.offset, self._inode = st.st_size, st.st_ino
            except OSError:
                pass

    def read(self) -> list[dict[str, Any]]:
        """New complete records since the last call. Truncation or replacement restarts at 0."""
        try:
            st = os.stat(self.path)
        except OSError:
            return []
        if self._inode is not None and (st.st_ino != self._inode or st.st_size < self.offset):
            self.offset, self._partial = 0, b""
        self._inode = st.st_ino
        if st.st_size == self.offset:
            return []
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            data = f.read()
        self.offset += len(data)
        data = self._partial + data
        lines = data.split(b"\n")
        self._partial = lines.pop()  # an incomplete last line waits for its newline
        out = []
        for line in lines:
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except ValueError:
                log.warning("ignoring a malformed line in %s: %.80r", self.path, line)
                continue
            if isinstance(rec, dict):
                out.append(rec)
        return out
