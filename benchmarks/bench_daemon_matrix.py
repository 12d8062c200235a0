"""Daemon CPU and RSS against the number of hinting processes and their phase rate (issue 10).

For each cell (N client processes x R phases/s per process) a fresh gpuos-hintd (all samplers
this host has, --sample-hz, real SQLite store) and N real gpuos_client processes: each holds an
outer phase open and makes short phases at R Hz on a deadline schedule.  Over a --window s window
after --settle s the harness reads, from /proc and the daemon's status:

  daemon_cpu_pct       utime+stime of the daemon (all threads) / window, % of one core
  rss peak / end       VmRSS polled at 5 Hz in the window (and VmHWM, the lifetime peak)
  ticks_per_s          the daemon's tick counter / window, against --sample-hz: a run whose
                       ticks fell below 90 % of the configured rate is flagged, not hidden
  phases_per_s         what the clients achieved (sum of their phases / their run time) against
                       N x R: on a small machine 64 x 1 kHz may be beyond the senders themselves;
                       such a cell is flagged `senders_fell_behind`, and its CPU figure is for the
                       load actually offered
  delivery             every client's acknowledged `delivered` == handed, 0 drops/undelivered/
                       rejected, and the daemon's event counter >= what was acknowledged;
                       otherwise the cell is `valid: false` with the reasons
  drain                SIGTERM at the end: how long the daemon took to drain and exit (bounded,
                       SIGKILL past --drain-timeout; recorded, never an exception)

The machine's load (os.getloadavg and /proc/stat busy share over each window) is recorded per cell:
on a shared machine other processes compete with the daemon and its clients.

    python benchmarks/bench_daemon_matrix.py                 # 1,4,16,64 x 10,100,1000 Hz (~8 min)
    python benchmarks/bench_daemon_matrix.py --quick         # CI smoke: 1,4 x 10,100 Hz, short windows
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _harness import (
    REPO,
    RESULTS,
    Window,
    client_delivery,
    collect_clients,
    daemon_env,
    git_rev,
    load_average,
    safe_request,
    sampler_ticks,
    source_env,
    start_daemon,
    start_phase_clients,
    status_counter,
    stop_daemon,
    wait_counted,
    write_result,
)


def run_cell(n: int, rate: float, args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as td:
        tmp = Path(td)
        env = daemon_env(tmp, base=source_env(args.src), config_text=args.daemon_config.replace("\\n", "\n") or None)
        daemon = start_daemon(env, ("--log-level", "error", "--sample-hz", str(args.sample_hz)), log=tmp / "d.log")
        ctl = env["GPUOS_HINT_CONTROL"]
        go = tmp / "go"
        kids: list[Any] = []
        try:
            t_start = time.monotonic()
            kids = start_phase_clients(n, rate, args.settle + args.window + 0.5, env, go, flush_s=args.flush_timeout)
            startup_s = time.monotonic() - t_start
            go.touch()
            time.sleep(args.settle)
            st0 = safe_request(ctl, "status", timeout_s=10)
            win = Window(daemon.pid, [k.pid for k in kids]).start()
            time.sleep(args.window)
            st1 = safe_request(ctl, "status", timeout_s=10)
            w = win.stop()
            results = collect_clients(kids, timeout_s=60 + args.window)
            events_before = wait_counted(ctl, results, 30)
        finally:
            for k in kids:
                if k.poll() is None:
                    k.kill()
            stop = stop_daemon(daemon, args.drain_timeout)
    ticks = None
    t0, t1 = status_counter(st0, "ticks"), status_counter(st1, "ticks")
    if t0 is not None and t1 is not None:
        ticks = (t1 - t0) / w["window_s"]
    ok = [r for r in results if "error" not in r]
    offered = n * rate
    achieved = sum(r["phases"] / r["elapsed_s"] for r in ok if r["elapsed_s"] > 0)
    delivery = client_delivery(results, events_before)
    flags = []
    if ticks is None or ticks < 0.9 * args.sample_hz:
        flags.append("ticks_fell_behind")
    if achieved < 0.9 * offered:
        flags.append("senders_fell_behind")
    if not delivery["valid"]:
        flags.append("not_all_delivered")
    if stop["killed"] or stop["rc"] not in (0, None):
        flags.append("daemon_exit_unclean")
    if st0 is None or st1 is None:
        flags.append("status_unanswered")
    return {
        "clients": n,
        "rate_hz_per_client": rate,
        "offered_phases_per_s": offered,
        "achieved_phases_per_s": round(achieved, 1),
        "configured_ticks_per_s": args.sample_hz,
        "ticks_per_s": None if ticks is None else round(ticks, 2),
        **w,
        "client_startup_s": round(startup_s, 2),
        "clients_late_reanchors": sum(r.get("late", 0) for r in ok),
        "spans_closed_in_window": (status_counter(st1, "spans_closed") or 0)
        - (status_counter(st0, "spans_closed") or 0),
        "samplers": sampler_ticks(st0, st1),
        "delivery": delivery,
        "stop": stop,
        "flags": flags,
        "valid": delivery["valid"] and "status_unanswered" not in flags,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", default="1,4,16,64", help="client process counts")
    ap.add_argument("--rates", default="10,100,1000", help="phases/s per client process")
    ap.add_argument("--window", type=float, default=10.0, help="s measured per cell")
    ap.add_argument("--settle", type=float, default=2.0, help="s after the clients start, before the window")
    ap.add_argument("--repeats", type=int, default=1, help="runs of each cell (interleaved: all cells, then again)")
    ap.add_argument("--sample-hz", type=float, default=10.0)
    ap.add_argument("--drain-timeout", type=float, default=60.0, help="s the daemon may take to exit on SIGTERM")
    ap.add_argument("--budget-min", type=float, default=12.0, help="stop starting cells after this many minutes")
    ap.add_argument("--quick", action="store_true", help="CI smoke: 1,4 clients x 10,100 Hz, 2 s windows")
    ap.add_argument("--flush-timeout", type=float, default=30.0, help="s each client waits for its last acks")
    ap.add_argument("--daemon-config", default="", help="extra daemon config (TOML, \\n between lines)")
    ap.add_argument("--src", help="run daemon and clients from this source tree (DIR/daemon, DIR/client)")
    ap.add_argument("--out", default=str(RESULTS / "daemon_matrix.json"))
    args = ap.parse_args()
    if args.quick:
        args.clients, args.rates, args.window, args.settle = "1,4", "10,100", 2.0, 0.5
    clients = [int(x) for x in args.clients.split(",") if x]
    rates = [float(x) for x in args.rates.split(",") if x]
    t_begin = time.monotonic()
    cells, skipped = [], []
    hdr = f"{'N':>3s} {'Hz':>5s} {'cpu %':>7s} {'rss pk':>7s} {'rss end':>7s} {'ticks/s':>7s} {'ph/s':>9s} {'of':>7s}  flags"
    print(hdr, flush=True)
    for rep in range(args.repeats):
        for n in clients:
            for rate in rates:
                if time.monotonic() - t_begin > 60 * args.budget_min:
                    skipped.append({"clients": n, "rate_hz_per_client": rate, "repeat": rep})
                    continue
                c = run_cell(n, rate, args)
                c["repeat"] = rep
                cells.append(c)
                print(
                    f"{n:3d} {rate:5g} {c['daemon_cpu_pct'] or 0:7.2f} {c['daemon_rss_peak_mb']:7.1f} "
                    f"{c['daemon_rss_end_mb'] or 0:7.1f} {c['ticks_per_s'] or 0:7.2f} "
                    f"{c['achieved_phases_per_s']:9.0f} {c['offered_phases_per_s']:7.0f}  {','.join(c['flags'])}",
                    flush=True,
                )
    total = time.monotonic() - t_begin
    print(f"\n{len(cells)} cells in {total:.0f} s; {len(skipped)} skipped for the time budget; load {load_average()}")
    write_result(
        args.out,
        "daemon_matrix",
        source=args.src or str(REPO),
        git_head=git_rev(),
        parameters={k: v for k, v in vars(args).items() if k != "out"},
        run_time_s=round(total, 1),
        cells=cells,
        skipped=skipped,
        summary={
            "cells": len(cells),
            "invalid_cells": sum(not c["valid"] for c in cells),
            "ticks_fell_behind": [
                (c["clients"], c["rate_hz_per_client"]) for c in cells if "ticks_fell_behind" in c["flags"]
            ],
            "senders_fell_behind": [
                (c["clients"], c["rate_hz_per_client"]) for c in cells if "senders_fell_behind" in c["flags"]
            ],
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
