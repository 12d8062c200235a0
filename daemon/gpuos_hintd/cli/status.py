"""`gpuos-hintctl status`: one snapshot of the daemon (health, clients, samplers, live phases)."""

from __future__ import annotations

import argparse
from typing import Any

from ..control import request
from ._common import control_endpoint, print_json
from .fmt import duration, num, safe, table


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="machine-readable output")


def run(ns: argparse.Namespace) -> int:
    st = request(control_endpoint(ns), "status", timeout_s=ns.timeout)
    if ns.json:
        print_json(st)
    else:
        print(render_status(st))
    return 0


def render_status(st: dict[str, Any]) -> str:
    d, c = st["daemon"], st["counters"]
    lines = [
        f"gpuos-hintd {safe(d['version'])}  pid {d['pid']}  up {duration(d['uptime_s'])}  "
        f"sampling {d['sample_hz']:g} Hz",
        f"  endpoint {safe(d['endpoint'])}",
        f"  store    {safe((st.get('store') or {}).get('path', '-'))}",
        f"  events {c.get('events', 0):,}  spans closed {c.get('spans_closed', 0):,}  "
        f"rejected {c.get('rejected_total', 0):,}  dropped by clients {c.get('client_dropped_total', 0):,}  "
        f"abandoned {c.get('spans_abandoned', 0):,}",
    ]
    reload = st.get("reload") or {}
    if reload.get("last_error"):
        lines.append(f"  reload FAILED (previous configuration in force): {reload['last_error']}")
    if st.get("rejected"):
        lines.append("  rejected by reason: " + ", ".join(f"{safe(k)}={v}" for k, v in sorted(st["rejected"].items())))
    store = st.get("store") or {}
    if store.get("write_errors"):
        lines.append(
            f"  store write errors {store['write_errors']} (last: {safe(store.get('last_error'))}), "
            f"backlog {store.get('backlog_batches')} batches, shed {store.get('shed_rows')} rows"
        )
    trouble = {
        k: store.get(k)
        for k in ("writer_crashes", "writer_restarts", "bad_rows", "span_conflicts", "reopened")
        if store.get(k)
    }
    if store.get("shed_rows"):
        trouble["shed"] = ", ".join(f"{safe(k)} {v}" for k, v in sorted((store.get("shed_by_kind") or {}).items()))
    if store and store.get("writer_alive") is False:
        trouble["writer"] = "NOT RUNNING"
    if trouble:
        lines.append("  store: " + "  ".join(f"{k.replace('_', ' ')} {safe(v)}" for k, v in trouble.items()))
        if store.get("last_crash"):
            lines.append(f"  store writer last crash: {safe(store['last_crash'])}")
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
