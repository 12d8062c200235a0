"""`gpuos-hintctl`: status, spans, phases (and more subcommands as they land).

Live state comes from the daemon's control socket; history from the SQLite
store opened read-only, so `spans` and `phases` work with the daemon down.
Exit codes: 0 ok, 1 daemon not running / store missing, 2 usage error.
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

from gpuos_client.config import client_endpoint, control_endpoint_for

from .. import __version__
from ..config import ENV_STATE_DIR, default_state_dir
from ..control import DaemonUnavailable, request
from ..errors import GpuosError
from ..store import SpanQuery, open_readonly, phase_summary, query_spans
from .fmt import duration, ms, num, table

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


def parse_since(text: str | None) -> int | None:
    """'90s', '15m', '2h', '1d' ago, or an ISO date/time; as wall-clock ns."""
    if not text:
        return None
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    if text[-1] in units and text[:-1].replace(".", "", 1).isdigit():
        return time.time_ns() - int(float(text[:-1]) * units[text[-1]] * 1e9)
    from datetime import datetime

    try:
        return int(datetime.fromisoformat(text).timestamp() * 1e9)
    except ValueError:
        raise SystemExit(f"gpuos-hintctl: --since {text!r}: use 90s, 15m, 2h, 1d or an ISO time") from None


def _print_json(obj: Any) -> None:
    json.dump(obj, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")


# ------------------------------------------------------------------- status
def render_status(st: dict[str, Any]) -> str:
    d, c = st["daemon"], st["counters"]
    lines = [
        f"gpuos-hintd {d['version']}  pid {d['pid']}  up {duration(d['uptime_s'])}  sampling {d['sample_hz']:g} Hz",
        f"  endpoint {d['endpoint']}",
        f"  store    {(st.get('store') or {}).get('path', '-')}",
        f"  events {c.get('events', 0):,}  spans closed {c.get('spans_closed', 0):,}  "
        f"rejected {c.get('rejected_total', 0):,}  dropped by clients {c.get('client_dropped_total', 0):,}  "
        f"abandoned {c.get('spans_abandoned', 0):,}",
    ]
    reload = st.get("reload") or {}
    if reload.get("last_error"):
        lines.append(f"  reload FAILED (previous configuration in force): {reload['last_error']}")
    if st.get("rejected"):
        lines.append("  rejected by reason: " + ", ".join(f"{k}={v}" for k, v in sorted(st["rejected"].items())))
    store = st.get("store") or {}
    if store.get("write_errors"):
        lines.append(
            f"  store write errors {store['write_errors']} (last: {store.get('last_error')}), "
            f"backlog {store.get('backlog_batches')} batches, shed {store.get('shed_rows')} rows"
        )
    lines.append("")
    clients = st.get("clients") or []
    lines.append(f"Clients ({len(clients)})")
    if clients:
        rows = []
        for cl in clients:
            open_ph = ", ".join(p["path"] for p in cl["open_phases"][-3:]) or "-"
            rows.append(
                [
                    cl["pid"],
                    cl["comm"],
                    cl.get("workload_class") or "-",
                    f"{cl['events']:,}",
                    cl["dropped"],
                    open_ph,
                    f"{cl['last_seen_s']:.1f}s",
                ]
            )
        lines.append(table(["PID", "COMMAND", "CLASS", "EVENTS", "DROPPED", "OPEN PHASES", "SEEN"], rows, "r  rr"))
    lines.append("")
    lines.append("Samplers")
    rows = []
    for s in st.get("samplers") or []:
        state = "ok" if s["available"] else "unavailable"
        if s["available"] and s["errors"]:
            state = f"ok, {s['errors']} errors"
        rows.append([s["name"], state, s["metrics"], f"{s['last_ms']:.2f}", s.get("reason") or ""])
    lines.append(table(["NAME", "STATE", "METRICS", "LAST MS", "REASON"], rows, "  rr"))
    phases = st.get("phases") or []
    if phases:
        lines.append("")
        lines.append("Phases (live, by total time)")
        rows = [
            [
                p["path"],
                p.get("workload_class") or "-",
                p["count"],
                f"{p['mean_ms']:.3f}",
                f"{p['total_s']:.3f}",
                f"{p['signals'].get('cpu_pct', 0):.0f}",
                num(p["energy_j"], 2) if p["energy_j"] else "-",
            ]
            for p in phases[:10]
        ]
        lines.append(table(["PHASE", "CLASS", "COUNT", "MEAN MS", "TOTAL S", "CPU %", "ENERGY J"], rows, "  rrrrr"))
    return "\n".join(lines)


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
    p.add_argument("--pid", type=int, help="only this process")
    p.add_argument("--name", help="only this phase name or path (e.g. decode or prefill/attn)")
    p.add_argument("--since", help="only spans that began since (90s, 15m, 2h, 1d, or ISO time)")
    p.add_argument("--status", choices=["ok", "error", "abandoned", "lost_end", "interrupted"])
    p.add_argument("--limit", type=int, default=50, help="at most this many, newest first (default 50)")
    p.add_argument("--json", action="store_true", help="machine-readable output (all signals)")


@command("spans", "recorded phase spans with their signals (from the store)")
@args(_spans_args)
def cmd_spans(ns: argparse.Namespace) -> int:
    since = parse_since(ns.since)  # bad arguments are reported before anything is opened
    conn = open_readonly(state_dir(ns))
    rows = query_spans(conn, SpanQuery(ns.pid, ns.name, since, ns.status, ns.limit))
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
                num(s.get("ctx_vol")),
                num(s.get("gpu_util_pct_mean")),
                num(s["gpu_power_mw_mean"] / 1000 if s.get("gpu_power_mw_mean") is not None else None),
                num(s.get("gpu_energy_j"), 3),
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
                "CTXSW",
                "GPU %",
                "POWER W",
                "ENERGY J",
                "THREAD STATE",
            ],
            out,
            "rr  rr rrrrr ",
        )
    )
    if any(r["estimated"] for r in rows):
        print(
            "* estimated: some figures are interpolated, not measured - the span was shorter than the "
            "sampling period, or began before the daemon sampled its process (e.g. across a daemon restart)"
        )
    return 0


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
    conn = open_readonly(state_dir(ns))
    rows = phase_summary(conn, since)
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
            num(r.get("cpu_pct")),
            num(r.get("ctx_vol")),
            num(r.get("gpu_util_pct_mean")),
            num(r["gpu_power_mw_mean"] / 1000 if r.get("gpu_power_mw_mean") is not None else None),
            num(r.get("gpu_energy_j"), 3),
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
                "CPU %",
                "CTXSW",
                "GPU %",
                "POWER W",
                "ENERGY J",
            ],
            out,
            "  rrrrrrrrrrr",
        )
    )
    return 0


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
        print(f"gpuos-hintctl: {exc}", file=sys.stderr)
        return 1
    except GpuosError as exc:
        print(f"gpuos-hintctl: {exc}", file=sys.stderr)
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
