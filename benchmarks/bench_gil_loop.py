"""GIL-bound loop: what one phase per step costs a pure-Python program (issue 7, item 6a).

A pure-Python loop does a fixed amount of work per step (an LCG over ints: it holds the GIL the
whole time, like a launch-bound or tokenizer-bound program) and opens one `with phase("step")` per
step, with a real gpuos-hintd on a private socket receiving every event.  The baseline is the same
loop with `contextlib.nullcontext()` and no client imported.  The work per step is calibrated once
at the start (in a fresh child, to --step-us targets: 100 us and 1 ms by default) and then fixed.

Every run is a fresh child process.  Hinted and unhinted runs are interleaved, alternating which
goes first in each pair (AB BA AB ...), --repeats pairs per step size and condition:

  quiet       nothing else started by the benchmark (the machine may be busy: see loadavg)
  competitor  CPU-bound busy loops in other processes, one per core minus one (at least one)

Each hinted run must deliver everything: 0 client drops in stats(), the daemon's accepted events
equal to what the client handed over, and one 'ok' span per step in the daemon's store.  A run that
fails this is invalid: reported, and left out of the figures.

Reported per step size and condition: median slowdown (median hinted / median unhinted - 1, wall
time per step) with a bootstrap 95% CI over the interleaved pairs, the IQR and min/max of the
per-pair ratios, and the per-step times.  Also the CPU increase: the child's CPU time per step
(all threads, getrusage), hinted over unhinted - the client's own work, which stays readable on a
loaded machine where wall time is mostly other processes' time slices (a GIL stall while the
sender is preempted shows in wall time only).  The work per step is calibrated in thread CPU time.
And the slowdown excluding run-queue waits: wall time minus the time the main thread spent
runnable but waiting for a CPU (/proc/thread-self/schedstat), hinted over unhinted; what remains
is the thread running or blocked, and since the loop never sleeps, blocked means waiting for the
GIL - so GIL stalls, including those behind a sender preempted while holding the GIL, stay in.
The loadavg before each condition and at the end is recorded; `machine_oversubscribed` says whether
it exceeded the core count, in which case the wall-time figures say more about the scheduler than
about the client (a child whose threads sleep and wake gets a larger share of an overloaded CPU
than a pure spinner does, so hinted runs can even come out faster), and the CPU increase and the
slowdown excluding run-queue waits are the figures to read.

    python benchmarks/bench_gil_loop.py [--repeats 10] [--run-s 1.0] [--step-us 100,1000]
        [--conditions quiet,competitor] [--quick] [--out benchmarks/results/gil_loop.json]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _harness import (
    RESULTS,
    Competitors,
    Daemon,
    bootstrap_ratio_ci,
    client_under_test,
    delivery_check,
    load_average,
    run_child,
    spread,
    write_result,
)

CHILD = r"""
import contextlib, resource, time
mode, iters, steps, warm = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
pc = time.perf_counter

def work(n):
    x = 1
    for _ in range(n):
        x = (x * 1103515245 + 12345) & 0xFFFFFFFF
    return x

if mode == "calibrate":
    # per-step CPU time of `iters` iterations (thread CPU, so a loaded machine that deschedules us
    # does not shrink the work), median of 9 blocks of `steps` steps
    blocks = []
    tt = time.thread_time
    for _ in range(9):
        t0 = tt()
        for _ in range(steps):
            work(iters)
        blocks.append((tt() - t0) / steps)
    blocks.sort()
    finish({"step_s": blocks[4]})
    raise SystemExit(0)

h = None
if mode == "hinted":
    import gpuos_client as h
    cm = lambda: h.phase("step")
else:
    null = contextlib.nullcontext()
    cm = lambda: null
for _ in range(warm):
    with cm():
        work(iters)
if h is not None:
    h.flush(5.0)

def schedstat():
    # the main thread's time on a CPU and waiting on a run queue (ns), from the scheduler
    try:
        with open("/proc/thread-self/schedstat") as f:
            run, wait = f.read().split()[:2]
        return int(run), int(wait)
    except (OSError, ValueError):
        return None

s0 = schedstat()
r0 = resource.getrusage(resource.RUSAGE_SELF)
t0 = pc()
for _ in range(steps):
    with cm():
        work(iters)
t1 = pc()
r1 = resource.getrusage(resource.RUSAGE_SELF)
s1 = schedstat()
cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
res = {"mode": mode, "wall_s": t1 - t0, "cpu_s": cpu, "steps": steps, "phases": steps + warm if h else 0,
       "nvcsw": r1.ru_nvcsw - r0.ru_nvcsw, "nivcsw": r1.ru_nivcsw - r0.ru_nivcsw}
if s0 and s1:
    res["main_run_s"] = (s1[0] - s0[0]) / 1e9
    res["main_runqueue_s"] = (s1[1] - s0[1]) / 1e9
finish(res, h)
"""


def calibrate(env: dict[str, str], target_s: float) -> dict[str, Any]:
    """Iterations of the work loop that take target_s per step here, measured in a fresh child."""
    probe = 2000
    step = run_child(CHILD, ["calibrate", str(probe), "50", "0"], env)["step_s"]
    iters = max(10, round(probe * target_s / step))
    check = run_child(CHILD, ["calibrate", str(iters), str(max(20, round(0.05 / target_s))), "0"], env)["step_s"]
    return {"target_us": target_s * 1e6, "iters": iters, "measured_step_cpu_us": round(check * 1e6, 2)}


def one_run(mode: str, iters: int, steps: int, warm: int, daemon: Daemon) -> dict[str, Any]:
    res = run_child(CHILD, [mode, str(iters), str(steps), str(warm)], daemon.env, daemon if mode == "hinted" else None)
    out = {k: res[k] for k in ("mode", "wall_s", "cpu_s", "steps", "nvcsw", "nivcsw", "pid")}
    out["step_us"] = res["wall_s"] / res["steps"] * 1e6
    if "main_run_s" in res:
        # wall time minus the main thread's run-queue waits: what the step costs when the scheduler's
        # share is taken out.  What remains is the thread running, or blocked (on the GIL: the loop
        # never sleeps), so GIL stalls - including a preempted sender holding the GIL - stay in.
        out["main_run_s"], out["main_runqueue_s"] = res["main_run_s"], res["main_runqueue_s"]
        out["step_excl_runqueue_us"] = (res["wall_s"] - res["main_runqueue_s"]) / res["steps"] * 1e6
        out["main_blocked_us_per_step"] = (
            max(0.0, res["wall_s"] - res["main_runqueue_s"] - res["main_run_s"]) / res["steps"] * 1e6
        )
    if mode == "hinted":
        out["stats"] = res["stats"]
        out["delivery"] = delivery_check(daemon, res["pid"], res["stats"], res["phases"], "step", res["daemon_events"])
    return out


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Slowdown from interleaved pairs; only pairs whose hinted run delivered everything count."""
    pairs = [(p["hinted"], p["unhinted"]) for p in runs]
    invalid = [h for h, _ in pairs if not h["delivery"]["valid"]]
    good = [(h["step_us"], u["step_us"]) for h, u in pairs if h["delivery"]["valid"]]
    out: dict[str, Any] = {"pairs": len(pairs), "invalid_runs": len(invalid)}
    if invalid:
        out["invalid"] = [{"pid": h["pid"], "problems": h["delivery"]["problems"]} for h in invalid]
    if not good:
        return out
    hs, us = [g[0] for g in good], [g[1] for g in good]
    lo, hi = bootstrap_ratio_ci(hs, us)
    ratios = [a / b for a, b in good]
    hc = [h["cpu_s"] / h["steps"] * 1e6 for h, u in pairs if h["delivery"]["valid"]]
    uc = [u["cpu_s"] / u["steps"] * 1e6 for h, u in pairs if h["delivery"]["valid"]]
    clo, chi = bootstrap_ratio_ci(hc, uc)
    sched = [
        (h, u)
        for h, u in pairs
        if h["delivery"]["valid"] and "step_excl_runqueue_us" in h and "step_excl_runqueue_us" in u
    ]
    if sched:
        he, ue = [h["step_excl_runqueue_us"] for h, _ in sched], [u["step_excl_runqueue_us"] for _, u in sched]
        elo, ehi = bootstrap_ratio_ci(he, ue)
        out.update(
            slowdown_excl_runqueue_pct=round((statistics.median(he) / statistics.median(ue) - 1) * 100, 2),
            slowdown_excl_runqueue_ci95_pct=[round((elo - 1) * 100, 2), round((ehi - 1) * 100, 2)],
            main_blocked_us_per_step={
                "hinted": round(statistics.median(h["main_blocked_us_per_step"] for h, _ in sched), 3),
                "unhinted": round(statistics.median(u["main_blocked_us_per_step"] for _, u in sched), 3),
            },
            main_runqueue_share={
                m: round(statistics.median(p[i]["main_runqueue_s"] / p[i]["wall_s"] for p in sched), 3)
                for i, m in enumerate(("hinted", "unhinted"))
            },
        )
    out.update(
        slowdown_pct=round((statistics.median(hs) / statistics.median(us) - 1) * 100, 2),
        slowdown_ci95_pct=[round((lo - 1) * 100, 2), round((hi - 1) * 100, 2)],
        pair_ratio_pct={k: round((v - 1) * 100 if k != "iqr" else v * 100, 2) for k, v in spread(ratios).items()},
        hinted_step_us={k: round(v, 3) for k, v in spread(hs).items()},
        unhinted_step_us={k: round(v, 3) for k, v in spread(us).items()},
        cpu_increase_pct=round((statistics.median(hc) / statistics.median(uc) - 1) * 100, 2),
        cpu_increase_ci95_pct=[round((clo - 1) * 100, 2), round((chi - 1) * 100, 2)],
        hinted_cpu_per_step_us={k: round(v, 3) for k, v in spread(hc).items()},
        unhinted_cpu_per_step_us={k: round(v, 3) for k, v in spread(uc).items()},
    )
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=10, help="interleaved hinted/unhinted pairs per cell")
    ap.add_argument("--run-s", type=float, default=1.0, help="timed work per run (s)")
    ap.add_argument("--step-us", default="100,1000", help="target step times (us), comma-separated")
    ap.add_argument("--conditions", default="quiet,competitor")
    ap.add_argument("--competitors", type=int, default=None, help="busy loops (default: cores - 1, at least 1)")
    ap.add_argument("--quick", action="store_true", help="3 pairs, 0.1 s runs: a smoke test, not a figure")
    ap.add_argument("--note", default="", help="free text stored in the JSON (e.g. which client this is)")
    ap.add_argument("--out", default=str(RESULTS / "gil_loop.json"))
    args = ap.parse_args()
    if args.quick:
        args.repeats, args.run_s = min(args.repeats, 3), min(args.run_s, 0.1)
    targets = [float(x) * 1e-6 for x in args.step_us.split(",")]
    conditions = [c.strip() for c in args.conditions.split(",") if c.strip()]
    started = time.monotonic()
    client = client_under_test()
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as td, Daemon(Path(td)) as daemon:
        cal = [calibrate(daemon.env, t) for t in targets]
        for c in cal:
            print(f"calibrated: {c['iters']} iterations ~ {c['measured_step_cpu_us']} us of CPU per step")
        for cond in conditions:
            if cond not in ("quiet", "competitor"):
                raise SystemExit(f"unknown condition {cond!r}")
            comp = Competitors(args.competitors) if cond == "competitor" else None
            cell: dict[str, Any] = {"loadavg_before": load_average()}
            if comp:
                comp.__enter__()
                cell["competitors"] = comp.describe()
            try:
                for c in cal:
                    steps = max(10, round(args.run_s / (c["target_us"] * 1e-6)))
                    warm = max(5, steps // 20)
                    runs = []
                    for r in range(args.repeats):
                        order = ("hinted", "unhinted") if r % 2 == 0 else ("unhinted", "hinted")
                        pair = {m: one_run(m, c["iters"], steps, warm, daemon) for m in order}
                        pair["order"] = list(order)
                        runs.append(pair)
                    s = summarize(runs)
                    key = f"{round(c['target_us'])}us"
                    cell[key] = {"steps_per_run": steps, "warmup_steps": warm, "summary": s, "runs": runs}
                    ci = s.get("slowdown_ci95_pct", ["-", "-"])
                    print(
                        f"{cond:10s} {key:>7s}: slowdown {s.get('slowdown_pct', 'n/a')} % "
                        f"(95% CI {ci[0]} .. {ci[1]}), CPU +{s.get('cpu_increase_pct', 'n/a')} %, "
                        f"excl. run-queue waits {s.get('slowdown_excl_runqueue_pct', 'n/a')} % "
                        f"{s.get('slowdown_excl_runqueue_ci95_pct', '')}, "
                        f"invalid runs {s['invalid_runs']}/{s['pairs']}",
                        flush=True,
                    )
            finally:
                if comp:
                    comp.__exit__(None, None, None)
            cell["loadavg_after"] = load_average()
            results[cond] = cell
    summary = {
        f"{cond}_{k}": {
            "slowdown_pct": v["summary"].get("slowdown_pct"),
            "ci95_pct": v["summary"].get("slowdown_ci95_pct"),
            "cpu_increase_pct": v["summary"].get("cpu_increase_pct"),
            "slowdown_excl_runqueue_pct": v["summary"].get("slowdown_excl_runqueue_pct"),
            "excl_runqueue_ci95_pct": v["summary"].get("slowdown_excl_runqueue_ci95_pct"),
            "invalid_runs": v["summary"]["invalid_runs"],
        }
        for cond, cell in results.items()
        for k, v in cell.items()
        if isinstance(v, dict) and "summary" in v
    }
    summary["all_delivered"] = all(v["invalid_runs"] == 0 for v in summary.values() if isinstance(v, dict))
    loads = [cell[k][0] for cell in results.values() for k in ("loadavg_before", "loadavg_after")]
    cpus = os.cpu_count() or 1
    # More runnable threads than cores: the scheduler, not the client, decides the wall times (a
    # hinted child whose threads sleep and wake gets a larger share than a pure spinner), so only
    # cpu_increase_pct and slowdown_excl_runqueue_pct are readable then.
    summary["machine_oversubscribed"] = max(loads) > cpus
    if summary["machine_oversubscribed"]:
        print(f"WARNING: load average up to {max(loads)} on {cpus} cores: wall-time slowdowns are not interpretable")
    write_result(
        args.out,
        "gil_loop",
        parameters={k: v for k, v in vars(args).items() if k != "out"},
        client=client,
        calibration=cal,
        loadavg_end=load_average(),
        run_time_s=round(time.monotonic() - started, 1),
        results=results,
        summary=summary,
    )
    if not summary["all_delivered"]:
        print("INVALID: some hinted runs did not deliver every event (see results.*.invalid)")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
