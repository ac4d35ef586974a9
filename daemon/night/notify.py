"""Push notifications for what matters at night: an ntfy topic and/or a generic JSON webhook.

``notify()`` only enqueues and returns at once (the supervisor never waits on the network);
a background task delivers with retries and exponential backoff; each kind is rate-limited
(min_interval_s), repeats in between are coalesced into "(+N more)". Topic URLs are secrets:
only their host is ever logged.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from urllib.parse import urlsplit

from daemon.policy.cfgtypes import NotifyConfig

log = logging.getLogger(__name__)
PRIORITY = {"reset": "high", "failed": "urgent", "divergence": "high", "budget": "high",
            "paused_hot": "default", "offloaded": "default", "finished": "default"}


def _host(url: str) -> str:
    return urlsplit(url).hostname or "?"


def post(url: str, body: bytes, headers: dict[str, str], timeout: float = 10.0) -> None:
    req = urllib.request.Request(url, data=body, headers=headers, method="POST")
    with urllib.request.urlopen(req, timeout=timeout) as r:
        if r.status >= 300:
            raise OSError(f"HTTP {r.status}")


class Notifier:
    def __init__(self, cfg: NotifyConfig, *, clock=time.monotonic, post_fn=post, backoff_s: float = 1.0):
        self.cfg = cfg
        self.clock = clock
        self.post = post_fn
        self.backoff_s = backoff_s
        self.queue: asyncio.Queue | None = None
        self.task: asyncio.Task | None = None
        self.last_sent: dict[str, float] = {}
        self.suppressed: dict[str, int] = {}
        self.delivered = 0
        self.failed = 0

    async def start(self) -> None:
        self.queue = asyncio.Queue(maxsize=1000)
        self.task = asyncio.create_task(self._run())

    async def stop(self, drain_s: float = 5.0) -> None:
        if self.task is None:
            return
        try:
            await asyncio.wait_for(self.queue.join(), drain_s)  # type: ignore[union-attr]
        except TimeoutError:
            pass
        self.task.cancel()
        try:
            await self.task
        except asyncio.CancelledError:
            pass

    def notify(self, kind: str, title: str, message: str, data: Mapping[str, object] | None = None) -> None:
        if kind not in self.cfg["events"] or self.queue is None:
            return
        now = self.clock()
        if now - self.last_sent.get(kind, -1e18) < float(self.cfg["min_interval_s"]):
            self.suppressed[kind] = self.suppressed.get(kind, 0) + 1
            return
        self.last_sent[kind] = now
        more = self.suppressed.pop(kind, 0)
        if more:
            message += f" (+{more} more)"
        try:
            self.queue.put_nowait((kind, title, message, data or {}))
        except asyncio.QueueFull:
            log.warning("notification queue full: dropping a %s notification", kind)

    async def _run(self) -> None:
        assert self.queue is not None
        while True:
            kind, title, message, data = await self.queue.get()
            try:
                await self._deliver(kind, title, message, data)
            finally:
                self.queue.task_done()

    async def _deliver(self, kind: str, title: str, message: str, data: Mapping[str, object] | None) -> None:
        targets: list[tuple[str, bytes, dict[str, str]]] = []
        if ntfy_url := self.cfg.get("ntfy_url"):
            targets.append((ntfy_url, message.encode(),
                            {"Title": title, "Tags": kind, "Priority": PRIORITY.get(kind, "default")}))
        if webhook_url := self.cfg.get("webhook_url"):
            body = json.dumps({"kind": kind, "title": title, "message": message, "data": data,
                               "t": time.time()}, default=str).encode()
            targets.append((webhook_url, body, {"Content-Type": "application/json"}))
        for url, body, headers in targets:
            for attempt in range(int(self.cfg["retries"]) + 1):
                try:
                    await asyncio.to_thread(self.post, url, body, headers)
                    self.delivered += 1
                    break
                except (OSError, urllib.error.URLError) as e:
                    if attempt == int(self.cfg["retries"]):
                        self.failed += 1
                        log.warning("notification to %s failed after %d attempts: %s", _host(url),
                                    attempt + 1, getattr(e, "reason", e))
                        break
                    await asyncio.sleep(self.backoff_s * 2 ** attempt)
