"""`gpuos-hintctl`: status, spans, phases (and more subcommands as they land).

Live state comes from the daemon's control socket, and so does history: the
store is the daemon's own (0600), so `spans`, `phases` and `export` ask the
daemon, which answers with what the caller may see (root everything, others
their own processes).  Only when no daemon answers do they read the store
directly, if the caller can.  Every untrusted string is printed through
safe().  Exit codes: 0 ok, 1 daemon not running / store missing, 2 usage error.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gpuos_client.config import client_endpoint, control_endpoint_for, ipc_path

from .. import __version__
from ..config import ENV_STATE_DIR, default_state_dir
from ..control import DaemonUnavailable, request
from ..errors import GpuosError, StoreError
from ..store import SpanQuery, open_readonly, phase_table, query_spans
from .fmt import ms, num, pm, safe, table
from .status import render_status

Command = Callable[[argparse.Namespace], int]
COMMANDS: dict[str, tuple[Command, Callable[[argparse.ArgumentParser], None], str]] = {}


def command(name: str, help: str) -> Callable[[Command], Command]:
    def deco(fn: Command) -> Command:
        COMMANDS[name] = (fn, getattr(fn, "_args", lambda p: None), help)
        return fn

    return deco


def args(setup: Callable[[argparse.ArgumentParser], None]) -> Callable[[Command], Command]:
    def deco(fn: Command) -> Command:
        fn._args = setup  # type: ignore[attr-defined]
        return fn

    return deco


def control_endpoint(ns: argparse.Namespace) -> str:
    if ns.control:
        return ns.control
    return control_endpoint_for(client_endpoint())


def state_dir(ns: argparse.Namespace) -> Path:
    if ns.state_dir:
        return Path(ns.state_dir)
    env = os.environ.get(ENV_STATE_DIR)
    return Path(env) if env else default_state_dir()


I64_MAX = (1 << 63) - 1
MAX_LIMIT = 10_000  # the daemon's own bound on one history answer


def parse_since(text: str | None) -> int | None:
    """'90s', '15m', '2h', '1d' ago, or an ISO date/time; as wall-clock ns (clamped to int64)."""
    if not text:
        return None
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    bad = f"gpuos-hintctl: --since {safe(text)!r}: use 90s, 15m, 2h, 1d or an ISO time"
    if text[-1] in units and text[:-1].replace(".", "", 1).isdigit():
        try:
            ago = float(text[:-1]) * units[text[-1]] * 1e9
        except (ValueError, OverflowError):
            raise SystemExit(bad) from None
        return max(time.time_ns() - int(min(ago, 2.0**63)), -I64_MAX)
    from datetime import datetime

    try:
        return max(min(int(datetime.fromisoformat(text).timestamp() * 1e9), I64_MAX), -I64_MAX)
    except (ValueError, OverflowError, OSError):
        raise SystemExit(bad) from None


def pid_arg(text: str) -> int:
    """A --pid value: an integer that can be a pid (argparse reports anything else as a usage error)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{safe(text)!r} is not a pid") from None
    if not 0 < value < 1 << 31:
        raise argparse.ArgumentTypeError(f"{value} is not a pid (1..2^31-1)")
    return value


def limit_arg(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{safe(text)!r} is not a number") from None
    if not 1 <= value <= MAX_LIMIT:
        raise argparse.ArgumentTypeError(f"{value}: use 1..{MAX_LIMIT}")
    return value


def history(ns: argparse.Namespace, op: str, local: Callable[[Any], Any], **query: Any) -> Any:
    """A history answer: from the daemon (any user, disclosure applied), else from the store directly.

    The store is read directly only when no daemon answers and the caller may
    read it (root, or a daemon of the caller's own); otherwise one clear line.
    """
    endpoint = None
    try:
        endpoint = control_endpoint(ns)
    except ValueError:
        pass
    sock = ipc_path(endpoint) if endpoint else None
    if endpoint is not None and not ns.state_dir and (sock is None or sock.exists()):
        try:
            request(endpoint, "ping", timeout_s=ns.timeout)  # alive? (a stale socket costs --timeout)
            # The answer itself may take the daemon's bound on a query (export: 5 s).
            return request(endpoint, op, timeout_s=max(ns.timeout, 10.0), **query)
        except DaemonUnavailable:
            pass
    path = state_dir(ns)
    try:
        conn = open_readonly(path)
    except StoreError as exc:
        raise StoreError(f"no daemon answered and {exc}") from None
    except PermissionError:
        raise StoreError(
            f"no daemon answered on {endpoint or '(no control endpoint)'} and the store in {path} is not "
            "readable by you; start the daemon (history comes through it) or run as its user"
        ) from None
    try:
        return local(conn)
    except Exception as exc:  # sqlite3.Error, OSError on an unreadable file
        raise StoreError(f"cannot read the store in {path}: {exc}") from None
    finally:
        conn.close()


def _print_json(obj: Any) -> None:
    json.dump(obj, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")


# ------------------------------------------------------------------- status
def _status_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="machine-readable output")


@command("status", "daemon health, clients and their open phases, samplers")
@args(_status_args)
def cmd_status(ns: argparse.Namespace) -> int:
    st = request(control_endpoint(ns), "status", timeout_s=ns.timeout)
    if ns.json:
        _print_json(st)
    else:
        print(render_status(st))
    return 0


# -------------------------------------------------------------------- spans
SPAN_COLUMNS = ("cpu_pct", "ctx_vol", "gpu_util_pct_mean", "gpu_power_mw_mean", "gpu_energy_j")


def _spans_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pid", type=pid_arg, help="only this process")
    p.add_argument("--name", help="only this phase name or path (e.g. decode or prefill/attn)")
    p.add_argument("--since", help="only spans that began since (90s, 15m, 2h, 1d, or ISO time)")
    p.add_argument("--status", choices=["ok", "error", "abandoned", "lost_end", "interrupted"])
    p.add_argument(
        "--limit", type=limit_arg, default=50, help=f"at most this many, newest first (default 50, max {MAX_LIMIT})"
    )
    p.add_argument("--json", action="store_true", help="machine-readable output (all signals)")


@command("spans", "recorded phase spans with their signals (from the store)")
@args(_spans_args)
def cmd_spans(ns: argparse.Namespace) -> int:
    since = parse_since(ns.since)  # bad arguments are reported before anything is opened
    q = SpanQuery(ns.pid, ns.name, since, ns.status, ns.limit)
    rows = history(
        ns,
        "spans",
        lambda conn: query_spans(conn, q),
        pid=ns.pid,
        name=ns.name,
        since_wall_ns=since,
        status=ns.status,
        limit=ns.limit,
    )
    if ns.json:
        _print_json(rows)
        return 0
    if not rows:
        print("no spans match")
        return 0
    out = []
    for r in reversed(rows):
        s = r["signals"]
        dev = ms(r["dev_end_ns"] - r["dev_start_ns"]) if r.get("dev_start_ns") else "-"
        out.append(
            [
                r["pid"],
                r["tid"],
                r["path"],
                r.get("workload_class") or "-",
                ms(r["duration_ns"]),
                dev,
                r["status"] + ("*" if r["estimated"] else ""),
                num(s.get("cpu_pct")),
                _thread_cpu(s),
                num(s.get("ctx_vol")),
                num(s.get("gpu_util_pct_mean")),
                num(s["gpu_power_mw_mean"] / 1000 if s.get("gpu_power_mw_mean") is not None else None),
                pm(s.get("gpu_energy_j"), s.get("gpu_energy_err_j"), 3),
                thread_state(s),
            ]
        )
    print(
        table(
            [
                "PID",
                "TID",
                "PHASE",
                "CLASS",
                "HOST MS",
                "DEV MS",
                "STATUS",
                "CPU %",
                "THREAD CPU MS",
                "CTXSW",
                "GPU %",
                "POWER W",
                "ENERGY J",
                "THREAD STATE",
            ],
            out,
            "rr  rr rrrrrr ",
        )
    )
    if any(r["estimated"] for r in rows):
        print(
            "* estimated: some figures are interpolated, not measured - the span was shorter than the "
            "sampling period, or began before the daemon sampled its process (e.g. across a daemon restart)"
        )
    if any(r["signals"].get("cpu_exact") is False and "proc_cpu_ns" not in r["signals"] for r in rows):
        print("~ thread CPU interpolated from samples (no edge readings): the ± is its bound")
    return 0


def _thread_cpu(s: dict[str, Any]) -> str:
    """Thread CPU in ms with its bound; '~' marks a figure interpolated from samples."""
    v = s.get("thread_cpu_ns")
    if v is None:
        return "-"
    err = s.get("thread_cpu_ns_err")
    text = pm(v / 1e6, err / 1e6 if err is not None else None, 3)
    return text + ("~" if s.get("cpu_exact") is False and "proc_cpu_ns" not in s else "")


#: The syscalls sampler's per-thread states, as shown in the THREAD STATE column.
THREAD_STATES = (
    ("run", "thread_running_mean"),
    ("gpu", "thread_in_gpu_ioctl_mean"),
    ("sync", "thread_in_sync_wait_mean"),
    ("io", "thread_in_io_mean"),
)


def thread_state(signals: dict[str, Any]) -> str:
    """Where the phase's thread was, from the syscall sampler: e.g. 'sync 70% run 30%'."""
    parts = [(signals.get(key), label) for label, key in THREAD_STATES]
    parts = [(v, label) for v, label in parts if isinstance(v, int | float) and v > 0.005]
    if not parts:
        return "-"
    return " ".join(f"{label} {v * 100:.0f}%" for v, label in sorted(parts, reverse=True)[:3])


def _phases_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--since", help="only spans that began since (90s, 15m, 2h, 1d, or ISO time)")
    p.add_argument("--json", action="store_true", help="machine-readable output")


@command("phases", "per-phase summary: count, duration, CPU, GPU, energy (from the store)")
@args(_phases_args)
def cmd_phases(ns: argparse.Namespace) -> int:
    since = parse_since(ns.since)
    rows = history(ns, "phases", lambda conn: phase_table(conn, since), since_wall_ns=since)
    if ns.json:
        _print_json(rows)
        return 0
    if not rows:
        print("no spans recorded yet")
        return 0
    out = [
        [
            r["name"],
            r.get("workload_class") or "-",
            r["count"],
            r["abandoned"] or "",
            ms(r["mean_ns"]),
            ms(r["min_ns"]),
            ms(r["max_ns"]),
            ms(r["total_ns"]),
            ms(r["dev_mean_ns"]) if r.get("dev_count") else "-",
            num(r.get("cpu_pct")),
            pm(
                r["thread_cpu_total_ns"] / 1e6 if r.get("thread_cpu_total_ns") is not None else None,
                r["thread_cpu_total_err_ns"] / 1e6 if r.get("thread_cpu_total_err_ns") is not None else None,
            ),
            num(r.get("ctx_vol")),
            num(r.get("gpu_util_pct_mean")),
            num(r["gpu_power_mw_mean"] / 1000 if r.get("gpu_power_mw_mean") is not None else None),
            pm(r.get("gpu_energy_j"), r.get("gpu_energy_err_j"), 3),
            _fit_power(r.get("energy_fit")),
            _fit_energy(r),
        ]
        for r in rows
    ]
    print(
        table(
            [
                "PHASE",
                "CLASS",
                "COUNT",
                "ABANDONED",
                "MEAN MS",
                "MIN MS",
                "MAX MS",
                "TOTAL MS",
                "DEV MS",
                "CPU %",
                "THREAD CPU MS",
                "CTXSW",
                "GPU %",
                "POWER W",
                "ENERGY J",
                "FIT W (95% CI)",
                "FIT J/SPAN",
            ],
            out,
            "  rrrrrrrrrrrrrrr",
        )
    )
    if any(r.get("energy_fit") for r in rows):
        print(
            "FIT: per-phase power from NNLS of power-sample window energy on each phase's share of the"
            " window, across repetitions (bootstrap 95% CI); FIT J/SPAN = FIT W x mean device (else host) time"
        )
    return 0


def _fit_power(f: dict[str, Any] | None) -> str:
    if not f:
        return "-"
    lo, hi = f["ci_w"]
    return f"{f['power_w']:,.0f} ({lo:,.0f}-{hi:,.0f})"


def _fit_energy(r: dict[str, Any]) -> str:
    f = r.get("energy_fit")
    if not f:
        return "-"
    t = r.get("dev_mean_ns") if r.get("dev_count") else r.get("mean_ns")
    if not t:
        return "-"
    lo, hi = f["ci_w"]
    s = t / 1e9
    return pm(f["power_w"] * s, max(f["power_w"] - lo, hi - f["power_w"]) * s, 3)


# --------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gpuos-hintctl", description="Look at what gpuos-hintd sees.")
    p.add_argument("--version", action="version", version=f"gpuos-hintctl {__version__}")
    p.add_argument("--control", help="daemon control endpoint (default: beside the hint socket)")
    p.add_argument("--state-dir", help=f"the daemon's state dir, for history (${ENV_STATE_DIR})")
    p.add_argument("--timeout", type=float, default=2.0, help="seconds to wait for the daemon (default 2)")
    sub = p.add_subparsers(dest="cmd", metavar="COMMAND")
    for name, (_fn, setup, help_text) in COMMANDS.items():
        sp = sub.add_parser(name, help=help_text, description=help_text)
        setup(sp)
    return p


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(argv)
    except BrokenPipeError:
        # `gpuos-hintctl spans | head`: the reader has gone, which is not an error.  Point stdout
        # at /dev/null so that the interpreter's last flush does not raise (and print) again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def _main(argv: list[str] | None) -> int:
    _load_plugins()
    parser = build_parser()
    try:
        ns = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, usage errors: flush here, inside main's guard
        sys.stdout.flush()
        raise exc
    if not ns.cmd:
        parser.print_help()
        return 2
    try:
        rc = COMMANDS[ns.cmd][0](ns)
        sys.stdout.flush()  # here, so that a closed pipe is caught below and not at exit
        return rc
    except DaemonUnavailable as exc:
        print(f"gpuos-hintctl: {safe(exc)}", file=sys.stderr)
        return 1
    except GpuosError as exc:
        print(f"gpuos-hintctl: {safe(exc)}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        raise  # a closed pipe is not an error: main() handles it
    except (OSError, ValueError, OverflowError) as exc:  # e.g. an unwritable -o, a bad endpoint
        print(f"gpuos-hintctl: {safe(type(exc).__name__)}: {safe(exc)}", file=sys.stderr)
        return 1


def _load_plugins() -> None:
    """Subcommands living in their own modules register themselves on import."""
    import importlib

    # Under `python -m gpuos_hintd.cli.main` this module is __main__: let plugins register into it.
    sys.modules.setdefault(f"{__package__}.main", sys.modules[__name__])
    for mod in ("export", "top", "evaluate"):
        try:
            importlib.import_module(f"{__package__}.{mod}")
        except ImportError as exc:
            if mod == "evaluate" and "evaluate" not in COMMANDS:
                _evaluate_missing(exc.name or str(exc))


def _evaluate_missing(module: str) -> None:
    """`evaluate` without its dependencies: still listed, and it says what to install."""

    def missing(ns: argparse.Namespace) -> int:
        print(
            f"gpuos-hintctl evaluate needs {module}: install the eval extra "
            f"(in the checkout: pip install -e '.[eval]'; from a wheel: "
            f"pip install 'gpuos_hint-{__version__}-py3-none-any.whl[eval]')",
            file=sys.stderr,
        )
        return 1

    def swallow(p: argparse.ArgumentParser) -> None:
        p.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)

    COMMANDS["evaluate"] = (missing, swallow, f"how well OS signals alone find phases (needs {module}: the eval extra)")


if __name__ == "__main__":
    sys.exit(main())
