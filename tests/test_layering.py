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


def module_level_imports(path: Path) -> set[str]:
    """Imports executed when the module is imported (not those inside functions)."""
    tree = ast.parse(path.read_text())
    body = ast.Module(
        body=[n for n in tree.body if not isinstance(n, (ast.FunctionDef, ast.ClassDef))], type_ignores=[]
    )
    out: set[str] = set()
    for node in ast.walk(body):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            out.add("." * node.level + (node.module or ""))
    return out


# The integrations (issue 11) import torch/transformers inside the functions a program calls once it
# has those libraries; at module level they import neither (and a subprocess test checks sys.modules).
INTEGRATIONS = {"torch.py", "hf.py"}
HEAVY = {"psutil", "structlog", "pynvml", "numpy", "torch", "transformers"}


def test_client_never_imports_the_daemon_or_heavy_deps():
    for f in (REPO / "client/gpuos_client").rglob("*.py"):
        lazy_ok = f.name in INTEGRATIONS and f.parent.name == "gpuos_client"
        for mod in imports(f):
            assert not mod.startswith("gpuos_hintd"), f"{f.name} imports {mod}"
            top = mod.split(".")[0]  # a relative import ("." or ".torch") has an empty top
            assert lazy_ok or top not in HEAVY, f"{f.name} imports {mod}"
        for mod in module_level_imports(f):
            assert mod.split(".")[0] not in HEAVY, f"{f.name} imports {mod} at module level"


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
    store = [f"store/{f.name}" for f in (REPO / "daemon/gpuos_hintd/store").glob("*.py")]
    for name in ("service.py", "correlate.py", "clients.py", "phase_stats.py", *store):
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
