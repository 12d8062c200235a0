"""Daemon footprint with 16 hinting processes at 10 Hz sampling, before/after in one run (issue 10).

DESIGN 9 asks <= 1 % of a core (issue 10: <= 1.5 %, moonshot 1 %) and RSS <= 60 MB.  Each run is
a fresh gpuos-hintd (all samplers this host has, --sample-hz, real SQLite store) and --clients
real gpuos_client processes: each holds an outer phase open for the whole run and makes a short
phase every second inside it (--phase-hz), so every tick samples every process with an open phase
and spans are finalised and written.  Over a --window s window after --settle s:

  daemon_cpu_pct   utime+stime of /proc/PID/stat (all the daemon's threads) / window
  samplers         per-sampler ms per tick from status (samplers[].total_ms)
  ticks_per_s      the daemon's tick counter / window against --sample-hz (flagged below 90 %)
  rss              VmRSS polled in the window (peak, end) and VmHWM
  delivery         every client's acknowledged `delivered` == handed, 0 drops

Conditions, interleaved (ABBA...) over --repeats, in the same run:
  before  the daemon and client of git ref --before-ref (exported with `git archive`)
  after   this tree (or --src)
  none    (once) the clients alone with no daemon: what they cost themselves (their hints are
          dropped and counted), for scale
Medians, spread and the ratio after/before (with a paired bootstrap CI) are reported.  The machine
is shared: the load average and /proc/stat busy share are recorded for every window; nothing is
run under `nice`.

    python benchmarks/bench_footprint.py                       # 3 x (before, after), 20 s windows (~3 min)
    python benchmarks/bench_footprint.py --before-ref none     # this tree only
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _harness import (
    REPO,
    RESULTS,
    Window,
    bootstrap_ratio_ci,
    client_delivery,
    collect_clients,
    daemon_env,
    export_tree,
    git_rev,
    safe_request,
    sampler_ticks,
    source_env,
    spread,
    start_daemon,
    start_phase_clients,
    status_counter,
    stop_daemon,
    wait_counted,
    write_result,
)

#: The commit before issue 10's footprint work (proc sampler: held fds, exact skips).
DEFAULT_BEFORE = "7b3ad84"


def run_once(src: str | None, args: argparse.Namespace, daemon_on: bool = True) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as td:
        tmp = Path(td)
        conf = args.daemon_config.replace("\\n", "\n") or None
        env = daemon_env(tmp, base=source_env(src), config_text=conf)
        go = tmp / "go"
        seconds = args.settle + args.window + 0.5
        daemon = None
        kids: list[Any] = []
        st0 = st1 = None
        try:
            if daemon_on:
                daemon = start_daemon(
                    env, ("--log-level", "error", "--sample-hz", str(args.sample_hz)), log=tmp / "d.log"
                )
            # With no daemon nothing is ever acknowledged: do not wait for it at the end.
            kids = start_phase_clients(
                args.clients, args.phase_hz, seconds, env, go, flush_s=30.0 if daemon_on else 0.5
            )
            go.touch()
            time.sleep(args.settle)
            ctl = env["GPUOS_HINT_CONTROL"]
            if daemon is not None:
                st0 = safe_request(ctl, "status", timeout_s=10)
            win = Window(daemon.pid if daemon else kids[0].pid, [k.pid for k in kids]).start()
            time.sleep(args.window)
            if daemon is not None:
                st1 = safe_request(ctl, "status", timeout_s=10)
            w = win.stop()
            results = collect_clients(kids, timeout_s=60 + args.window)
            events = wait_counted(ctl, results, 20) if daemon is not None else None
        finally:
            for k in kids:
                if k.poll() is None:
                    k.kill()
            stop = stop_daemon(daemon, 30.0) if daemon is not None else None
    if daemon is None:
        return {
            "clients_cpu_pct": w["others_cpu_pct"],
            **{k: w[k] for k in ("window_s", "loadavg_start", "loadavg_end")},
        }
    t0, t1 = status_counter(st0, "ticks"), status_counter(st1, "ticks")
    ticks = None if t0 is None or t1 is None else (t1 - t0) / w["window_s"]
    delivery = client_delivery(results, events)
    flags = []
    if ticks is None or ticks < 0.9 * args.sample_hz:
        flags.append("ticks_fell_behind")
    if not delivery["valid"]:
        flags.append("not_all_delivered")
    if stop and (stop["killed"] or stop["rc"] != 0):
        flags.append("daemon_exit_unclean")
    clients_seen = len((st1 or {}).get("clients", []))
    if clients_seen != args.clients:
        flags.append(f"daemon_saw_{clients_seen}_clients")
    return {
        **w,
        "clients_cpu_pct": w.pop("others_cpu_pct"),
        "ticks_per_s": None if ticks is None else round(ticks, 2),
        "samplers": sampler_ticks(st0, st1),
        "sampler_health": {s["name"]: s.get("health") for s in (st1 or {}).get("samplers", []) if s.get("available")},
        "clients_seen": clients_seen,
        "delivery": delivery,
        "stop": stop,
        "flags": flags,
        "valid": delivery["valid"] and not [f for f in flags if f != "daemon_exit_unclean"],
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--phase-hz", type=float, default=1.0, help="short phases per second per client")
    ap.add_argument("--window", type=float, default=20.0, help="s measured per run")
    ap.add_argument("--settle", type=float, default=3.0, help="s after start before measuring")
    ap.add_argument("--repeats", type=int, default=3, help="(before, after) pairs, order alternating")
    ap.add_argument("--sample-hz", type=float, default=10.0)
    ap.add_argument("--before-ref", default=DEFAULT_BEFORE, help="git ref of the 'before' tree, or 'none'")
    ap.add_argument(
        "--daemon-config",
        default="",
        help='extra daemon config (TOML, \\n between lines), e.g. disable_samplers = ["maps"]',
    )
    ap.add_argument("--src", help="the 'after' tree (DIR/daemon, DIR/client); default this checkout")
    ap.add_argument("--no-baseline", action="store_true", help="skip the clients-without-daemon run")
    ap.add_argument("--target-cpu-pct", type=float, default=1.5)
    ap.add_argument("--target-rss-mb", type=float, default=60.0)
    ap.add_argument("--out", default=str(RESULTS / "footprint.json"))
    args = ap.parse_args()
    t_begin = time.monotonic()
    runs: dict[str, list[dict[str, Any]]] = {"after": []}
    with tempfile.TemporaryDirectory() as td:
        srcs: dict[str, str | None] = {"after": args.src}
        if args.before_ref != "none":
            srcs["before"] = str(export_tree(args.before_ref, Path(td) / "before"))
            runs["before"] = []
        baseline = None
        if not args.no_baseline:
            print(f"none:   {args.clients} clients, no daemon, {args.window:g} s ...", flush=True)
            baseline = run_once(args.src, args, daemon_on=False)
        for rep in range(args.repeats):
            order = ["before", "after"] if rep % 2 == 0 else ["after", "before"]
            for cond in order:
                if cond not in srcs:
                    continue
                r = run_once(srcs[cond], args)
                r["repeat"] = rep
                runs[cond].append(r)
                print(
                    f"{cond:7s} rep {rep}: daemon {r['daemon_cpu_pct']:.2f} % of a core, {r['ticks_per_s']} ticks/s, "
                    f"RSS {r['daemon_rss_end_mb']} MB, load {r['loadavg_end'][0]}, host busy "
                    f"{r['host_busy_pct_of_all_cores']} %  {','.join(r['flags'])}",
                    flush=True,
                )
    summary: dict[str, Any] = {}
    for cond, rs in runs.items():
        cpu = [r["daemon_cpu_pct"] for r in rs if r["daemon_cpu_pct"] is not None]
        per_sampler: dict[str, list[float]] = {}
        for r in rs:
            for name, s in r["samplers"].items():
                if s["ms_per_tick"] is not None:
                    per_sampler.setdefault(name, []).append(s["ms_per_tick"])
        summary[cond] = {
            "daemon_cpu_pct": spread(cpu) if cpu else None,
            "daemon_rss_end_mb_median": statistics.median(r["daemon_rss_end_mb"] or 0 for r in rs) if rs else None,
            "daemon_rss_peak_mb_max": max((r["daemon_rss_peak_mb"] for r in rs), default=None),
            "ticks_per_s_min": min((r["ticks_per_s"] or 0 for r in rs), default=None),
            "sampler_ms_per_tick_median": {k: round(statistics.median(v), 4) for k, v in per_sampler.items()},
            "runs_invalid": sum(not r["valid"] for r in rs),
        }
    after_cpu = [r["daemon_cpu_pct"] for r in runs["after"]]
    if runs.get("before"):
        before_cpu = [r["daemon_cpu_pct"] for r in runs["before"]]
        ratio = statistics.median(after_cpu) / statistics.median(before_cpu)
        lo, hi = bootstrap_ratio_ci(after_cpu, before_cpu)
        summary["after_over_before_cpu"] = {"median_ratio": round(ratio, 3), "ci95": [round(lo, 3), round(hi, 3)]}
    med = statistics.median(after_cpu)
    rss = summary["after"]["daemon_rss_end_mb_median"]
    summary.update(
        clients_alone_cpu_pct=baseline["clients_cpu_pct"] if baseline else None,
        meets_cpu_target=med <= args.target_cpu_pct,
        meets_rss_target=rss <= args.target_rss_mb,
        all_valid=all(r["valid"] for rs in runs.values() for r in rs),
    )
    total = time.monotonic() - t_begin
    print(f"\n{'':8s} {'daemon CPU % (median, IQR)':>28s} {'RSS MB':>7s} {'min ticks/s':>11s}  per-sampler ms/tick")
    for cond in ("before", "after"):
        if runs.get(cond):
            s = summary[cond]
            c = s["daemon_cpu_pct"]
            print(
                f"{cond:8s} {c['median']:18.2f} ({c['q1']:.2f}..{c['q3']:.2f}) {s['daemon_rss_end_mb_median']:7.1f} "
                f"{s['ticks_per_s_min']:11.2f}  {s['sampler_ms_per_tick_median']}"
            )
    if "after_over_before_cpu" in summary:
        a = summary["after_over_before_cpu"]
        print(f"after / before: {a['median_ratio']:.2f} (95 % CI {a['ci95'][0]:.2f}..{a['ci95'][1]:.2f})")
    print(
        f"target <= {args.target_cpu_pct} %: {'met' if summary['meets_cpu_target'] else 'NOT met'}; "
        f"all runs valid: {summary['all_valid']}; {total:.0f} s"
    )
    write_result(
        args.out,
        "footprint",
        source=args.src or str(REPO),
        git_head=git_rev(),
        before_ref=args.before_ref,
        before_commit=git_rev(args.before_ref) if args.before_ref != "none" else None,
        parameters={k: v for k, v in vars(args).items() if k != "out"},
        run_time_s=round(total, 1),
        baseline_no_daemon=baseline,
        runs=runs,
        summary=summary,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
