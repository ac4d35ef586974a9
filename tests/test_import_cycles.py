"""No import cycle in daemon/, type-only imports (under TYPE_CHECKING) included (issue 12); no
cycle between its packages, and each package imports only what its ``__init__`` docstring allows
(issue 30: the folders show the architecture)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _module(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")


def _graph() -> dict[str, set[str]]:
    """Edges as the repo's stop hook counts them: ``from pkg import sub`` is an edge to the
    submodule when every name is one; a submodule importing its own package is not a cycle."""
    mods = {_module(p): p for p in (ROOT / "daemon").rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for mod, path in mods.items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                subs = [f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in mods]
                names = subs if len(subs) == len(node.names) else [node.module, *subs]
            graph[mod] |= {n for n in names if n in mods and n != mod and not mod.startswith(n + ".")}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    found, state = [], {}

    def visit(m: str, stack: list[str]) -> None:
        state[m] = 1
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                found.append(stack[stack.index(n):] + [n])
            elif n not in state:
                visit(n, stack + [n])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    return found


def test_the_finder_sees_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]


def test_daemon_has_no_import_cycle():
    graph = _graph()
    assert "daemon.core.supervisor" in graph and "daemon.policy.supervise" in graph["daemon.core.supervisor"]
    assert _cycles(graph) == []


# What each package's modules may import of daemon/, as its __init__ docstring says (change both
# together). A sub-package counts apart from its parent: gpu/resets/ sits above state/, the rest
# of gpu/ below it. daemon.cli (the package itself) may import all.
BELOW_SERVICE = {"daemon.policy", "daemon.job", "daemon.gpu", "daemon.gpu.sensors",
                 "daemon.gpu.resets", "daemon.cloud", "daemon.cloud.offload", "daemon.night",
                 "daemon.state", "daemon.web", "daemon.core"}
ALLOWED: dict[str, set[str]] = {
    "daemon.job": set(),
    "daemon.policy": {"daemon.job"},  # ExitInfo: how a job ended
    "daemon.gpu.sensors": {"daemon.policy"},  # the config's types, THERMAL_OFF
    "daemon.gpu": {"daemon.policy"},
    "daemon.gpu.resets": {"daemon.gpu", "daemon.policy", "daemon.state"},
    "daemon.state": {"daemon.policy", "daemon.job", "daemon.gpu"},
    "daemon.cloud.offload": {"daemon.job", "daemon.policy"},
    "daemon.cloud": {"daemon.cloud.offload", "daemon.job", "daemon.policy"},
    "daemon.web": {"daemon.state", "daemon.policy"},
    "daemon.night": {"daemon.state", "daemon.policy"},
    "daemon.core": BELOW_SERVICE - {"daemon.core"},
    "daemon.service": BELOW_SERVICE,
    "daemon.commands": BELOW_SERVICE | {"daemon.service"},
    "daemon": BELOW_SERVICE | {"daemon.service", "daemon.commands"},
}


def _package_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    pkgs = {_module(p.parent) for p in (ROOT / "daemon").rglob("__init__.py")}

    def pkg(m: str) -> str:
        return m if m in pkgs else m.rsplit(".", 1)[0]
    out: dict[str, set[str]] = {p: set() for p in pkgs}
    for m, deps in graph.items():
        out[pkg(m)] |= {pkg(d) for d in deps if pkg(d) != pkg(m)}
    return out


def test_daemon_packages_have_no_cycle_and_import_only_what_their_docstrings_allow():
    pg = _package_graph(_graph())
    assert set(pg) == set(ALLOWED), "a package was added or removed: give it a rule here and a docstring"
    assert _cycles(pg) == []
    extra = {p: sorted(deps - ALLOWED[p]) for p, deps in pg.items() if deps - ALLOWED[p]}
    assert extra == {}, f"imports outside the package's rule (its __init__ docstring): {extra}"
    for p in pg:
        doc = ast.get_docstring(ast.parse((ROOT / p.replace(".", "/") / "__init__.py").read_text()))
        assert doc and "import" in doc, f"{p}'s __init__ docstring does not say what it may import"
