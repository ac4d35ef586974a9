"""CLI clients of the HTTP API (standard library only): status, events, controls."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

from daemon import auth


def _not_running(base_url: str, why: str) -> tuple[str, int]:
    return (f"nightshift daemon is not running at {base_url} ({why}). Start it with "
            "`nightshift run` or `systemctl start nightshiftd`.", 1)


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


def events(base_url: str, limit: int = 20, kind: str | None = None) -> tuple[str, int]:
    q = f"/events?limit={int(limit)}" + (f"&kind={urllib.request.quote(kind)}" if kind else "")
    try:
        _, body = _get(base_url, q, "application/json")
    except urllib.error.URLError as e:
        return _not_running(base_url, str(getattr(e, "reason", e)))
    import time
    lines = []
    for e in json.loads(body):
        ts = time.strftime("%H:%M:%S", time.localtime(e["t"]))
        lines.append(f"{ts} {e['level']:<5} {e['kind']}: {e['message']}")
    return "\n".join(lines) or "(no events)", 0


def control(base_url: str, token_file: str | Path, action: str) -> tuple[str, int]:
    try:
        token = auth.read_token(token_file)
    except FileNotFoundError:
        return (f"no API token at {token_file}: the daemon creates it on its first start "
                "(run this as a user who can read the daemon's state directory)", 1)
    except PermissionError:
        return f"cannot read the API token {token_file}: permission denied (try sudo)", 1
    except auth.InsecureTokenFile as e:
        return f"refusing to use the API token: {e}", 1
    req = urllib.request.Request(f"{base_url}/control/{action}", method="POST", data=b"",
                                 headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            res = json.loads(r.read())
    except urllib.error.HTTPError as e:
        detail = json.loads(e.read() or b"{}").get("detail", e.reason)
        return f"{action} refused ({e.code}): {detail}", 1
    except urllib.error.URLError as e:
        return _not_running(base_url, str(getattr(e, "reason", e)))
    return f"{res.get('message')} (state: {res.get('state')})", 0 if res.get("ok") else 1
