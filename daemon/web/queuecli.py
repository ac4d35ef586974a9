"""`nightshift queue ...` and `nightshift runs`: clients of GET/POST /queue and GET /runs.

The daemon is the queue's only writer (it starts runs from it); the CLI asks it over the API,
so an edit made while a run is going takes effect at once, kill -9 and restarts included.
"""

from __future__ import annotations

import json
import shlex
import textwrap
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from daemon.policy.queue_entry import safe_text
from daemon.policy.records import QueueItem, RunTableRow
from daemon.web import auth
from daemon.web.client import _not_running
from daemon.web.statusfmt import sparkline


def _call(base_url: str, path: str, method: str = "GET", body: Mapping[str, object] | None = None,
          token_file: str | Path | None = None) -> tuple[dict[str, Any] | None, str | None]:
    """(the daemon's JSON answer, None) or (None, what went wrong). Untyped: the answer is the
    daemon's JSON as docs/api.md documents it, not checked here; the formatters read it with
    .get where an older daemon may lack a field."""
    headers = {"Accept": "application/json"}
    data = None
    if token_file is not None:
        try:
            headers["Authorization"] = f"Bearer {auth.read_token(token_file)}"
        except FileNotFoundError:
            return None, (f"no API token at {token_file}: the daemon creates it on its first start")
        except PermissionError:
            return None, f"cannot read the API token {token_file}: permission denied (try sudo)"
        except auth.InsecureTokenFile as e:
            return None, f"refusing to use the API token: {e}"
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    req = urllib.request.Request(base_url + path, method=method, data=data, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.loads(r.read()), None
    except urllib.error.HTTPError as e:
        detail = json.loads(e.read() or b"{}").get("detail", e.reason)
        return None, f"refused ({e.code}): {detail}"
    except urllib.error.URLError as e:
        return None, _not_running(base_url, str(getattr(e, "reason", e)))[0]


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows)


def show_queue(base_url: str, wide: bool = False, json_out: bool = False) -> tuple[str, int]:
    res, err = _call(base_url, "/queue")
    if err:
        return err, 1
    q = res["queue"] if res else []
    return (json.dumps({"queue": q}, indent=2) if json_out else format_queue(q, wide)), 0


WIDTH = 80  # a terminal, and a phone in landscape: `--wide` for everything, `--json` for scripts


def common_prefix(commands: list[list[str]]) -> list[str]:
    """The words every command starts with (shown once), when there are two commands or more."""
    if len(commands) < 2:
        return []
    out: list[str] = []
    for words in zip(*commands, strict=False):
        if any(w != words[0] for w in words):
            break
        out.append(words[0])
    shortest = min(len(c) for c in commands)
    out = out[:shortest - 1] if len(out) >= shortest else out  # every row keeps a word
    while out and out[-1].startswith("-") and "=" not in out[-1]:
        out.pop()  # `--lr` stays with its value: the row shows `--lr 1.0`, not a bare `1.0`
    return out


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[:width - 1] + "…"


def _wrapped(head: str, body: str, width: int = WIDTH) -> list[str]:
    """``head`` then ``body`` wrapped at ``width``, continuation lines under the body's start;
    words are never cut (an argument longer than a line gets a line of its own)."""
    indent = " " * len(head)
    lines = textwrap.wrap(body, width=max(20, width - len(head)), break_long_words=False,
                          break_on_hyphens=False) or [""]
    return [head + lines[0]] + [indent + line for line in lines[1:]]


def format_queue(q: list[QueueItem], wide: bool = False) -> str:
    if not q:
        return "the queue is empty (nightshift queue add -- COMMAND... adds a run)"
    if wide:
        rows = [["#", "POS", "NAME", "COMMAND", "ENV"]]
        for pos, e in enumerate(q, 1):
            rows.append([str(e["id"]), str(pos), safe_text(e["name"]), safe_text(shlex.join(e["command"])),
                         safe_text(" ".join(f"{k}={v}" for k, v in e["env"].items()))])
        return _table(rows)
    prefix = common_prefix([e["command"] for e in q])
    out = ["every command starts:", *_wrapped("  ", safe_text(shlex.join(prefix)))] if prefix else []
    name_w = min(16, max(len("NAME"), *(len(safe_text(e["name"])) for e in q)))
    id_w = max(1, *(len(str(e["id"])) for e in q))
    pos_w = max(3, len(str(len(q))))
    out.append(f"{'#'.ljust(id_w)}  {'POS'.ljust(pos_w)}  {'NAME'.ljust(name_w)}  "
               + ("ARGUMENTS" if prefix else "COMMAND"))
    for pos, e in enumerate(q, 1):
        head = f"{str(e['id']).ljust(id_w)}  {str(pos).ljust(pos_w)}  {_cut(safe_text(e['name']), name_w).ljust(name_w)}  "
        body = safe_text(shlex.join(e["command"][len(prefix):]))
        if e["env"]:
            body += "   env: " + safe_text(" ".join(e["env"]))
        out += _wrapped(head, body)
    return "\n".join(out)


def edit_queue(base_url: str, token_file: str | Path, op: str, *, name: str | None = None,
               command: list[str] | None = None, env: dict[str, str] | None = None,
               id: int | None = None, to: int | None = None) -> tuple[str, int]:  # noqa: A002 - the CLI's word
    if op == "add":
        res, err = _call(base_url, "/queue", "POST", {"name": name, "command": command or [],
                                                      "env": env or {}}, token_file)
    elif op == "remove":
        res, err = _call(base_url, f"/queue/{int(id or 0)}", "DELETE", None, token_file)
    else:
        res, err = _call(base_url, f"/queue/{int(id or 0)}/move?to={int(to or 1)}", "POST", None, token_file)
    if err:
        return f"queue {op} {err}", 1
    assert res is not None
    return res.get("message", ""), 0 if res.get("ok") else 1


def _fmt(x: float | None, spec: str = ".4g") -> str:
    return "-" if x is None else format(x, spec)


def show_runs(base_url: str, json_out: bool = False, against: int | None = None,
              wide: bool = False, narrow: bool = False) -> tuple[str, int]:
    res, err = _call(base_url, "/runs" + (f"?against={int(against)}" if against is not None else ""))
    if err:
        return err, 1
    rows = res["runs"] if res else []
    return (seeds_table(rows) if narrow else format_runs(rows, json_out, wide)), 0


def format_runs(runs: list[RunTableRow], json_out: bool = False, wide: bool = False) -> str:
    if json_out:
        return json.dumps({"runs": runs}, indent=2)
    if not runs:
        return "no runs yet"
    if wide:
        return _runs_wide(runs)
    base = next((r for r in runs if r["id"] == runs[0].get("changes_against")), None)
    prefix = common_prefix([r["command"] for r in runs])
    out = []
    if base is not None:
        out.append(f"changes against run {base['id']} ({_cut(safe_text(base['name']), 40)})"
                   + ("; every command starts:" if prefix else ""))
        out += _wrapped("  ", safe_text(shlex.join(prefix))) if prefix else []
    name_w = min(14, max(len("NAME"), *(len(safe_text(r["name"])) for r in runs)))
    id_w = max(2, *(len(str(r["id"])) for r in runs))
    cols = [("ID", id_w), ("NAME", name_w), ("STATE", 11), ("STEPS", 6), ("BEST", 7), ("AT", 6),
            ("CLIMB", 6), ("FINAL", 7)]
    out.append("  ".join(h.ljust(w) for h, w in cols).rstrip())
    for r in runs:
        cells = [str(r["id"]), _cut(safe_text(r["name"]), name_w), r["state"], _fmt(r["steps"], "d"),
                 _fmt(r["best_loss"]), _fmt(r["best_step"], "d"),
                 _fmt(r["climb_step"], "d") if r["climb_step"] is not None else "none", _fmt(r["final_loss"])]
        out.append("  ".join(_cut(c, w).ljust(w) for c, (_, w) in zip(cells, cols, strict=True)).rstrip())
        what = "; ".join(safe_text(c) for c in r["changes"]) if r["changes"] else \
            ("the baseline" if base is not None and r["id"] == base["id"] else "no change")
        if r.get("backend") not in (None, "local") or r.get("cost_usd"):
            what += f"; ran on {r.get('backend')} (${r.get('cost_usd') or 0:.2f})"
        spark = curve_spark(r.get("curve") or [], 24)
        out += _wrapped(" " * (id_w + 2) + (spark + "  " if spark else ""), what)
    return "\n".join(out)


def curve_spark(curve: list[list[float]], width: int) -> str:
    """The whole curve in ``width`` characters: each one the mean loss of an equal slice of it
    (the phone's sparkline shows only the newest values; a night's shape needs all of them)."""
    vals = [float(v) for _, v in curve]
    if len(vals) > width:
        edges = [round(i * len(vals) / width) for i in range(width + 1)]
        vals = [sum(vals[a:b]) / (b - a) for a, b in zip(edges, edges[1:], strict=False) if b > a]
    return sparkline(vals, width=width)


def seeds_table(runs: list[RunTableRow], width: int = 40) -> str:
    """The seeds' bisection table, made automatically and narrow enough for a phone (40
    columns): per run what changed, the best smoothed loss before the climb, where the climb
    started, and the whole loss curve as a sparkline. GET /runs?format=text, `runs --narrow`."""
    if not runs:
        return "no runs yet"
    out: list[str] = []
    for r in runs:  # a row may lack any field but id and name (an older daemon, a partial row)
        state = str(r.get("state") or "?")
        head = f"{r['id']} {safe_text(r['name'])}"
        out.append(_cut(head, width - len(state) - 1).ljust(width - len(state)) + state)
        best_loss, best_step = r.get("best_loss"), r.get("best_step")
        best = "-" if best_loss is None else \
            f"{best_loss:.4g}" + (f" at step {best_step}" if best_step is not None else "")
        climb = "no climb" if r.get("climb_step") is None else f"climb from {r['climb_step']}"
        out += _wrapped("  ", f"best {best}, {climb}", width)
        spark = curve_spark(r.get("curve") or [], width - 2)
        if spark:
            out.append("  " + spark)
        changes = r.get("changes") or []
        what = "; ".join(safe_text(c) for c in changes) if changes else \
            ("the baseline" if r["id"] == r.get("changes_against") else "no change")
        out += _wrapped("  ", what, width)
    return "\n".join(out)


def _runs_wide(runs: list[RunTableRow]) -> str:
    rows = [["ID", "NAME", "STATE", "STEPS", "BEST LOSS", "AT STEP", "CLIMB FROM", "FINAL", "WHERE",
             "COST", "STARTED", "COMMAND", "CHANGES"]]
    for r in runs:
        started = time.strftime("%a %H:%M", time.localtime(r["started"])) if r.get("started") else "-"
        rows.append([str(r["id"]), safe_text(r["name"]), r["state"], _fmt(r["steps"], "d"), _fmt(r["best_loss"]),
                     _fmt(r["best_step"], "d"), _fmt(r["climb_step"], "d") if r["climb_step"] is not None
                     else "no climb", _fmt(r["final_loss"]), r["backend"],
                     f"${r['cost_usd']:.2f}", started, safe_text(shlex.join(r["command"])),
                     "; ".join(safe_text(c) for c in r["changes"]) or "-"])
    return _table(rows)
