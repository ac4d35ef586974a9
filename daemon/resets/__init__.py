"""Reset detection: kernel log, uevents, devcoredump, sensor EPERM, the job's dying message."""

from daemon.resets.detector import ResetDetector
from daemon.resets.incident import ResetEvent

__all__ = ["ResetDetector", "ResetEvent"]
