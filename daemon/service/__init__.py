"""The running service: the composition root (app: parts from the config, signals, uvicorn, the
loop), the loop's sleep between ticks (wakeup), the monotonic poll timer (polltimer), the config file watcher (configwatch), systemd's
notify protocol (sdnotify) and journald logs (logs). It may import any package but commands;
only commands and daemon.cli import it.
"""
