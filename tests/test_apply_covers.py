"""Every decision type has its handler in ``Supervisor._apply``: a rule that returns a decision
no branch carries out would be dropped without a word (the chain of isinstance branches has no
"else"). Read from the source: the Decision union (daemon/core/decisions.py) plus the remote
run's own actions (Seen, End) against the types ``_apply`` tests for. A part that carries out
its own decisions (``Holds``, ``capping``) declares them as ``CARRIES``: ``_apply`` hands over
``isinstance(a, X.CARRIES)`` and X's ``carry`` must have a branch for each of them.
``LaunchRemote`` is the one exception: the launch is awaited and ``_apply`` is not async, so the
exit that returns it (``Supervisor._on_exit``) launches itself."""

from __future__ import annotations

import ast
import inspect
import textwrap
from typing import get_args

from daemon.core import supervisor as supervisor_mod
from daemon.core.decisions import Decision
from daemon.core.remote_run import Action
from daemon.core.supervisor import Supervisor


def _isinstance_kinds(fn: object) -> tuple[set[str], list[ast.Attribute]]:
    """The type names a function's isinstance calls test, and the ``X.CARRIES`` it hands over."""
    names: set[str] = set()
    carried: list[ast.Attribute] = []
    for node in ast.walk(ast.parse(textwrap.dedent(inspect.getsource(fn)))):  # type: ignore[arg-type]
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "isinstance":
            kinds = node.args[1]
            for k in kinds.elts if isinstance(kinds, ast.Tuple) else [kinds]:
                if isinstance(k, ast.Attribute) and k.attr == "CARRIES":
                    carried.append(k)
                else:
                    names.add(k.id)  # type: ignore[attr-defined]
    return names, carried


def test_every_decision_and_remote_action_is_carried_out_by_apply():
    handled, carried = _isinstance_kinds(Supervisor._apply)
    assert carried, "_apply hands no decision to a part: Holds and capping carry their own"
    for ref in carried:
        part = eval(ast.unparse(ref.value), vars(supervisor_mod))  # a name in supervisor.py: Holds, capping
        kinds = {t.__name__ for t in part.CARRIES}
        in_carry, _ = _isinstance_kinds(part.carry)
        assert kinds - in_carry == set(), f"{ast.unparse(ref.value)}.carry has no branch for these"
        handled |= kinds
    wanted = {t.__name__ for t in (*get_args(Decision), *get_args(Action))} - {"LaunchRemote"}
    assert "LaunchRemote()" in inspect.getsource(Supervisor._on_exit)
    assert wanted - handled == set(), "decisions no branch of Supervisor._apply carries out"
    assert handled - wanted == set(), "branches for types that are no decision"
