"""Idle daemon footprint (DESIGN 9: 10 Hz sampling, 16 hinting processes, <= 1% of a core, RSS <= 60 MB).

A real gpuos-hintd (all samplers this host has, 10 Hz, real SQLite store) and 16 real
client processes (gpuos_client), each holding an open phase for the whole run and doing
one short phase per second inside it (so every tick samples 16 processes with open
phases, and spans get finalised and written).  Over a --window s window the daemon's CPU
time (utime + stime of /proc/PID/stat, all its threads) and its RSS are read; the
per-sampler split comes from status (samplers[].total_ms).

Baseline, same run: the same 16 processes with no daemon at all (their hints are dropped
and counted), to show what the clients themselves cost; their CPU is also measured while
the daemon runs.

    python benchmarks/bench_footprint.py [--clients 16] [--window 20] [--baseline-window 10]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _harness import RESULTS, daemon_env, start_daemon, write_result

TCK = os.sysconf("SC_CLK_TCK")

CLIENT = r"""
import sys, time
import gpuos_client as h
stop = time.monotonic() + float(sys.argv[1])
print("ready", flush=True)
with h.phase("serve", role="bench"):
    i = 0
    while time.monotonic() < stop:
        with h.phase("request", i=i):
            time.sleep(0.005)
        i += 1
        time.sleep(0.995)
"""


def cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat", "rb") as f:
        data = f.read()
    fields = data[data.rfind(b")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / TCK


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def start_clients(n: int, seconds: float, env: dict[str, str]) -> list[subprocess.Popen[str]]:
    kids = [
        subprocess.Popen([sys.executable, "-c", CLIENT, str(seconds)], env=env, stdout=subprocess.PIPE, text=True)
        for _ in range(n)
    ]
    for k in kids:
        assert k.stdout is not None
        if k.stdout.readline().strip() != "ready":
            raise SystemExit("client failed to start")
    return kids


def measure(pids: list[int], window: float) -> tuple[list[float], float]:
    c0 = [cpu_s(p) for p in pids]
    t0 = time.monotonic()
    time.sleep(window)
    c1 = [cpu_s(p) for p in pids]
    return [b - a for a, b in zip(c0, c1, strict=True)], time.monotonic() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--window", type=float, default=20.0, help="s, daemon measurement window")
    ap.add_argument("--baseline-window", type=float, default=10.0, help="s, clients without a daemon")
    ap.add_argument("--sample-hz", type=float, default=10.0)
    ap.add_argument("--settle", type=float, default=3.0, help="s after start before measuring")
    ap.add_argument("--target-cpu-pct", type=float, default=1.0)
    ap.add_argument("--target-rss-mb", type=float, default=60.0)
    ap.add_argument("--out", default=str(RESULTS / "footprint.json"))
    args = ap.parse_args()
    from gpuos_hintd.control import request

    with tempfile.TemporaryDirectory() as td:
        tmp = Path(td)
        env = daemon_env(tmp)
        # Baseline: the clients alone, nothing listening.
        print(f"baseline: {args.clients} clients, no daemon, {args.baseline_window:.0f} s ...", flush=True)
        kids = start_clients(args.clients, args.settle + args.baseline_window + 2, env)
        try:
            time.sleep(args.settle)
            base_cpu, base_dt = measure([k.pid for k in kids], args.baseline_window)
        finally:
            for k in kids:
                k.kill()
                k.wait()
        print(f"daemon:   {args.clients} clients, {args.sample_hz:g} Hz, {args.window:.0f} s ...", flush=True)
        daemon = start_daemon(env, ("--log-level", "warning", "--sample-hz", str(args.sample_hz)))
        kids = []
        try:
            kids = start_clients(args.clients, args.settle + args.window + 5, env)
            time.sleep(args.settle)
            st0 = request(env["GPUOS_HINT_CONTROL"], "status", timeout_s=5)
            cpu, dt = measure([daemon.pid] + [k.pid for k in kids], args.window)
            st1 = request(env["GPUOS_HINT_CONTROL"], "status", timeout_s=5)
            rss = rss_mb(daemon.pid)
            hwm = 0.0
            with open(f"/proc/{daemon.pid}/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        hwm = int(line.split()[1]) / 1024
        finally:
            for k in kids:
                k.kill()
                k.wait()
            daemon.terminate()
            daemon.wait(10)
    daemon_pct = 100 * cpu[0] / dt
    clients_pct = 100 * sum(cpu[1:]) / dt
    base_pct = 100 * sum(base_cpu) / base_dt
    samplers = {}
    s0 = {s["name"]: s for s in st0["samplers"]}
    for s in st1["samplers"]:
        if not s["available"]:
            continue
        a = s0.get(s["name"], {})
        ticks = s["ticks"] - a.get("ticks", 0)
        entry = {"ticks": ticks, "last_ms": s["last_ms"], "max_ms": s["max_ms"]}
        if "total_ms" in s:
            spent = s["total_ms"] - a.get("total_ms", 0.0)
            entry.update(ms_per_tick=spent / ticks if ticks else None, cpu_pct_of_core=spent / 10 / dt)
        samplers[s["name"]] = entry
    ticks = st1["counters"].get("ticks", 0) - st0["counters"].get("ticks", 0)
    results = {
        "daemon_cpu_pct": daemon_pct,
        "daemon_rss_mb": rss,
        "daemon_rss_hwm_mb": hwm,
        "daemon_ticks_per_s": ticks / dt,
        "clients_cpu_pct_with_daemon": clients_pct,
        "clients_cpu_pct_without_daemon": base_pct,
        "clients_seen": len(st1["clients"]),
        "open_phases": sum(len(c["open_phases"]) for c in st1["clients"]),
        "spans_closed_in_window": st1["counters"].get("spans_closed", 0) - st0["counters"].get("spans_closed", 0),
        "samplers": samplers,
    }
    print(f"\n{'':34s} {'CPU % of a core':>16s} {'x baseline':>10s}")
    print(f"{'clients, no daemon (baseline)':34s} {base_pct:16.2f} {1.0:10.2f}")

    def ratio(x: float) -> str:  # the baseline can round to 0 in a short window (10 ms CPU ticks)
        return f"{x / base_pct:10.2f}" if base_pct > 0 else f"{'n/a':>10s}"

    print(f"{'clients, with daemon':34s} {clients_pct:16.2f} {ratio(clients_pct)}")
    print(f"{'daemon':34s} {daemon_pct:16.2f} {ratio(daemon_pct)}")
    print(
        f"\ndaemon RSS {rss:.1f} MB (peak {hwm:.1f} MB), {ticks / dt:.1f} ticks/s, {results['open_phases']} open phases"
    )
    print(f"\n{'sampler':10s} {'ticks':>6s} {'ms/tick':>8s} {'max ms':>7s} {'% core':>7s}")
    for name, s in samplers.items():
        print(
            f"{name:10s} {s['ticks']:6d} {s.get('ms_per_tick') or s['last_ms']:8.3f} {s['max_ms']:7.2f} "
            f"{s.get('cpu_pct_of_core', float('nan')):7.3f}"
        )
    summary = {
        "daemon_cpu_pct": round(daemon_pct, 3),
        "daemon_rss_mb": round(rss, 1),
        "meets_cpu_target": daemon_pct <= args.target_cpu_pct,
        "meets_rss_target": rss <= args.target_rss_mb,
    }
    print(
        f"\ndaemon {daemon_pct:.2f}% of a core (target <= {args.target_cpu_pct}%: "
        f"{'met' if summary['meets_cpu_target'] else 'NOT met'}), RSS {rss:.1f} MB (target <= "
        f"{args.target_rss_mb:.0f} MB: {'met' if summary['meets_rss_target'] else 'NOT met'})"
    )
    write_result(
        args.out,
        "footprint",
        parameters={k: v for k, v in vars(args).items() if k != "out"},
        results=results,
        summary=summary,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
