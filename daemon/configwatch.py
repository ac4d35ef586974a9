"""Live config: watch config.toml with watchdog; apply valid edits, reject invalid ones.

watchdog's observer thread hands events to the asyncio loop (call_soon_threadsafe); the file's
directory is watched because editors save by writing a new file and renaming it over the old.

Each thing is said once, by the callbacks (the Supervisor turns them into one event each, which
is also the log line; this module logs nothing of its own):
- a rejected edit once, however many file events the save made; the same broken file saved
  again is not news, a different error is;
- a key that needs a restart once per new value, compared with the config the daemon started
  with (``started``), not with the previous edit; reverting it to the running value is reported
  once more (the Supervisor says nothing was applied and no restart is needed), and no restart
  warning follows any more.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

from daemon import config as config_mod

_UNSET = object()


def _needs_restart(key: str) -> bool:
    return tuple(key.split(".", 1)) in config_mod.RESTART_KEYS


def _value(cfg: dict[str, Any], key: str) -> Any:
    sec, k = key.split(".", 1)
    return cfg.get(sec, {}).get(k)


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
        self.started = copy.deepcopy(self.current)  # what the daemon runs with
        self.waiting: dict[str, Any] = {}  # restart key -> the value already reported as waiting
        self._last_error: str | None = None
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
            if str(e) != self._last_error:  # several file events per save: say it once
                self._last_error = str(e)
                self.on_error(e)
            return
        self._last_error = None
        keys, restart = self.changes(new)
        self.current = new
        if keys:
            self.on_change(new, keys, restart)

    def changes(self, new: dict[str, Any]) -> tuple[list[str], list[str]]:
        """(keys to report, of which those that wait for a restart), and remember what was said."""
        live = [k for k in diff_keys(self.current, new) if not _needs_restart(k)]
        waiting = {k: _value(new, k) for k in diff_keys(self.started, new) if _needs_restart(k)}
        restart = [k for k, v in waiting.items() if self.waiting.get(k, _UNSET) != v]
        reverted = [k for k in self.waiting if k not in waiting]  # back to the running value
        self.waiting = waiting
        return live + reverted + restart, restart

    def stop(self) -> None:
        if self._pending is not None:
            self._pending.cancel()
        self.observer.stop()
        self.observer.join(timeout=5)
