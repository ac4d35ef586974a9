"""Every decision type has its handler in ``Supervisor._apply``: a rule that returns a decision
no branch carries out would be dropped without a word (the chain of isinstance branches has no
"else"). Read from the source: the Decision union (daemon/core/decisions.py) plus the remote
run's own actions (Seen, End) against the types ``_apply`` tests for. ``LaunchRemote`` is the
one exception: the launch is awaited and ``_apply`` is not async, so the exit that returns it
(``Supervisor._on_exit``) launches itself."""

from __future__ import annotations

import ast
import inspect
import textwrap
from typing import get_args

from daemon.core.decisions import Decision
from daemon.core.remote_run import Action
from daemon.core.supervisor import Supervisor


def test_every_decision_and_remote_action_is_carried_out_by_apply():
    tree = ast.parse(textwrap.dedent(inspect.getsource(Supervisor._apply)))
    handled: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "isinstance":
            kinds = node.args[1]
            for k in kinds.elts if isinstance(kinds, ast.Tuple) else [kinds]:
                handled.add(k.id)  # type: ignore[attr-defined]
    wanted = {t.__name__ for t in (*get_args(Decision), *get_args(Action))} - {"LaunchRemote"}
    assert "LaunchRemote()" in inspect.getsource(Supervisor._on_exit)
    assert wanted - handled == set(), "decisions no branch of Supervisor._apply carries out"
    assert handled - wanted == set(), "branches for types that are no decision"
