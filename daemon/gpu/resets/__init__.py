"""Reset detection: kernel log, uevents, devcoredump, sensor EPERM, the job's dying message; and
the machine's reset log (resetlog). It may import daemon.gpu (the heat diagnosis), daemon.policy
and daemon.state (the config's reset source names); nothing above them."""

from daemon.gpu.resets.detector import ResetDetector
from daemon.gpu.resets.incident import ResetEvent

__all__ = ["ResetDetector", "ResetEvent"]
