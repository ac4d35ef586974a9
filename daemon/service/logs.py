"""Logging set up for journald: one line per event, with a level journald understands.

Under systemd (JOURNAL_STREAM is set) each line starts with the kernel-style <N> priority
prefix, which journald strips and stores as the entry's priority; in a terminal lines carry a
timestamp and the level name instead.
"""

from __future__ import annotations

import logging
import os
import sys

_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}


class _JournalFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record).replace("\n", " | ")  # one event, one line
        return f"<{_PRIORITY.get(record.levelno, 6)}>{text}"


class _OneLineFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return super().format(record).replace("\n", " | ")


def setup(level: str = "info", stream=None) -> None:
    stream = stream or sys.stderr
    handler = logging.StreamHandler(stream)
    if os.environ.get("JOURNAL_STREAM"):
        handler.setFormatter(_JournalFormatter("%(name)s: %(message)s"))
    else:
        handler.setFormatter(_OneLineFormatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s",
                                               "%H:%M:%S"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # uvicorn's access log would put one line per /status poll into the journal.
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
    # asyncssh says every channel, command and SFTP file at INFO: an ssh offload's source upload
    # alone is ~230 lines (64 KB). Our own lines say what happened to the link; its warnings stay.
    logging.getLogger("asyncssh").setLevel(logging.WARNING)
