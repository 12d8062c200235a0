"""Client CPU per process at low phase rates (issue 7, item 6c): what hinting costs an idle program.

A child process does nothing but one `with phase("tick"): pass` every 1/rate seconds, sleeping in
between (an otherwise idle program: a server waiting for requests, a trainer waiting on the GPU).
Its own CPU time (utime+stime of all its threads, getrusage(RUSAGE_SELF)) is measured over a fixed
--window.  A twin child runs the same loop at the same moment with GPUOS_HINT_DISABLE=1, measured
the same way; the client's cost is the difference, reported as % of one core.  A real gpuos-hintd
on a private socket receives every event (0 drops, the daemon's count equal to the client's, one
'ok' span per phase, checked after each run; an invalid run is reported and left out).

Rates run in order 1, 10, 100, 1000 phases/s, then reversed on the next repeat, so slow drift of
the machine does not line up with the rate.  Also recorded: both children's voluntary context
switches (a sender that never deep-sleeps wakes hundreds of times a second) and the daemon's CPU.

    python benchmarks/bench_client_cpu.py [--window 10] [--rates 1,10,100,1000] [--repeats 2] [--quick]
        [--out benchmarks/results/client_cpu.json]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from _harness import (
    RESULTS,
    Daemon,
    client_under_test,
    delivery_check,
    load_average,
    run_child,
    spread,
    write_result,
)

CHILD = r"""
import resource, time
rate, window = float(sys.argv[1]), float(sys.argv[2])
import gpuos_client as h
for _ in range(3):  # the sender is started and connected before the window
    with h.phase("tick"):
        pass
h.flush(5.0)
time.sleep(0.5)
mono, sleep = time.monotonic, time.sleep
period = 1.0 / rate
r0 = resource.getrusage(resource.RUSAGE_SELF)
t0 = mono()
n, nxt = 0, t0
while True:
    with h.phase("tick"):
        pass
    n += 1
    nxt += period
    d = nxt - mono()
    if nxt - t0 >= window:
        if d > 0:
            sleep(d)
        break
    if d > 0:
        sleep(d)
t1 = mono()
r1 = resource.getrusage(resource.RUSAGE_SELF)
finish({"rate": rate, "wall_s": t1 - t0, "phases_in_window": n, "phases": n + 3,
        "cpu_s": (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime),
        "nvcsw": r1.ru_nvcsw - r0.ru_nvcsw, "nivcsw": r1.ru_nivcsw - r0.ru_nivcsw,
        "disabled": h.stats().get("enabled") is False}, None if os.environ.get("GPUOS_HINT_DISABLE") == "1" else h)
"""


def twin(rate: float, window: float, daemon: Daemon) -> dict[str, Any]:
    """The hinted child and its disabled twin, started together; returns both and the delivery check."""
    out: dict[str, Any] = {}
    errors: list[BaseException] = []

    def go(mode: str) -> None:
        env = {**daemon.env, "GPUOS_HINT_DISABLE": "1"} if mode == "disabled" else daemon.env
        try:
            out[mode] = run_child(CHILD, [str(rate), str(window)], env, daemon if mode == "hinted" else None)
        except BaseException as exc:
            errors.append(exc)

    d0 = daemon.pid_cpu_s()
    threads = [threading.Thread(target=go, args=(m,)) for m in ("hinted", "disabled")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    out["daemon_cpu_s"] = daemon.pid_cpu_s() - d0
    h = out["hinted"]
    out["delivery"] = delivery_check(daemon, h["pid"], h["stats"], h["phases"], "tick", h["daemon_events"])
    out["client_cpu_pct"] = (h["cpu_s"] - out["disabled"]["cpu_s"]) / h["wall_s"] * 100
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--window", type=float, default=10.0, help="measured seconds per rate and repeat")
    ap.add_argument("--rates", default="1,10,100,1000", help="phases per second, comma-separated")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="1 s windows, 1 repeat: a smoke test, not a figure")
    ap.add_argument("--target-pct", type=float, default=0.1, help="issue 7 target at 10 phases/s")
    ap.add_argument("--note", default="")
    ap.add_argument("--out", default=str(RESULTS / "client_cpu.json"))
    args = ap.parse_args()
    if args.quick:
        args.window, args.repeats = min(args.window, 1.0), 1
    rates = [float(x) for x in args.rates.split(",")]
    started = time.monotonic()
    client = client_under_test()
    load_before = load_average()
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as td, Daemon(Path(td)) as daemon:
        for rep in range(args.repeats):
            for rate in rates if rep % 2 == 0 else rates[::-1]:
                r = twin(rate, args.window, daemon)
                r.update(rate=rate, repeat=rep, loadavg=load_average())
                runs.append(r)
                print(
                    f"{rate:6g}/s  client {r['client_cpu_pct']:7.3f} % of a core  (hinted {r['hinted']['cpu_s']:.3f} s, "
                    f"disabled {r['disabled']['cpu_s']:.3f} s, ctx sw {r['hinted']['nvcsw']} vs "
                    f"{r['disabled']['nvcsw']})  {'ok' if r['delivery']['valid'] else 'INVALID'}",
                    flush=True,
                )
    per_rate: dict[str, Any] = {}
    for rate in rates:
        rs = [r for r in runs if r["rate"] == rate]
        good = [r for r in rs if r["delivery"]["valid"]]
        cell: dict[str, Any] = {"runs": len(rs), "invalid_runs": len(rs) - len(good)}
        if good:
            cell.update(
                client_cpu_pct={k: round(v, 4) for k, v in spread([r["client_cpu_pct"] for r in good]).items()},
                hinted_cpu_pct=round(
                    statistics.median(r["hinted"]["cpu_s"] / r["hinted"]["wall_s"] for r in good) * 100, 4
                ),
                disabled_cpu_pct=round(
                    statistics.median(r["disabled"]["cpu_s"] / r["disabled"]["wall_s"] for r in good) * 100, 4
                ),
                hinted_vol_ctx_switches_per_s=round(
                    statistics.median(r["hinted"]["nvcsw"] / r["hinted"]["wall_s"] for r in good), 1
                ),
                disabled_vol_ctx_switches_per_s=round(
                    statistics.median(r["disabled"]["nvcsw"] / r["disabled"]["wall_s"] for r in good), 1
                ),
                daemon_cpu_pct=round(
                    statistics.median(r["daemon_cpu_s"] / r["hinted"]["wall_s"] for r in good) * 100, 3
                ),
            )
        per_rate[f"{rate:g}"] = cell
    at10 = per_rate.get("10", {}).get("client_cpu_pct", {}).get("median")
    summary = {
        "all_delivered": all(r["delivery"]["valid"] for r in runs),
        "client_cpu_pct_median_by_rate": {k: v.get("client_cpu_pct", {}).get("median") for k, v in per_rate.items()},
        "target_pct_at_10hz": args.target_pct,
        "meets_target": at10 is not None and at10 <= args.target_pct,
    }
    for r in runs:  # keep the JSON small: stats of the hinted child only
        r["disabled"].pop("stats", None)
    write_result(
        args.out,
        "client_cpu",
        parameters={k: v for k, v in vars(args).items() if k != "out"},
        client=client,
        loadavg_before=load_before,
        loadavg_end=load_average(),
        run_time_s=round(time.monotonic() - started, 1),
        results={"per_rate": per_rate, "runs": runs},
        summary=summary,
    )
    if not summary["all_delivered"]:
        print("INVALID: some runs did not deliver every event")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
