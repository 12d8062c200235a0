"""The house's import rules (docs/design.md, "The house"), checked on the code's own import graph.

The graph is read with ast from every module of gpuos_hintd: relative and absolute
(``gpuos_hintd.x``) imports, at module level and inside functions and TYPE_CHECKING
blocks alike (a lazy import is still a dependency), plus the modules that are
loaded by name from a table (cli/main.py's COMMANDS, samplers/registry.py's
SAMPLERS).  Each rule's message says what to do instead.

``python tests/test_layering.py`` prints the graph as floors (docs/structure.md).
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterable
from functools import cache
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DAEMON = REPO / "daemon"
CLIENT = REPO / "client"
PKG = "gpuos_hintd"

#: The core: the daemon's state and arithmetic, with no transport, no plugins and no SQL.
CORE = {
    "service",
    "correlate",
    "clients",
    "sampling",
    "phase_stats",
    "edge_cpu",
    "power_series",
    "phase_energy",
    "model",
}
#: What of samplers/ the core may name: the plugin interface, and only in the two modules that run
#: plugins.  The registry (which sampler classes exist) is main.py's: it builds them and hands them in.
CORE_MAY_USE_SAMPLERS = {"service": {"Sampler", "NullSampler"}, "sampling": {"Sampler", "NullSampler"}}
#: The live daemon: what the CLI, samplers/ and store/ must never reach into.
LIVE = {"service", "server", "correlate", "clients", "sampling", "metrics", "main"}


# ------------------------------------------------------------------ the graph
def module_files(root: Path, pkg: str) -> dict[str, Path]:
    """{dotted module name: file} for a package (a package is named by its __init__.py)."""
    out = {}
    for f in sorted((root / pkg).rglob("*.py")):
        parts = f.relative_to(root).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = f
    return out


@cache
def modules() -> dict[str, Path]:
    return module_files(DAEMON, PKG)


def _resolve(importer: str, node: ast.ImportFrom) -> str:
    """The absolute module an ImportFrom names (before its imported names)."""
    if not node.level:
        return node.module or ""
    is_pkg = modules()[importer].name == "__init__.py"
    base = importer.split(".")
    base = base if is_pkg else base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports_of(name: str, source: str | None = None) -> list[tuple[str, set[str], int]]:
    """(absolute module, names imported from it, line) for every import in one module, at any depth."""
    out: list[tuple[str, set[str], int]] = []
    tree = ast.parse(modules()[name].read_text() if source is None else source)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, set(), node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(name, node)
            names = {a.name for a in node.names}
            # `from . import x` / `from .samplers import registry`: x may be a module of its own, and
            # then the edge goes to it (the package's __init__ runs first anyway, like every parent's).
            subs = {n for n in names if f"{base}.{n}" in modules()}
            out += [(f"{base}.{n}", set(), node.lineno) for n in sorted(subs)]
            if names - subs:
                out.append((base, names - subs, node.lineno))
    return out


def _by_name_loads(name: str) -> set[str]:
    """Modules a table loads by name: cli/main.py's COMMANDS, samplers/registry.py's SAMPLERS."""
    if name == f"{PKG}.cli.main":
        from gpuos_hintd.cli.main import COMMANDS

        return {c.module for c in COMMANDS.values()}
    if name == f"{PKG}.samplers.registry":
        from gpuos_hintd.samplers.registry import SAMPLERS

        return {f"{PKG}.samplers.{m}" for m, _cls in SAMPLERS.values()}
    return set()


@cache
def graph() -> dict[str, set[str]]:
    """{module: the daemon modules it imports}.  A package's own __init__ runs first anyway and
    only hands names on, so an edge to an enclosing package is kept only when names come from it."""
    g: dict[str, set[str]] = {}
    for name in modules():
        deps = {m for m, _n, _l in imports_of(name) if m in modules() and m != name}
        deps |= _by_name_loads(name)
        g[name] = deps
    return g


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(g.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(g):
        if v not in index:
            visit(v)
    return out


def floors(g: dict[str, set[str]]) -> dict[str, int]:
    """Floor 1 imports no daemon module; every other module stands one above the highest it imports."""
    memo: dict[str, int] = {}

    def floor(v: str, seen: frozenset[str] = frozenset()) -> int:
        if v not in memo:
            deps = [d for d in g[v] if d not in seen]
            memo[v] = 1 + max((floor(d, seen | {v}) for d in deps), default=0)
        return memo[v]

    return {v: floor(v) for v in g}


def short(name: str) -> str:
    return name.removeprefix(f"{PKG}.")


def where(module: str) -> str:
    return str(modules()[module].relative_to(REPO))


def is_in(module: str, *places: str) -> bool:
    """Whether `module` is one of `places` (short names) or inside one of them."""
    s = short(module)
    return any(s == p or s.startswith(p + ".") for p in places)


# ------------------------------------------------------------------ rules
#: Cycles that a change in flight removes: edges left out of the cycle check until then (none now).
PENDING_EDGES: dict[tuple[str, str], str] = {}


def test_the_graph_sees_imports_of_every_form():
    """The reader itself: relative, absolute, function-level, TYPE_CHECKING and by-name imports are edges."""
    src = (
        "from typing import TYPE_CHECKING\n"
        "from ..control import request\n"
        "from . import fmt\n"
        "if TYPE_CHECKING:\n"
        "    from ..store import Store\n"
        "def f():\n"
        "    from gpuos_hintd.service import HintService\n"
        "    import gpuos_hintd.correlate\n"
    )
    found = {m for m, _n, _l in imports_of(f"{PKG}.cli.status", src)}
    assert {f"{PKG}.control", f"{PKG}.cli.fmt", f"{PKG}.store", f"{PKG}.service", f"{PKG}.correlate"} <= found
    assert f"{PKG}.cli" not in found  # `from . import fmt` is an edge to fmt, not to the package
    g = graph()
    assert f"{PKG}.cli.status" in g[f"{PKG}.cli.main"]  # by name, from the COMMANDS table
    assert f"{PKG}.samplers.nvml" in g[f"{PKG}.samplers.registry"]  # by name, from SAMPLERS
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycles():
    g = {v: {w for w in deps if (v, w) not in PENDING_EDGES} for v, deps in graph().items()}
    found = cycles(g)
    assert not found, (
        "import cycles among daemon modules (function-level imports count too, so a lazy import is no "
        "fix): move the names both sides need into a module below both (model.py for the nouns), or "
        "pass the dependency in:\n"
        + "\n".join("  " + " <-> ".join(short(m) for m in c) + "\n" + _cycle_edges(c, g) for c in found)
    )


def _cycle_edges(comp: list[str], g: dict[str, set[str]]) -> str:
    lines = []
    for v in comp:
        for m, names, line in imports_of(v):
            if m in comp and m != v and m in g[v]:
                lines.append(f"    {where(v)}:{line} imports {short(m)} {sorted(names) or ''}")
    return "\n".join(lines)


def _offences(importers: Iterable[str], bad) -> list[str]:
    out = []
    for v in importers:
        for m, names, line in imports_of(v):
            why = bad(v, m, names)
            if why:
                out.append(f"  {where(v)}:{line}: {short(v)} imports {m} {sorted(names) or ''}: {why}")
    return out


def test_the_core_imports_no_plugins():
    def bad(v: str, m: str, names: set[str]) -> str | None:
        if not is_in(m, "samplers"):
            return None
        allowed = CORE_MAY_USE_SAMPLERS.get(short(v), set())
        if short(m) == "samplers.base" and names and names <= allowed:
            return None
        return (
            "the core stands on model.py, not on samplers/: take nouns (ProcKey, Metric, ProcSample...) "
            "from model.py; only service.py and sampling.py may name samplers.base.Sampler/NullSampler, and "
            "the registry is main.py's (it builds the samplers and hands them to HintService)"
        )

    offences = _offences((f"{PKG}.{c}" for c in CORE), bad)
    assert not offences, "the core imports the plugins:\n" + "\n".join(offences)


def _store_public() -> set[str]:
    """The names the store offers: its __all__ (or, without one, what does not start with '_')."""
    store = modules()[f"{PKG}.store"]
    tree = ast.parse(store.read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "__all__" for t in node.targets):
            return set(ast.literal_eval(node.value))
    import importlib
    import inspect

    store_mod = importlib.import_module(f"{PKG}.store")
    return {
        n
        for n, obj in vars(store_mod).items()
        if not n.startswith("_")
        and not inspect.ismodule(obj)
        and str(getattr(obj, "__module__", PKG)).startswith(PKG)  # its own, or the model's re-exported
    }


def test_the_store_offers_a_declared_public_face():
    assert (DAEMON / PKG / "store" / "__init__.py").is_file(), "the store is a package: store/__init__.py"
    store = ast.parse(modules()[f"{PKG}.store"].read_text())
    assert any(
        isinstance(n, ast.Assign) and any(getattr(t, "id", None) == "__all__" for t in n.targets) for n in store.body
    ), "store/__init__.py declares __all__: the names the rest of the daemon may use"


def test_the_core_uses_only_the_stores_public_names_and_no_sql():
    public = _store_public()

    def bad(v: str, m: str, names: set[str]) -> str | None:
        if m.split(".")[0] == "sqlite3":
            return "no SQL in the core: the store owns every query (add a function to the store's public API)"
        if not is_in(m, "store"):
            return None
        if short(m) != "store":
            return "import the store package (gpuos_hintd.store), not its modules: its internals may move"
        hidden = names - public
        if hidden:
            return f"{sorted(hidden)} are not among the store's public names ({sorted(public)}): export them or pass data in"
        return None

    offences = _offences((f"{PKG}.{c}" for c in CORE), bad)
    assert not offences, "the core reaches into persistence:\n" + "\n".join(offences)


def test_model_imports_only_the_standard_library():
    offences = []
    for m, _names, line in imports_of(f"{PKG}.model"):
        top = m.split(".")[0]
        if top != "__future__" and top not in sys.stdlib_module_names:
            offences.append(f"  {where(PKG + '.model')}:{line} imports {m}")
    assert not offences, (
        "model.py is the vocabulary every layer stands on: standard library only (a noun that needs more "
        "belongs to the module that gives it behaviour):\n" + "\n".join(offences)
    )


def test_plugins_and_persistence_never_import_the_live_daemon():
    importers = [v for v in modules() if is_in(v, "samplers", "store")]

    def bad(v: str, m: str, names: set[str]) -> str | None:
        if m.startswith(PKG + ".") and is_in(m, *LIVE, "cli"):
            return (
                "samplers/ and store/ sit below the core: take what you need as arguments, or move the "
                "shared names to model.py"
            )
        return None

    offences = _offences(importers, bad)
    assert not offences, "a plugin or the store imports the live daemon:\n" + "\n".join(offences)


def test_the_cli_reaches_the_daemon_only_through_control_and_the_store():
    importers = [v for v in modules() if is_in(v, "cli")]

    def bad(v: str, m: str, names: set[str]) -> str | None:
        if m.startswith(PKG + ".") and is_in(m, *LIVE):
            return (
                "gpuos-hintctl runs beside the daemon, not in it: ask the daemon over the control socket "
                "(control.request) or read the store's public API"
            )
        if m.split(".")[0] == "zmq":
            return "the CLI talks to the daemon through control.py, which owns the socket"
        return None

    offences = _offences(importers, bad)
    assert not offences, "the CLI imports the live daemon:\n" + "\n".join(offences)


def test_nothing_outside_the_cli_imports_it():
    importers = [v for v in modules() if not is_in(v, "cli")]
    offences = _offences(
        importers,
        lambda v, m, n: (
            "cli/ is the top of the house (gpuos-hintctl): move what both need below both"
            if m.startswith(PKG + ".") and is_in(m, "cli")
            else None
        ),
    )
    assert not offences, "\n".join(offences)


def test_cli_commands_do_not_import_the_dispatcher():
    """cli/main.py imports its commands (by name); a command importing main back is the old loop."""
    importers = [v for v in modules() if is_in(v, "cli") and v != f"{PKG}.cli.main"]
    offences = _offences(
        importers,
        lambda v, m, n: "shared helpers live in cli/_common.py" if m == f"{PKG}.cli.main" else None,
    )
    assert not offences, "\n".join(offences)


def test_the_core_knows_no_transport():
    def bad(v: str, m: str, names: set[str]) -> str | None:
        if m.split(".")[0] in ("zmq", "prometheus_client", "http") or is_in(m, "server", "metrics", "export"):
            return "the core is transport-free: the edge (server.py, metrics.py, export/) calls it, not the reverse"
        return None

    offences = _offences((f"{PKG}.{c}" for c in CORE), bad)
    assert not offences, "\n".join(offences)


# The integrations (issue 11) import torch/transformers inside the functions a program calls once it
# has those libraries; at module level they import neither (and a subprocess test checks sys.modules).
INTEGRATIONS = {"torch.py", "hf.py"}
HEAVY = {"psutil", "structlog", "pynvml", "numpy", "torch", "transformers"}


def _client_imports(f: Path, module_level_only: bool) -> set[str]:
    tree = ast.parse(f.read_text())
    if module_level_only:
        tree = ast.Module(
            body=[n for n in tree.body if not isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))],
            type_ignores=[],
        )
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            out.add("." * node.level + (node.module or ""))
    return out


def test_client_never_imports_the_daemon_or_heavy_deps():
    for f in (CLIENT / "gpuos_client").rglob("*.py"):
        if "build" in f.relative_to(CLIENT).parts:
            continue
        lazy_ok = f.name in INTEGRATIONS and f.parent.name == "gpuos_client"
        for mod in _client_imports(f, module_level_only=False):
            assert not mod.startswith(PKG), f"{f.name} imports {mod}: the client never imports the daemon"
            top = mod.split(".")[0]  # a relative import ("." or ".torch") has an empty top
            assert lazy_ok or top not in HEAVY, f"{f.name} imports {mod}: the client needs only pyzmq and msgpack"
        for mod in _client_imports(f, module_level_only=True):
            assert mod.split(".")[0] not in HEAVY, f"{f.name} imports {mod} at module level: import it where used"


def test_evaluation_reads_only_the_store_and_sampler_metadata():
    importers = [v for v in modules() if is_in(v, "evaluate")]

    def bad(v: str, m: str, names: set[str]) -> str | None:
        if m.startswith(PKG + ".") and not is_in(m, "evaluate", "store", "errors", "model", "samplers", "nnls"):
            return "the offline evaluation reads the store (and sampler metadata), never the live daemon"
        return None

    offences = _offences(importers, bad)
    assert not offences, "\n".join(offences)


if __name__ == "__main__":  # the floors, for docs/structure.md
    g = graph()
    fl = floors(g)
    for n in range(max(fl.values()), 0, -1):
        names = sorted(short(v) for v, f in fl.items() if f == n)
        print(f"{n:2d}  " + "  ".join(names))
    print(f"\n{len(g)} modules, {sum(map(len, g.values()))} import edges, cycles: {cycles(g) or 'none'}")
