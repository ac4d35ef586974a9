"""What the daemon says (daemon/core/journal.py): each event in a real Store through the real
StoreGuard, its journal line, and a real Notifier whose only fake is the HTTP post (the network
boundary)."""

from __future__ import annotations

import asyncio
import logging

from daemon.core.journal import Journal
from daemon.core.storeguard import StoreGuard
from daemon.night.notify import Notifier
from daemon.state.config import validate
from daemon.state.store import Store

CFG = validate({"job": {"command": ["train"]},
                "notify": {"ntfy_url": "http://127.0.0.1:9/t", "events": ["finished"]}}, "<test>")


def test_an_event_is_stored_logged_and_shown_as_the_newest(tmp_path, caplog):
    store, problems = Store(tmp_path / "n.db"), {}
    j = Journal(store, StoreGuard(problems), clock=lambda: 123.0)
    with caplog.at_level(logging.DEBUG, logger="nightshift"):
        j.say(4, "restart", "the job died", "warn", data={"step": 40})
        j.say(4, "paused_hot", "paused: edge 90 C", "warn", detail=True)
    rows = store.events(4, limit=10)
    assert [(r["kind"], r["level"]) for r in rows] == [("paused_hot", "warn"), ("restart", "warn")]
    assert rows[0]["data"] == {"detail": True} and rows[1]["data"] == {"step": 40}
    levels = {r.getMessage(): r.levelname for r in caplog.records}
    assert levels["restart: the job died"] == "WARNING"
    assert levels["paused_hot: paused: edge 90 C"] == "DEBUG"  # a detail: no journal line of its own
    assert j.last == {"t": 123.0, "kind": "paused_hot", "message": "paused: edge 90 C"} and problems == {}


def test_a_sick_store_is_the_store_problem_and_the_event_is_still_the_newest(tmp_path):
    store, problems = Store(tmp_path / "n.db"), {}
    j = Journal(store, StoreGuard(problems), clock=lambda: 1.0)
    store.close()
    j.say(1, "run", "new run 1")
    assert "cannot write the state database" in problems["store"] and j.last is not None


def test_only_the_kinds_asked_for_buzz_the_phone(tmp_path):
    posted: list[tuple[str, bytes, dict[str, str]]] = []

    async def go():
        phone = Notifier(CFG["notify"], post_fn=lambda url, body, headers: posted.append((url, body, headers)))
        await phone.start()
        j = Journal(Store(tmp_path / "n.db"), StoreGuard({}), clock=lambda: 1.0)
        j.say(1, "finished", "run 1 finished at step 100", phone=phone, notify=CFG["notify"]["events"])
        j.say(1, "failed", "run 2 failed", "error", phone=phone, notify=CFG["notify"]["events"])  # not asked for
        j.say(1, "restart", "not a phone's kind", phone=phone, notify=["restart"])
        await phone.stop()
    asyncio.run(go())
    assert [(b, h["Title"]) for _, b, h in posted] == [(b"run 1 finished at step 100", "Training finished")]
