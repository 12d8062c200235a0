"""Import rules (STYLE.md 1): the client never imports the daemon, the CLI reaches the daemon
only through the control socket and the read-only store, and the core knows no transport."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = "." * node.level + (node.module or "")
            out.add(base)
    return out


def test_client_never_imports_the_daemon_or_heavy_deps():
    for f in (REPO / "client/gpuos_client").glob("*.py"):
        for mod in imports(f):
            assert not mod.startswith("gpuos_hintd"), f"{f.name} imports {mod}"
            top = mod.lstrip(".").split(".")[0]
            assert top not in {"psutil", "structlog", "pynvml", "numpy", "torch"}, f"{f.name} imports {mod}"


def test_cli_uses_only_control_store_and_config():
    # ..evaluate is offline analysis over the read-only store (checked below), not live daemon state.
    allowed = {
        "..",
        "..config",
        "..control",
        "..errors",
        "..store",
        ".fmt",
        ".files",
        ".main",
        "..procfs",
        "..evaluate",
        "..safetext",  # a pure function (terminal escaping) shared with the console log
    }
    for f in (REPO / "daemon/gpuos_hintd/cli").glob("*.py"):
        for mod in imports(f):
            if mod.startswith("."):
                assert mod in allowed, f"cli/{f.name} imports daemon internals {mod}"


def test_core_knows_no_transport():
    for name in ("service.py", "correlate.py", "clients.py", "store.py", "phase_stats.py"):
        mods = imports(REPO / "daemon/gpuos_hintd" / name)
        assert "zmq" not in mods and ".server" not in mods, f"{name} imports a transport"


def test_evaluation_reads_only_the_store_and_sampler_metadata():
    allowed_prefixes = ("..store", "..errors", "..samplers", ".")
    for f in (REPO / "daemon/gpuos_hintd/evaluate").glob("*.py"):
        for mod in imports(f):
            if mod.startswith("."):
                assert mod.startswith(allowed_prefixes) and mod not in ("..service", "..server"), (
                    f"evaluate/{f.name} imports {mod}"
                )
