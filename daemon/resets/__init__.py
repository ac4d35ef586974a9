"""Reset detection: kernel log, uevents, devcoredump, sensor EPERM, the job's dying message."""

from daemon.resets.detector import ResetDetector, ResetEvent

__all__ = ["ResetDetector", "ResetEvent"]
