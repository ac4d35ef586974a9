"""CLI clients of the HTTP API (standard library only): status, events, controls."""

from __future__ import annotations

import http.client
import json
import os
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from daemon.web import auth

if TYPE_CHECKING:
    from daemon.state.store import EventRow  # a type only: the client never opens the store

API_FILE = "api.json"  # written by the daemon (daemon/service/app.py) once it listens


def served_address(state_dir: str | Path) -> tuple[str, int] | None:
    """(host, port) the daemon of this state dir is listening on, from <state_dir>/api.json, if
    that daemon is still alive; None otherwise (or when the file cannot be read)."""
    from daemon.state.lock import fallback_dir  # a daemon on a read-only state dir wrote it there
    for d in (Path(state_dir), fallback_dir(state_dir)):
        try:
            info = json.loads((d / API_FILE).read_text())
            host, port, pid = str(info["host"]), int(info["port"]), int(info["pid"])
            break
        except (OSError, ValueError, KeyError, TypeError):
            continue
    else:
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None  # that daemon is gone: the config's address is the best guess
    except PermissionError:
        pass  # alive, another user's (the system service)
    return host, port


def write_served_address(state_dir: str | Path, host: str, port: int) -> None:
    """Atomically (tmp + rename), mode 0600 like everything in the state dir."""
    path = Path(state_dir) / API_FILE
    tmp = path.with_name(f".{API_FILE}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"host": host, "port": port, "pid": os.getpid(),
                   "url": f"http://{host}:{port}"}, f)
    os.replace(tmp, path)


# The config this CLI process talks through (set once by daemon/cli.py): it decides which
# service a "not running" message names. One process, one config, so a module value.
_config_path: Path | None = None


def set_config_path(path: str | Path | None) -> None:
    global _config_path
    _config_path = Path(path) if path else None


def start_hint(config_path: Path | None, home: Path | None = None) -> str:
    """How to start the daemon that serves this config: the system service for a config in
    /etc, the user service (`systemctl --user`) for one in your home, else the foreground."""
    home = Path.home() if home is None else home
    if config_path is None:
        return "`nightshift run` or `systemctl start nightshiftd`"
    p = Path(os.path.abspath(config_path))
    if p.is_relative_to("/etc"):
        return "`sudo systemctl start nightshiftd` (the system service)"
    fg = f"`nightshift run -c {p}` in the foreground"
    if p.is_relative_to(home / ".config") or \
            p.is_relative_to(Path(os.environ.get("XDG_CONFIG_HOME") or home / ".config")):
        return f"`systemctl --user start nightshiftd` (the user service), or {fg}"
    return fg


def _not_running(base_url: str, why: str) -> tuple[str, int]:
    where = f" for {_config_path}" if _config_path is not None else ""
    return (f"The nightshift daemon is not running at {base_url}{where} ({why}). Start it with "
            f"{start_hint(_config_path)}.", 1)


def _reachable(base_url: str) -> bool:
    try:
        _get(base_url, "/healthz")
    except urllib.error.HTTPError:
        return True  # something answers: a daemon (the token's problem is then the real one)
    except (urllib.error.URLError, OSError):
        return False
    return True


def _sentence(text: str) -> str:
    text = (text or "").strip()
    if not text:
        return text
    text = text[0].upper() + text[1:]
    return text if text[-1] in ".!?)" else text + "."


def _get(base_url: str, path: str, accept: str = "text/plain") -> tuple[int, bytes]:
    req = urllib.request.Request(base_url + path, headers={"Accept": accept})
    with urllib.request.urlopen(req, timeout=10) as r:
        return r.status, r.read()


def status(base_url: str, json_out: bool = False) -> tuple[str, int]:
    try:
        _, body = _get(base_url, "/status" + ("?format=json" if json_out else ""))
    except urllib.error.URLError as e:
        return _not_running(base_url, str(getattr(e, "reason", e)))
    text = body.decode()
    return (json.dumps(json.loads(text), indent=2) if json_out else text.rstrip()), 0


def events(base_url: str, limit: int = 20, kind: str | None = None,
           show_all: bool = False) -> tuple[str, int]:
    q = f"/events?limit={int(limit)}" + (f"&kind={urllib.parse.quote(kind)}" if kind else "")
    try:
        _, body = _get(base_url, q, "application/json")
    except urllib.error.URLError as e:
        return _not_running(base_url, str(getattr(e, "reason", e)))
    return format_events(json.loads(body), show_all=show_all or bool(kind)), 0


def format_events(evs: list[EventRow], show_all: bool = False) -> str:
    """Newest first. Events marked ``detail`` (a thermal pause's state change and hold ack, which
    its ``paused_hot`` line already says) only with ``show_all``: one line per pause."""
    import time

    from daemon.policy.queue_entry import safe_text
    lines = []
    for e in evs:
        if (e.get("data") or {}).get("detail") and not show_all:
            continue
        ts = time.strftime("%H:%M:%S", time.localtime(e["t"]))
        lines.append(f"{ts} {e['level']:<5} {e['kind']}: {safe_text(e['message'])}")  # names are the user's
    return "\n".join(lines) or "(no events)"


def control(base_url: str, token_file: str | Path, action: str, query: str = "") -> tuple[str, int]:
    try:
        token = auth.read_token(token_file)
    except (FileNotFoundError, PermissionError, auth.InsecureTokenFile) as e:
        if not _reachable(base_url):  # no daemon: say that first, not the token's problem
            return _not_running(base_url, "nothing answers")
        if isinstance(e, FileNotFoundError):
            return (f"There is no API token at {token_file}. The daemon creates it on its first "
                    "start; run this as a user who can read the daemon's state directory.", 1)
        if isinstance(e, PermissionError):
            return f"Cannot read the API token {token_file}: permission denied (try sudo).", 1
        return f"refusing to use the API token: {e}", 1
    req = urllib.request.Request(f"{base_url}/control/{action}{query}", method="POST", data=b"",
                                 headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            res = json.loads(r.read())
    except urllib.error.HTTPError as e:
        try:
            detail = json.loads(e.read() or b"{}").get("detail", e.reason)
        except (ValueError, AttributeError, OSError, http.client.HTTPException):
            detail = e.reason
        return f"The daemon refused {action} (HTTP {e.code}): {_sentence(str(detail))}", 1
    except urllib.error.URLError as e:
        return _not_running(base_url, str(getattr(e, "reason", e)))
    except (ValueError, OSError, http.client.HTTPException) as e:
        # the daemon went away mid-answer (shutting down): no traceback, say what to do
        return (f"The daemon stopped before answering {action} ({type(e).__name__}); run "
                "`nightshift status` to see where the run is.", 1)
    if not isinstance(res, dict):
        return f"The daemon's answer to {action} was not understood: {str(res)[:200]}", 1
    return _control_text(res), 0 if res.get("ok") else 1


def _control_text(res: Mapping[str, object]) -> str:
    """``res``: the daemon's JSON answer (an Answer, and the status' headline), unchecked."""
    """The daemon's answer, then what the run is now in the status' own first words ("Paused.
    Now: PAUSED by you."), never a second wording of the state that could contradict it."""
    msg = _sentence(str(res.get("message") or ""))
    if msg.endswith(")"):
        msg += "."
    now = res.get("headline") or str(res.get("state") or "").upper()
    if now and not (res.get("state") and str(res["state"]) in msg.lower()):  # said once
        msg += f" Now: {now}."
    return msg
