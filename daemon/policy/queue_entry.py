"""Pure: is a queue entry something the daemon can start? (issue 28)

An env name with ``=`` or a NUL was accepted by `queue add` and then wedged the daemon in
``starting`` (the exec refused the environment on every tick, the queue never advanced). An
entry is checked when it is added -- from the API or from ``[[queue]]`` -- and refused with what
is wrong and what to do; nothing that cannot start gets into the queue.
Names are not refused for control characters or right-to-left overrides: they are shown
escaped (``safe_text``) wherever they are printed.
"""

from __future__ import annotations

import re
import unicodedata

ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
MAX_NAME = 200


def entry_problem(name: object, command: object, env: object, total_steps: object) -> str | None:
    """None when the entry can run, else one sentence naming what is wrong and the fix. The
    values are unchecked (an API body, a [[queue]] table): each is checked here."""
    if name is not None and (not isinstance(name, str) or len(name) > MAX_NAME or "\0" in name):
        return f"the name must be text of at most {MAX_NAME} characters without NUL"
    if not isinstance(command, list) or not command or not all(isinstance(c, str) for c in command):
        return "a queued run needs a command: nightshift queue add -- python train.py ..."
    if not command[0]:
        return "the command's program (its first word) is empty"
    for i, c in enumerate(command):
        if "\0" in c:
            return f"argument {i} of the command contains a NUL character; remove it"
    if not isinstance(env, dict):
        return "env must be a table of NAME = value"
    for k, v in env.items():
        if not isinstance(k, str) or not ENV_NAME.match(k):
            return (f"env name {safe_text(str(k))!r} is not a variable name (letters, digits and _, "
                    "not starting with a digit; no '=', spaces or NUL): --env NAME=value")
        if not isinstance(v, str) or "\0" in v:
            return f"the value of env {k} must be text without NUL"
    if total_steps is not None and (isinstance(total_steps, bool) or not isinstance(total_steps, int)
                                    or total_steps < 1):
        return "total_steps must be a whole number of at least 1"
    return None


def safe_text(text: str) -> str:
    """``text`` for a terminal: control characters and bidirectional overrides (which can make
    a name display as something else) shown as \\x.. / \\u.... escapes."""
    out = []
    for ch in text:
        cat = unicodedata.category(ch)
        if cat in ("Cc", "Cf", "Zl", "Zp") and ch != " ":
            out.append(f"\\x{ord(ch):02x}" if ord(ch) < 0x100 else f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return "".join(out)
