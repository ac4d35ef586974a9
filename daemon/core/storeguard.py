"""One guard for the Supervisor's writes to the store.

A sick disk (full, read-only, a corrupt page) must not stop supervision: the job keeps being
watched and protected while the database cannot be written. A failed write becomes the one
``store`` problem the user sees in status (what failed and why), and the caller carries on;
the store itself queues what it can (``Store.retry_pending``), and the next successful poll
write clears the problem.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import ParamSpec

log = logging.getLogger("nightshift")
P = ParamSpec("P")
PROBLEM_KEY = "store"


class StoreGuard:
    """``guard(store.add_event, ...)``: True when written; False when it failed, and then
    ``problems["store"]`` says why."""

    def __init__(self, problems: dict[str, str]):
        self.problems = problems  # the Supervisor's: the one place status reads problems from

    def __call__(self, write: Callable[P, object], *args: P.args, **kwargs: P.kwargs) -> bool:
        try:
            write(*args, **kwargs)
        except Exception as e:  # noqa: BLE001 - any store failure: reported, never raised
            log.debug("store write %s failed: %s", getattr(write, "__name__", write), e)
            self.problems[PROBLEM_KEY] = f"cannot write the state database: {e}"
            return False
        return True

    def healthy(self) -> None:
        """A write went through: the disk is writable again."""
        self.problems.pop(PROBLEM_KEY, None)
