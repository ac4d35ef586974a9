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

The file is read off the loop (``load_off_loop``: a daemon thread, ``READ_TIMEOUT_S``): a
config on a hung network mount must not stop /status, SIGTERM handling and the job's
supervision (issue 31). A FIFO or other non-regular file is refused by ``config.load`` itself.
A read that times out is a rejected edit; its thread is left to finish or hang on its own.
"""

from __future__ import annotations

import asyncio
import copy
import os
import threading
from collections.abc import Callable
from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

from daemon.policy.cfgtypes import Config
from daemon.state import config as config_mod

_UNSET = object()
READ_TIMEOUT_S = 10.0


async def load_off_loop(path: str | Path, timeout_s: float = READ_TIMEOUT_S) -> Config:
    """``config.load(path)`` in a daemon thread, awaited at most ``timeout_s``: the loop never
    waits on the file system, and a read stuck for good never blocks the daemon's exit (the
    default executor's threads are joined at exit; a daemon thread is not)."""
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[Config] = loop.create_future()

    def settle(res: Config | Exception) -> None:
        if not fut.done():
            if isinstance(res, Exception):
                fut.set_exception(res)
            else:
                fut.set_result(res)

    def work() -> None:
        res: Config | Exception
        try:
            res = config_mod.load(path)
        except Exception as e:  # noqa: BLE001 - handed to the awaiting coroutine
            res = e
        try:
            loop.call_soon_threadsafe(settle, res)
        except RuntimeError:
            pass  # the loop closed while the file system held us

    threading.Thread(target=work, name="nightshift-config-read", daemon=True).start()
    try:
        return await asyncio.wait_for(asyncio.shield(fut), timeout_s)
    except TimeoutError:
        raise config_mod.ConfigError(f"reading the file took more than {timeout_s:g} s (a hung "
                                     "network mount?)", path) from None


def _needs_restart(key: str) -> bool:
    return tuple(key.split(".", 1)) in config_mod.RESTART_KEYS


def _value(cfg: Config, key: str) -> object:
    sec, k = key.split(".", 1)
    return config_mod.lookup(cfg, sec, k)


def diff_keys(old: Config, new: Config) -> list[str]:
    out = []
    for sec in config_mod.SCHEMA:
        for key in config_mod.SCHEMA[sec]:
            if config_mod.lookup(old, sec, key) != config_mod.lookup(new, sec, key):
                out.append(f"{sec}.{key}")
    return out


class ConfigWatcher:
    def __init__(self, path: str | Path, loop: asyncio.AbstractEventLoop,
                 on_change: Callable[[Config, list[str], list[str]], None],
                 on_error: Callable[[Exception], None], debounce_s: float = 0.3,
                 current: Config | None = None):
        # abspath, not resolve(): resolving stats the file, and on a hung mount that blocks
        self.path = Path(os.path.abspath(path))
        self.loop = loop
        self.on_change = on_change
        self.on_error = on_error
        self.debounce_s = debounce_s
        self.current = current if current is not None else config_mod.load(self.path)
        self.started = copy.deepcopy(self.current)  # what the daemon runs with
        self.waiting: dict[str, object] = {}  # restart key -> the value already reported as waiting
        self._last_error: str | None = None
        self._pending: asyncio.TimerHandle | None = None
        self._reading: asyncio.Task | None = None
        self._again = False
        self.read_timeout_s = READ_TIMEOUT_S
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
        self._pending = self.loop.call_later(self.debounce_s, self._read_due)

    def _read_due(self) -> None:
        self._pending = None
        if self._reading is not None and not self._reading.done():
            self._again = True  # one read at a time; the newest state is read after it
            return
        self._reading = self.loop.create_task(self._reload_off_loop())

    async def _reload_off_loop(self) -> None:
        try:
            new: Config | config_mod.ConfigError = await load_off_loop(
                self.path, self.read_timeout_s)
        except config_mod.ConfigError as e:
            new = e
        except Exception as e:  # noqa: BLE001 - whatever the read raised, the old config stays
            new = config_mod.ConfigError(f"cannot read the file: {type(e).__name__}: {e}", self.path)
        self.apply(new)
        if self._again:
            self._again = False
            self._schedule()

    def reload(self) -> None:
        """Read the file here and now (tests; the watcher reads off the loop)."""
        self._pending = None
        try:
            new: Config | config_mod.ConfigError = config_mod.load(self.path)
        except config_mod.ConfigError as e:
            new = e
        self.apply(new)

    def apply(self, new: Config | config_mod.ConfigError) -> None:
        """A read's outcome: a valid config (its changes reported) or the error (said once)."""
        if isinstance(new, config_mod.ConfigError):
            e = new
            if str(e) != self._last_error:  # several file events per save: say it once
                self._last_error = str(e)
                self.on_error(e)
            return
        self._last_error = None
        keys, restart = self.changes(new)
        self.current = new
        if keys:
            self.on_change(new, keys, restart)

    def changes(self, new: Config) -> tuple[list[str], list[str]]:
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
        if self._reading is not None:
            self._reading.cancel()
        self.observer.stop()
        self.observer.join(timeout=5)
