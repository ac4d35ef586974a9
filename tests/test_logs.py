"""daemon/service/logs.py: what reaches the daemon's journal at the default level."""

from __future__ import annotations

import io
import logging

from daemon.service import logs


def test_asyncssh_chatter_stays_out_of_the_journal_but_its_warnings_do_not():
    # an ssh offload logged ~230 asyncssh INFO lines (one per uploaded file, channel, command):
    # 64 KB, enough to fill a pipe nobody reads yet and stall the daemon's SSH thread mid-write
    out = io.StringIO()
    root, ssh = logging.getLogger(), logging.getLogger("asyncssh")
    handlers, level, ssh_level = root.handlers[:], root.level, ssh.level
    try:
        logs.setup("info", out)
        logging.getLogger("asyncssh.sftp").info("[conn=0, chan=1] Starting SFTP put of a to b")
        logging.getLogger("asyncssh").info("[conn=0, chan=2] Requesting new SSH session")
        logging.getLogger("asyncssh").warning("[conn=0] Connection lost")
        logging.getLogger("nightshift").info("state: offloading -> remote")
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
        ssh.setLevel(ssh_level)
    text = out.getvalue()
    assert "SFTP put" not in text and "Requesting new SSH session" not in text, text
    assert "Connection lost" in text and "offloading -> remote" in text, text
