"""`gpuos-hintctl`: the parser and the dispatch table; each command lives in its own module.

Adding a command is one row in COMMANDS and one module with an `add_args(parser)`
and a `run(namespace) -> int` (other function names can be given in the row).
The command's module is imported only when that command runs, so a command whose
optional dependency is missing (evaluate without numpy) is still listed by
`--help` and says what to install, with exit 2, instead of vanishing.

Live state comes from the daemon's control socket, and so does history: the
store is the daemon's own (0600), so `spans`, `phases` and `export` ask the
daemon, which answers with what the caller may see (root everything, others
their own processes).  Only when no daemon answers do they read the store
directly, if the caller can.  Every untrusted string is printed through
safe().  Exit codes: 0 ok, 1 daemon not running / store missing, 2 usage error
or a missing optional dependency.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable, Mapping
from typing import NamedTuple

from .. import __version__
from ..config import ENV_STATE_DIR
from ..errors import GpuosError
from .fmt import safe


class Command(NamedTuple):
    """A row of the dispatch table: where a command lives and what it says about itself."""

    module: str
    help: str
    run: str = "run"
    add_args: str = "add_args"
    #: The pip extra that brings the command's optional dependencies (named in the error).
    extra: str | None = None


COMMANDS: dict[str, Command] = {
    "status": Command("gpuos_hintd.cli.status", "daemon health, clients and their open phases, samplers"),
    "spans": Command(
        "gpuos_hintd.cli.history",
        "recorded phase spans with their signals (from the store)",
        run="cmd_spans",
        add_args="spans_args",
    ),
    "phases": Command(
        "gpuos_hintd.cli.history",
        "per-phase summary: count, duration, CPU, GPU, energy (from the store)",
        run="cmd_phases",
        add_args="phases_args",
    ),
    "export": Command(
        "gpuos_hintd.cli.export", "write recorded phases, marks and samples as a Perfetto/Chrome trace (JSON)"
    ),
    "top": Command("gpuos_hintd.cli.top", "live view: daemon health, clients and their open phases, per-phase rates"),
    "evaluate": Command(
        "gpuos_hintd.cli.evaluate",
        "how well OS signals alone find phases, and what hints add (from the store; the eval extra)",
        extra="eval",
    ),
}

#: Global options that take a value (to find the command word before parsing).
_VALUED = ("--control", "--state-dir", "--timeout")
#: Our own packages: an import error naming one of these is a bug, not a missing dependency.
_OWN = ("gpuos_hintd", "gpuos_client")


AddArgs = Callable[[argparse.ArgumentParser], None]
Run = Callable[[argparse.Namespace], int]


class MissingDependency(Exception):
    """A command's module could not be imported because something it needs is not installed."""


def build_parser(loaded: Mapping[str, tuple[AddArgs, Run]] | None = None) -> argparse.ArgumentParser:
    """The parser: every command is listed; only those in `loaded` get their own arguments."""
    p = argparse.ArgumentParser(prog="gpuos-hintctl", description="Look at what gpuos-hintd sees.", allow_abbrev=False)
    p.add_argument("--version", action="version", version=f"gpuos-hintctl {__version__}")
    p.add_argument("--control", help="daemon control endpoint (default: beside the hint socket)")
    p.add_argument("--state-dir", help=f"the daemon's state dir, for history (${ENV_STATE_DIR})")
    p.add_argument("--timeout", type=float, default=2.0, help="seconds to wait for the daemon (default 2)")
    sub = p.add_subparsers(dest="cmd", metavar="COMMAND")
    for name, cmd in COMMANDS.items():
        sp = sub.add_parser(name, help=cmd.help, description=cmd.help)
        if loaded and name in loaded:
            loaded[name][0](sp)
    return p


def load(name: str) -> tuple[AddArgs, Run]:
    """Import one command's module: its (add_args, run), or MissingDependency with the line to print."""
    cmd = COMMANDS[name]
    try:
        mod = importlib.import_module(cmd.module)
    except ImportError as exc:
        dep = (exc.name or "").split(".")[0]
        if dep in _OWN:
            raise  # our own module is broken: that is a bug, show the traceback
        hint = _extra_hint(cmd.extra) if cmd.extra else "install it"
        if isinstance(exc, ModuleNotFoundError) and dep:
            raise MissingDependency(f"gpuos-hintctl {name}: needs {safe(dep)}: {hint}") from None
        raise MissingDependency(f"gpuos-hintctl {name}: cannot load a dependency ({safe(exc)}): {hint}") from None
    return getattr(mod, cmd.add_args), getattr(mod, cmd.run)


def _extra_hint(extra: str) -> str:
    """How to add an extra: gpuos-hint is installed from a checkout or a wheel, not from an index."""
    return (
        f"install the {extra} extra (in the checkout: pip install -e '.[{extra}]'; from a wheel: "
        f"pip install 'gpuos_hint-{__version__}-py3-none-any.whl[{extra}]')"
    )


def command_word(argv: list[str]) -> str | None:
    """The first argument that is not a global option (or its value): the command, if any."""
    it = iter(argv)
    for tok in it:
        if tok == "--":
            return next(it, None)
        if tok in _VALUED:
            next(it, None)
        elif not tok.startswith("-"):
            return tok
    return None


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(sys.argv[1:] if argv is None else argv)
    except BrokenPipeError:
        # `gpuos-hintctl spans | head`: the reader has gone, which is not an error.  Point stdout
        # at /dev/null so that the interpreter's last flush does not raise (and print) again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def _main(argv: list[str]) -> int:
    name = command_word(argv)
    loaded: dict[str, tuple[AddArgs, Run]] = {}
    if name in COMMANDS:
        try:
            loaded[name] = load(name)
        except MissingDependency as exc:
            print(exc, file=sys.stderr)
            return 2
    parser = build_parser(loaded)
    try:
        ns = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, usage errors: flush here, inside main's guard
        sys.stdout.flush()
        raise exc
    if not ns.cmd:
        parser.print_help()
        return 2
    try:
        rc = loaded[ns.cmd][1](ns)
        sys.stdout.flush()  # here, so that a closed pipe is caught below and not at exit
        return rc
    except GpuosError as exc:  # DaemonUnavailable, StoreError, ...
        print(f"gpuos-hintctl: {safe(exc)}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        raise  # a closed pipe is not an error: main() handles it
    except (OSError, ValueError, OverflowError) as exc:  # e.g. an unwritable -o, a bad endpoint
        print(f"gpuos-hintctl: {safe(type(exc).__name__)}: {safe(exc)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
