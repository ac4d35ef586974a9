"""Reset detection: kernel log, uevents, devcoredump, sensor EPERM, the job's dying message."""

from daemon.gpu.resets.detector import ResetDetector
from daemon.gpu.resets.incident import ResetEvent

__all__ = ["ResetDetector", "ResetEvent"]
