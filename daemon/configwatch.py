"""Live config: watch config.toml with watchdog; apply valid edits, reject invalid ones.

watchdog's observer thread hands events to the asyncio loop (call_soon_threadsafe); the file's
directory is watched because editors save by writing a new file and renaming it over the old.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

from daemon import config as config_mod

log = logging.getLogger(__name__)


def diff_keys(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    out = []
    for sec in config_mod.SCHEMA:
        for key in config_mod.SCHEMA[sec]:
            if old.get(sec, {}).get(key) != new.get(sec, {}).get(key):
                out.append(f"{sec}.{key}")
    return out


class ConfigWatcher:
    def __init__(self, path: str | Path, loop: asyncio.AbstractEventLoop,
                 on_change: Callable[[dict[str, Any], list[str], list[str]], None],
                 on_error: Callable[[Exception], None], debounce_s: float = 0.3,
                 current: dict[str, Any] | None = None):
        self.path = Path(path).resolve()
        self.loop = loop
        self.on_change = on_change
        self.on_error = on_error
        self.debounce_s = debounce_s
        self.current = current if current is not None else config_mod.load(self.path)
        self._pending: asyncio.TimerHandle | None = None
        self.observer = Observer()

    def start(self) -> None:
        watcher = self

        class Handler(FileSystemEventHandler):
            def on_any_event(self, event: FileSystemEvent) -> None:
                paths = {str(getattr(event, "src_path", "")), str(getattr(event, "dest_path", ""))}
                if str(watcher.path) in paths:
                    watcher.loop.call_soon_threadsafe(watcher._schedule)

        self.observer.schedule(Handler(), str(self.path.parent), recursive=False)
        self.observer.daemon = True
        self.observer.start()

    def _schedule(self) -> None:
        if self._pending is not None:
            self._pending.cancel()  # several events per save: act once it settled
        self._pending = self.loop.call_later(self.debounce_s, self.reload)

    def reload(self) -> None:
        self._pending = None
        try:
            new = config_mod.load(self.path)
        except config_mod.ConfigError as e:
            log.error("config edit rejected, the previous config stays in force: %s", e)
            self.on_error(e)
            return
        keys = diff_keys(self.current, new)
        if not keys:
            return
        restart = [k for k in keys if tuple(k.split(".", 1)) in config_mod.RESTART_KEYS]
        self.current = new
        self.on_change(new, keys, restart)

    def stop(self) -> None:
        if self._pending is not None:
            self._pending.cancel()
        self.observer.stop()
        self.observer.join(timeout=5)
