"""Accuracy of per-phase CPU figures against the program's own clocks (not the daemon's).

A hinted program alternates phases of 0.5 to 100 ms - CPU spin, file I/O, syscalls, each
followed by a sleep of the same length - plus the hot 4 ms spin / cold 6 ms sleep x 300 case
of issue 9.  Inside every phase it reads its own thread clock (time.thread_time_ns), process
clock (CLOCK_PROCESS_CPUTIME_ID) and getrusage(RUSAGE_THREAD) context switches: that is the
truth, recorded in-process and written to a file the daemon never sees.  The real daemon
(default settings unless a config says otherwise) records the spans; the script matches them
to the truth by start time and reports, per phase name:

* total thread CPU error (sum over the phase's spans vs the thread clock), in %;
* for sleep phases, the share of the case's CPU they were given (truth: ~0 %);
* per-span median absolute error, and how often the stated bound held: the span's edge-to-edge thread
  CPU lies between the body's own reading (inside the block) and a reading around the whole block
  (outside it), and the bound holds when the stated interval meets that one;
* process CPU and voluntary context switches the same way.

Configurations (run one after another, each its own daemon): the client's edge readings on
(the default) and off (GPUOS_HINT_RUSAGE=0: the 10 Hz interpolation, as before issue 9), at
several sampling rates.

    python benchmarks/accuracy_cpu.py                 # full: ~2-3 min, JSON + PNG in benchmarks/results/
    python benchmarks/accuracy_cpu.py --small --out /tmp/acc.json --no-plot   # what the test runs
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import RESULTS, daemon_env, start_daemon, write_result

LENGTHS_MS = (0.5, 1.0, 2.0, 5.0, 20.0, 100.0)
MIXES = ("spin", "io", "syscall")
#: (name, edge readings on, sample_hz)
CONFIGS_FULL = (("edges@10Hz", True, 10.0), ("interp@10Hz", False, 10.0), ("interp@2Hz", False, 2.0),
                ("interp@50Hz", False, 50.0), ("edges@2Hz", True, 2.0))  # fmt: skip
CONFIGS_SMALL = (("edges@10Hz", True, 10.0), ("interp@10Hz", False, 10.0))

CHILD = textwrap.dedent(
    """
    import json, os, resource, sys, time
    import gpuos_client as h

    plan = json.loads(sys.argv[1])
    out = sys.argv[2]
    PCPU = time.CLOCK_PROCESS_CPUTIME_ID
    fd = os.open(os.path.join(os.path.dirname(out), "io.dat"), os.O_RDWR | os.O_CREAT, 0o600)
    buf = b"x" * 4096

    def body(mix, ns):
        end = time.monotonic_ns() + ns
        if mix == "sleep":
            time.sleep(ns / 1e9)
        elif mix == "spin":
            stop = time.thread_time_ns() + ns
            while time.thread_time_ns() < stop:
                pass
        elif mix == "io":
            i = 0
            while time.monotonic_ns() < end:
                os.pwrite(fd, buf, (i % 64) * 4096)
                os.pread(fd, 4096, ((i * 7) % 64) * 4096)
                i += 1
        elif mix == "syscall":
            while time.monotonic_ns() < end:
                os.stat("/")
                os.getppid()

    rows = []
    time.sleep(0.3)  # the daemon's first sample of this process
    for case in plan:
        for i in range(case["reps"]):
            for name, mix, ns in case["phases"]:
                o0 = time.thread_time_ns()  # outside the block: the span's edges lie in between
                with h.phase(name):
                    t0 = time.monotonic_ns()
                    c0, p0 = time.thread_time_ns(), time.clock_gettime_ns(PCPU)
                    r0 = resource.getrusage(resource.RUSAGE_THREAD)
                    body(mix, ns)
                    r1 = resource.getrusage(resource.RUSAGE_THREAD)
                    c1, p1 = time.thread_time_ns(), time.clock_gettime_ns(PCPU)
                o1 = time.thread_time_ns()
                rows.append([name, t0, c1 - c0, p1 - p0, r1.ru_nvcsw - r0.ru_nvcsw, r1.ru_nivcsw - r0.ru_nivcsw,
                             o1 - o0])
        time.sleep(0.05)
    h.flush()
    with open(out, "w") as f:
        json.dump(rows, f)
    """
)


def plan(small: bool) -> list[dict[str, Any]]:
    """The cases: each mix at each length alternating with a sleep of the same length; hot/cold."""
    lengths = (1.0, 5.0, 20.0) if small else LENGTHS_MS
    mixes = ("spin", "io") if small else MIXES
    budget = 0.15 if small else 1.0  # seconds of each mix per case
    out = []
    for ms in lengths:
        reps = max(5 if small else 10, min(200, int(budget / (2 * ms / 1000))))
        ns = int(ms * 1e6)
        for mix in mixes:
            out.append({"case": f"{mix}{ms:g}", "reps": reps, "ms": ms, "mix": mix,
                        "phases": [[f"{mix}{ms:g}", mix, ns], [f"{mix}{ms:g}.rest", "sleep", ns]]})  # fmt: skip
    n = 60 if small else 300
    out.append({"case": "hotcold", "reps": n, "ms": 4.0, "mix": "spin",
                "phases": [["hot", "spin", 4_000_000], ["cold", "sleep", 6_000_000]]})  # fmt: skip
    return out


def run_config(name: str, edges: bool, hz: float, cases: list[dict[str, Any]], tmp: Path) -> dict[str, Any]:
    run = tmp / name.replace("@", "_")
    env = daemon_env(run)
    env["GPUOS_HINT_RUSAGE"] = "1" if edges else "0"
    repo = Path(__file__).resolve().parent.parent
    env["PYTHONPATH"] = os.pathsep.join([str(repo / "client"), str(repo / "daemon"), env.get("PYTHONPATH", "")])
    args = ["--log-level", "warning"] + ([] if hz == 10.0 else ["--sample-hz", str(hz)])
    daemon = start_daemon(env, args, log=run / "daemon.log")
    try:
        truth_path = run / "truth.json"
        subprocess.run([sys.executable, "-c", CHILD, json.dumps(cases), str(truth_path)], env=env, check=True)
        truth = json.loads(truth_path.read_text())
        spans = _wait_spans(env, len(truth))
    finally:
        daemon.terminate()
        daemon.wait(15)
    return {"config": name, "edge_readings": edges, "sample_hz": hz, **score(cases, truth, spans)}


def _wait_spans(env: dict[str, str], n: int, timeout_s: float = 60.0) -> list[dict[str, Any]]:
    from gpuos_hintd.control import request

    db = Path(env["GPUOS_HINT_STATE_DIR"]) / "gpuos-hint.db"
    deadline = time.monotonic() + timeout_s
    rows: list[Any] = []
    while time.monotonic() < deadline:
        try:
            request(env["GPUOS_HINT_CONTROL"], "sync", timeout_s=10.0)
        except Exception:
            pass
        if db.exists():
            from gpuos_hintd.store import read as store_read

            conn = store_read.connect(db)  # spans with their signals (schema v2 packs them)
            try:
                rows = conn.execute("SELECT name, start_ns, end_ns, status, signals FROM spans").fetchall()
            finally:
                conn.close()
            if len(rows) >= n:
                break
        time.sleep(0.3)
    if len(rows) < n:
        raise SystemExit(f"the daemon recorded {len(rows)} spans of {n}")
    return [{"name": r[0], "start_ns": r[1], "end_ns": r[2], "status": r[3], "signals": json.loads(r[4])} for r in rows]


def score(cases: list[dict[str, Any]], truth: list[list[Any]], spans: list[dict[str, Any]]) -> dict[str, Any]:
    """Match each truth row to the span of its name that began just before it; compare."""
    by_name: dict[str, list[dict[str, Any]]] = {}
    for s in spans:
        by_name.setdefault(s["name"], []).append(s)
    for v in by_name.values():
        v.sort(key=lambda s: s["start_ns"])
    pairs: dict[str, list[tuple[list[Any], dict[str, Any]]]] = {}
    unmatched = 0
    for row in truth:
        cands = by_name.get(row[0], [])
        # the span starts a few us before the in-phase truth readings
        best = min(cands, key=lambda s: abs(row[1] - s["start_ns"]), default=None)
        if best is None or abs(row[1] - best["start_ns"]) > 1_000_000:
            unmatched += 1
            continue
        pairs.setdefault(row[0], []).append((row, best))
    phases = {}
    for case in cases:
        names = [p[0] for p in case["phases"]]
        case_true = sum(r[2] for n in names for r, _ in pairs.get(n, []))
        case_got = sum(s["signals"].get("thread_cpu_ns") or 0 for n in names for _, s in pairs.get(n, []))
        for name, mix, ns in case["phases"]:
            ps = pairs.get(name, [])
            if not ps:
                continue
            t_thr = sum(r[2] for r, _ in ps)
            g_thr = sum(s["signals"].get("thread_cpu_ns") or 0 for _, s in ps)
            t_proc = sum(r[3] for r, _ in ps)
            g_proc = sum(_proc_cpu(s["signals"]) for _, s in ps)
            errs = [abs((s["signals"].get("thread_cpu_ns") or 0) - r[2]) for r, s in ps]
            # The span's thread CPU is edge to edge: at least the body's own reading (r[2], inside
            # the block) and at most the reading around the whole block (r[6], outside it).  The
            # stated bound holds when [value - err, value + err] meets [inside, outside].
            within = [
                _meets(s["signals"].get("thread_cpu_ns") or 0, s["signals"].get("thread_cpu_ns_err") or 0, r[2], r[6])
                for r, s in ps
                if "thread_cpu_ns_err" in s["signals"] or s["signals"].get("cpu_exact")
            ]
            bracket = [r[6] - r[2] for r, _ in ps]
            phases[name] = {
                "case": case["case"],
                "mix": mix,
                "length_ms": ns / 1e6,
                "spans": len(ps),
                "truth_thread_cpu_ms": round(t_thr / 1e6, 3),
                "daemon_thread_cpu_ms": round(g_thr / 1e6, 3),
                "thread_cpu_err_pct": _pct(g_thr, t_thr) if mix != "sleep" else None,
                "share_of_case_cpu_pct": round(100 * g_thr / case_got, 2) if case_got else None,
                "truth_share_of_case_cpu_pct": round(100 * t_thr / case_true, 2) if case_true else None,
                "truth_proc_cpu_ms": round(t_proc / 1e6, 3),
                "daemon_proc_cpu_ms": round(g_proc / 1e6, 3),
                "proc_cpu_err_pct": _pct(g_proc, t_proc) if mix != "sleep" else None,
                "span_median_abs_err_us": round(statistics.median(errs) / 1e3, 1),
                "span_median_abs_err_pct_of_length": round(100 * statistics.median(errs) / ns, 2),
                "within_stated_bound_pct": round(100 * sum(within) / len(within), 1) if within else None,
                "hint_cpu_in_block_median_us": round(statistics.median(bracket) / 1e3, 1),
                "exact_pct": round(100 * sum(bool(s["signals"].get("cpu_exact")) for _, s in ps) / len(ps), 1),
                "truth_ctx_vol": sum(r[4] for r, _ in ps),
                "daemon_ctx_vol": round(sum(s["signals"].get("ctx_vol") or 0 for _, s in ps), 1),
            }
    return {"spans_matched": sum(len(v) for v in pairs.values()), "spans_unmatched": unmatched, "phases": phases}


def _meets(value: float, err: float, inside: float, outside: float) -> bool:
    """The stated interval [value - err, value + err] meets the true one [inside, outside]."""
    return value + err >= inside and value - err <= outside


def _proc_cpu(sig: dict[str, Any]) -> float:
    if "proc_cpu_ns" in sig:
        return float(sig["proc_cpu_ns"])
    return float((sig.get("cpu_user_ns") or 0) + (sig.get("cpu_sys_ns") or 0))


def _pct(got: float, true: float) -> float | None:
    return round(100.0 * (got - true) / true, 2) if true else None


def plot(results: list[dict[str, Any]], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot", file=sys.stderr)
        return False
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for res in results:
        for mix, marker in (("spin", "o"), ("io", "s"), ("syscall", "^")):
            pts = sorted(
                (p["length_ms"], abs(p["thread_cpu_err_pct"]))
                for p in res["phases"].values()
                if p["mix"] == mix and p["case"] != "hotcold" and p["thread_cpu_err_pct"] is not None
            )
            if pts:
                axes[0].plot(*zip(*pts, strict=True), marker=marker, label=f"{res['config']} {mix}")
            rest = sorted(
                (p["length_ms"], p["share_of_case_cpu_pct"])
                for n, p in res["phases"].items()
                if n.endswith(".rest") and p["case"].startswith(mix) and p["share_of_case_cpu_pct"] is not None
            )
            if rest:
                axes[1].plot(*zip(*rest, strict=True), marker=marker, label=f"{res['config']} {mix}")
    axes[0].set(xscale="log", yscale="symlog", xlabel="phase length (ms)", ylabel="|total thread CPU error| (%)",
                title="busy phase: total CPU vs the thread clock", ylim=(0, 150))  # fmt: skip
    axes[0].axhline(5, color="grey", ls="--", lw=0.8)
    axes[1].set(xscale="log", xlabel="phase length (ms)", ylabel="share of the case's CPU given (%)",
                title="the sleep phase next to it (truth ~0 %)")  # fmt: skip
    axes[1].axhline(5, color="grey", ls="--", lw=0.8)
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return True


def summary(res: dict[str, Any]) -> dict[str, Any]:
    ph = res["phases"]
    busy = [
        p for p in ph.values() if p["mix"] != "sleep" and p["length_ms"] >= 1 and p["thread_cpu_err_pct"] is not None
    ]
    return {
        "config": res["config"],
        "hot_thread_cpu_err_pct": ph.get("hot", {}).get("thread_cpu_err_pct"),
        "cold_share_of_cpu_pct": ph.get("cold", {}).get("share_of_case_cpu_pct"),
        "max_abs_total_thread_cpu_err_pct_ge_1ms": max((abs(p["thread_cpu_err_pct"]) for p in busy), default=None),
        "max_abs_total_proc_cpu_err_pct_ge_1ms": max(
            (abs(p["proc_cpu_err_pct"]) for p in busy if p["proc_cpu_err_pct"] is not None), default=None
        ),
        "min_within_bound_pct": min(
            (p["within_stated_bound_pct"] for p in ph.values() if p["within_stated_bound_pct"] is not None),
            default=None,
        ),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--small", action="store_true", help="few lengths and repetitions (the test suite's size)")
    ap.add_argument("--out", type=Path, default=RESULTS / "accuracy_cpu.json")
    ap.add_argument("--no-plot", action="store_true")
    ap.add_argument("--configs", help="comma-separated subset of the configuration names")
    ap.add_argument("--keep", type=Path, help="keep the daemons' stores and the truth files here")
    ap.add_argument("--replot", action="store_true", help="only redraw the plot from --out's results")
    args = ap.parse_args(argv)
    if args.replot:
        return 0 if plot(json.loads(args.out.read_text())["results"], args.out.with_suffix(".png")) else 1
    cases = plan(args.small)
    configs = CONFIGS_SMALL if args.small else CONFIGS_FULL
    if args.configs:
        want = set(args.configs.split(","))
        configs = tuple(c for c in configs if c[0] in want)
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="gpuos-acc-") as tmp:
        where = args.keep or Path(tmp)
        results = [run_config(n, e, hz, cases, where) for n, e, hz in configs]
    png = args.out.with_suffix(".png")
    plotted = not args.no_plot and plot(results, png)
    write_result(
        args.out,
        "accuracy_cpu",
        command="python benchmarks/accuracy_cpu.py" + (" --small" if args.small else ""),
        size="small" if args.small else "full",
        wall_s=round(time.monotonic() - t0, 1),
        summary=[summary(r) for r in results],
        plot=png.name if plotted else None,
        results=results,
    )
    for s in (summary(r) for r in results):
        print(json.dumps(s))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
