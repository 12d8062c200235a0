"""`gpuos-hintctl spans` and `phases`: recorded history, through the daemon or from the store.

Both ask the daemon (which applies the disclosure rule: root sees everything,
others their own processes) and read the store directly only when no daemon
answers and the caller may read it (_common.history).  Every untrusted string
goes through safe() in fmt.table.
"""

from __future__ import annotations

import argparse
from typing import Any

from ..model import SPAN_STATUSES
from ..store import SpanQuery, phase_table, query_spans
from ._common import MAX_LIMIT, history, limit_arg, parse_since, pid_arg, print_json
from .fmt import ms, num, pm, table


def _per(value: float | None, unit: float) -> float | None:
    """A stored figure in display units (mW -> W: 1000, ns -> ms: 1e6); None stays None ("-")."""
    return None if value is None else value / unit


def spans_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pid", type=pid_arg, help="only this process")
    p.add_argument("--name", help="only this phase name or path (e.g. decode or prefill/attn)")
    p.add_argument("--since", help="only spans that began since (90s, 15m, 2h, 1d, or ISO time)")
    p.add_argument("--status", choices=SPAN_STATUSES)
    p.add_argument(
        "--limit", type=limit_arg, default=50, help=f"at most this many, newest first (default 50, max {MAX_LIMIT})"
    )
    p.add_argument("--json", action="store_true", help="machine-readable output (all signals)")


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
        print_json(rows)
        return 0
    if not rows:
        print("no spans match")
        return 0
    out = []
    busy = any("dev_busy_ms" in r["signals"] for r in rows)  # the BUSY columns only where measured
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
                *([pm(s.get("dev_busy_ms"), s.get("dev_busy_err_ms"), 3), num(s.get("dev_busy_pct"))] if busy else []),
                r["status"] + ("*" if r["estimated"] else ""),
                num(s.get("cpu_pct")),
                _thread_cpu(s),
                num(s.get("ctx_vol")),
                num(s.get("gpu_util_pct_mean")),
                num(_per(s.get("gpu_power_mw_mean"), 1000)),
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
                *(["BUSY MS", "BUSY %"] if busy else []),
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
            "rr  rr" + ("rr" if busy else "") + " rrrrrr ",
        )
    )
    if busy:
        print("BUSY: GPU busy time inside the device interval (CUPTI kernels/copies/memsets, union over streams)")
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
    text = pm(v / 1e6, _per(err, 1e6), 3)
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


def phases_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--since", help="only spans that began since (90s, 15m, 2h, 1d, or ISO time)")
    p.add_argument("--json", action="store_true", help="machine-readable output")


def cmd_phases(ns: argparse.Namespace) -> int:
    since = parse_since(ns.since)
    rows = history(ns, "phases", lambda conn: phase_table(conn, since), since_wall_ns=since)
    if ns.json:
        print_json(rows)
        return 0
    if not rows:
        print("no spans recorded yet")
        return 0
    busy = any(r.get("dev_busy_count") for r in rows)
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
            *([num(r.get("dev_busy_ms"), 3), num(r.get("dev_busy_pct"))] if busy else []),
            num(r.get("cpu_pct")),
            pm(
                _per(r.get("thread_cpu_total_ns"), 1e6),
                _per(r.get("thread_cpu_total_err_ns"), 1e6),
            ),
            num(r.get("ctx_vol")),
            num(r.get("gpu_util_pct_mean")),
            num(_per(r.get("gpu_power_mw_mean"), 1000)),
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
                *(["BUSY MS", "BUSY %"] if busy else []),
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
            "  rrrrrrrrrrrrrrr" + ("rr" if busy else ""),
        )
    )
    if busy:
        print("BUSY MS: mean GPU busy time per span inside its device interval; BUSY %: total busy / total device time")
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
