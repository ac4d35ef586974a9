"""`nightshift queue ...` and `nightshift runs`: clients of GET/POST /queue and GET /runs.

The daemon is the queue's only writer (it starts runs from it); the CLI asks it over the API,
so an edit made while a run is going takes effect at once, kill -9 and restarts included.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from daemon import auth
from daemon.client import _not_running


def _call(base_url: str, path: str, method: str = "GET", body: Any = None,
          token_file: str | Path | None = None) -> tuple[dict[str, Any] | None, str | None]:
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


def show_queue(base_url: str) -> tuple[str, int]:
    res, err = _call(base_url, "/queue")
    if err:
        return err, 1
    return format_queue(res["queue"] if res else []), 0


def format_queue(q: list[dict[str, Any]]) -> str:
    if not q:
        return "the queue is empty (nightshift queue add -- COMMAND... adds a run)"
    rows = [["#", "POS", "NAME", "COMMAND", "ENV"]]
    for pos, e in enumerate(q, 1):
        env = " ".join(f"{k}={v}" for k, v in e["env"].items())
        rows.append([str(e["id"]), str(pos), e["name"], " ".join(e["command"])[:60], env[:40]])
    return _table(rows)


def edit_queue(base_url: str, token_file: str | Path, op: str, **kw: Any) -> tuple[str, int]:
    if op == "add":
        res, err = _call(base_url, "/queue", "POST", {"name": kw.get("name"), "command": kw["command"],
                                                      "env": kw.get("env") or {}}, token_file)
    elif op == "remove":
        res, err = _call(base_url, f"/queue/{int(kw['id'])}", "DELETE", None, token_file)
    else:
        res, err = _call(base_url, f"/queue/{int(kw['id'])}/move?to={int(kw['to'])}", "POST", None, token_file)
    if err:
        return f"queue {op} {err}", 1
    assert res is not None
    return res.get("message", ""), 0 if res.get("ok") else 1


def _fmt(x: Any, spec: str = ".4g") -> str:
    return "-" if x is None else format(x, spec)


def show_runs(base_url: str, json_out: bool = False, against: int | None = None) -> tuple[str, int]:
    res, err = _call(base_url, "/runs" + (f"?against={int(against)}" if against is not None else ""))
    if err:
        return err, 1
    return format_runs(res["runs"] if res else [], json_out), 0


def format_runs(runs: list[dict[str, Any]], json_out: bool = False) -> str:
    if json_out:
        return json.dumps({"runs": runs}, indent=2)
    if not runs:
        return "no runs yet"
    rows = [["ID", "NAME", "STATE", "STEPS", "BEST LOSS", "AT STEP", "CLIMB FROM", "FINAL", "WHERE",
             "COST", "STARTED", "CHANGES"]]
    for r in runs:
        started = time.strftime("%a %H:%M", time.localtime(r["started"])) if r.get("started") else "-"
        rows.append([str(r["id"]), r["name"], r["state"], _fmt(r["steps"], "d"), _fmt(r["best_loss"]),
                     _fmt(r["best_step"], "d"), _fmt(r["climb_step"], "d") if r["climb_step"] is not None
                     else "no climb", _fmt(r["final_loss"]), r["backend"],
                     f"${r['cost_usd']:.2f}", started, "; ".join(r["changes"])[:60] or "-"])
    return _table(rows)
