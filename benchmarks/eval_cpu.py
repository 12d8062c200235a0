"""The evaluation on this machine's CPU, repeated: --seeds experiments at each of --rates.

One *seed* = one experiment: a real gpuos-hintd sampling at the rate, two llm and two train runs
on NumPy with sizes drawn from the seed (so leave-one-run-out has runs to leave out), evaluated
on its own (``gpuos_hintd.evaluate``, with the ruptures / scikit-learn baselines when the ``eval``
extra is installed).  Every headline number is then a mean over seeds with a percentile
bootstrap 95 % CI over seeds (``stats.bootstrap_ci``).  Per signal, one-channel PELT gives
boundary recall by phase length (ms), the measured side of "minimum detectable phase length".
For seed 0 at the first rate, an llm and a train twin also run with --no-hints, sampled by this
harness with the daemon's proc + syscalls samplers (a process that sends no hints is not sampled
by the daemon).  The recorded H100 store (tests/data/eval) is evaluated once.

Writes benchmarks/results/eval_cpu.json, the full per-seed report of seed 0 at each rate
(benchmarks/results/eval_cpu_report_<rate>hz.md), the H100 report (eval_h100_report.md), and
replaces the ``<!-- BEGIN GENERATED: name -->`` blocks of docs/evaluation.md in place - the prose
around them is never touched.

    nice -n 19 .venv/bin/python benchmarks/eval_cpu.py [--seeds 10] [--rates 10,5,20] [--no-write]
"""

from __future__ import annotations

import argparse
import itertools
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from _harness import daemon_env, start_daemon
from gpuos_hintd import procfs
from gpuos_hintd.evaluate import evaluate, evaluate_store, report, stats
from gpuos_hintd.evaluate.dataset import (
    Run,
    align_features,
    load_runs,
    metric_kinds,
    series_from_rows,
    transform,
    windows_of,
)
from gpuos_hintd.evaluate.segment import match, segment
from gpuos_hintd.model import ProcKey, Target
from gpuos_hintd.samplers.proc import ProcSampler
from gpuos_hintd.samplers.syscalls import SyscallSampler

ROOT = Path(__file__).resolve().parent.parent
H100_DB = ROOT / "tests" / "data" / "eval" / "h100_run.db"
RESULTS = ROOT / "benchmarks" / "results"
OUT_JSON = RESULTS / "eval_cpu.json"
OUT_MD = ROOT / "docs" / "evaluation.md"
#: Phase-length buckets (ms) of the recall-by-length curves.
LENGTH_EDGES_MS = (0, 25, 50, 100, 200, 400, 800, 1600, 1e9)


def configs(seed: int) -> tuple[list[tuple[int, ...]], list[tuple[int, ...]]]:
    """Two llm and two train configurations drawn from the seed (different sizes, so runs differ)."""
    rng = np.random.default_rng(seed)
    llm = [
        (seed * 10 + i, int(rng.choice([512, 640, 768])), int(rng.choice([768, 1024])), int(rng.choice([48, 64, 96])),
         int(rng.choice([2, 3])))
        for i in range(2)
    ]  # fmt: skip
    train = [
        (seed * 10 + i, int(rng.choice([32, 40, 48])), int(rng.choice([1536, 2048])), int(rng.choice([768, 1024])))
        for i in range(2)
    ]
    return llm, train


def llm_args(seed: int, hidden: int, prompt: int, steps: int, requests: int) -> list[str]:
    return [
        "gpuos_workloads.llm",
        "--device=cpu",
        f"--seed={seed}",
        f"--hidden={hidden}",
        f"--prompt-tokens={prompt}",
        f"--steps={steps}",
        f"--requests={requests}",
        "--quiet",
    ]


def train_args(seed: int, steps: int, batch: int, hidden: int) -> list[str]:
    return [
        "gpuos_workloads.train",
        "--device=cpu",
        f"--seed={seed}",
        f"--steps={steps}",
        f"--batch={batch}",
        f"--hidden={hidden}",
        "--checkpoint-every=8",
        "--quiet",
    ]


def start_eval_daemon(tmp: Path, hz: float) -> tuple[subprocess.Popen[bytes], dict[str, str]]:
    env = daemon_env(tmp / "run")
    env["GPUOS_HINT_STATE_DIR"] = str(tmp / "state")
    env["PYTHONUNBUFFERED"] = "1"
    return start_daemon(env, ("--sample-hz", str(hz), "--store-samples-hz", "0"), log=tmp / "daemon.log"), env


def run_workload(argv: list[str], env: dict[str, str]) -> int:
    """Run one hinted workload to the end; its pid (the run's key in the store)."""
    proc = subprocess.Popen([sys.executable, "-m", *argv], env=env, stdout=subprocess.DEVNULL)
    if proc.wait() != 0:
        raise SystemExit(f"{argv[0]} failed: rc {proc.returncode}")
    return proc.pid


def run_sampled(argv: list[str], env: dict[str, str], hz: float) -> Run:
    """Run an unhinted workload and sample it with the daemon's proc + syscalls samplers."""
    samplers = [ProcSampler(), SyscallSampler()]
    proc = subprocess.Popen([sys.executable, "-m", *argv], env=env, stdout=subprocess.DEVNULL)
    rows: list[tuple[int, dict[str, Any]]] = []
    stop = threading.Event()

    def loop() -> None:
        key = None
        period = 1.0 / hz
        nxt = time.monotonic()
        while not stop.is_set():
            try:
                if key is None:
                    key = ProcKey(proc.pid, int(procfs.read_stat(procfs.PROCFS, proc.pid)["starttime"]))
                now = time.monotonic_ns()
                values: dict[str, Any] = {}
                for s in samplers:
                    got = s.sample([Target(key)], now).get(key)
                    if got is not None:
                        values.update(got.values)
                if values:
                    rows.append((now, values))
            except Exception:  # the process is starting or gone
                pass
            nxt += period
            stop.wait(max(nxt - time.monotonic(), 0))

    t = threading.Thread(target=loop, daemon=True)
    t.start()
    proc.wait()
    stop.set()
    t.join()
    ts, raw = series_from_rows(rows)
    return Run(f"{argv[0].rsplit('.', 1)[-1]}:nohints", argv[0].rsplit(".", 1)[-1], ts, raw, [], hinted=False)


def nohints_comparison(store: Path, unhinted: list[Run]) -> list[dict[str, Any]]:
    """Per workload: the seed-0 hinted run vs its unhinted twin - signal medians and change-point rates."""
    import sqlite3

    conn = sqlite3.connect(f"file:{store}?mode=ro", uri=True)
    hinted = load_runs(conn)
    conn.close()
    kinds = metric_kinds()
    out = []
    for u in unhinted:
        h = next(r for r in hinted if r.workload == u.workload)  # the first run: seed 0, same sizes
        wh, wu = windows_of(h, kinds), windows_of(u, kinds)
        align_features([wh, wu])
        rows = []
        for j, name in enumerate(wh.feature_names):
            a, b = np.nanmedian(wh.features[:, j]), np.nanmedian(wu.features[:, j])
            a90, b90 = np.nanpercentile(wh.features[:, j], 90), np.nanpercentile(wu.features[:, j], 90)
            rows.append({"metric": name, "hinted_p50": a, "unhinted_p50": b, "hinted_p90": a90, "unhinted_p90": b90})
        cps_h = segment(transform(wh.features), 1.0)
        cps_u = segment(transform(wu.features), 1.0)
        out.append(
            {
                "workload": u.workload,
                "hinted_run": h.key,
                "hinted_seconds": round((h.t_ns[-1] - h.t_ns[0]) / 1e9, 2),
                "unhinted_seconds": round((u.t_ns[-1] - u.t_ns[0]) / 1e9, 2),
                "hinted_change_points_per_s": round(len(cps_h) / ((h.t_ns[-1] - h.t_ns[0]) / 1e9), 2),
                "unhinted_change_points_per_s": round(len(cps_u) / ((u.t_ns[-1] - u.t_ns[0]) / 1e9), 2),
                "metrics": [
                    {k: (round(float(v), 3) if isinstance(v, float | np.floating) else v) for k, v in r.items()}
                    for r in rows
                ],
            }
        )
    return out


def per_signal_recall(
    result_runs: list[Run], level: str = "top", seed: int = 0
) -> dict[str, list[tuple[float, int, int]]]:
    """Per feature: (boundary length ms, matched by one-channel PELT (beta 1), matched by chance) per boundary.

    Chance = the same number of boundaries drawn uniformly from the run's sample times: with a
    +-2-period tolerance, short phases sit close to other boundaries and get "found" by luck.
    """
    from gpuos_hintd.evaluate.pipeline import build_windows

    wins = build_windows(result_runs)
    if not wins:
        return {}
    rng = np.random.default_rng(seed)
    period = float(np.median(np.concatenate([w.t1 - w.t0 for w in wins])))
    out: dict[str, list[tuple[float, int, int]]] = {}
    for j, name in enumerate(wins[0].feature_names):
        rows = out.setdefault(name, [])
        for w in wins:
            true, scale = w.timelines[level].boundaries()
            cps = segment(transform(w.features[:, [j]]), 1.0)
            pred = w.t0[np.asarray(cps, dtype=int)] if cps else np.zeros(0)
            m = match(pred, true, 2 * period)
            grid = w.t0[1:]
            rand = rng.choice(grid, size=min(len(cps), len(grid)), replace=False) if len(grid) else np.zeros(0)
            mr = match(rand, true, 2 * period)
            rows += [
                (float(sc) / 1e6, int(hit), int(hr))
                for sc, hit, hr in zip(scale, m.matched_true, mr.matched_true, strict=True)
            ]
    return out


def headline(r: dict[str, Any]) -> dict[str, float]:
    """The numbers of one evaluation that the doc reports, flat."""
    out: dict[str, float] = {}
    for lv, b in r["boundaries"].items():
        out[f"boundary_f1.{lv}.os_only"] = b["os_only"]["f1"]
        out[f"boundary_f1.{lv}.random"] = b["random_same_count_f1_mean"]
        if "f1" in b.get("ruptures_pelt", {}):
            out[f"boundary_f1.{lv}.ruptures_pelt"] = b["ruptures_pelt"]["f1"]
    for lv, lab in r["labelling"].items():
        for model, v in lab.items():
            if isinstance(v, dict) and "accuracy" in v and "n" in v:
                out[f"accuracy.{lv}.{model}"] = v["accuracy"]
                out[f"macro_f1.{lv}.{model}"] = v["macro_f1"]
        best = max(lab[m]["accuracy"] for m in ("decision_tree+segments", "nearest_centroid", "decision_tree"))
        out[f"accuracy.{lv}.best_os_only_minus_same_program_majority"] = round(
            best - lab["majority_per_workload"]["accuracy"], 4
        )
    for lv, a in r["attribution"].items():
        for what, v in a["summary_mean_over_runs"].items():
            out[f"misattributed.{lv}.{what}.true_labels_per_window"] = v["misattributed_share_window_oracle"]
            out[f"misattributed.{lv}.{what}.os_only"] = v["misattributed_share_os_only"]
    short = next((x for x in r["breakdown"]["span_durations"] if x["bucket"] == "< 0.5 period"), None)
    if short:
        out["spans_shorter_than_half_a_period.share_of_spans"] = short["span_share"]
        out["spans_shorter_than_half_a_period.share_of_time"] = short["time_share"]
    return out


def aggregate(per_seed: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    """Mean and bootstrap 95 % CI over seeds of every headline number."""
    keys = sorted({k for h in per_seed for k in h})
    out = {}
    for k in keys:
        vals = [h[k] for h in per_seed if h.get(k) is not None]
        m, lo, hi = stats.bootstrap_ci(vals)
        out[k] = {"mean": round(m, 4), "lo": round(lo, 4), "hi": round(hi, 4), "n": len(vals)}
    return out


def recall_curves(pairs: dict[str, list[tuple[float, int, int]]]) -> dict[str, list[dict[str, Any]]]:
    """Per signal: recall per phase-length bucket (ms) with a bootstrap CI over boundaries."""
    out = {}
    for name, rows in pairs.items():
        if not rows:
            continue
        ls = np.array([r[0] for r in rows])
        hit = np.array([r[1] for r in rows], dtype=float)
        chance = np.array([r[2] for r in rows], dtype=float)
        curve = []
        for lo, hi in itertools.pairwise(LENGTH_EDGES_MS):
            sel = (ls >= lo) & (ls < hi)
            if sel.sum() >= 5:
                m, a, b = stats.bootstrap_ci(hit[sel], n_boot=500)
                curve.append({"lo_ms": lo, "hi_ms": hi, "boundaries": int(sel.sum()), "recall": round(m, 3),
                              "ci": [round(a, 3), round(b, 3)],
                              "chance_recall": round(float(chance[sel].mean()), 3)})  # fmt: skip
        out[name] = curve
    return out


def decimate(run: Run, k: int) -> Run:
    """The run as a k-times slower sampler would have read it: every k-th sample (counters are cumulative)."""
    if k <= 1:
        return run
    return Run(run.key, run.workload, run.t_ns[::k], {n: v[::k] for n, v in run.raw.items()}, run.spans, run.hinted)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=10, help="experiments (default 10)")
    ap.add_argument("--base-hz", type=float, default=20.0, help="the daemon's real sampling rate (default 20)")
    ap.add_argument("--rates", default="10,5,20,2.5", help="rates evaluated: base-hz divided by whole numbers")
    ap.add_argument("--no-write", action="store_true", help="print only; write neither results nor docs")
    ap.add_argument("--out", help="write only this JSON file (no reports, no doc): a side experiment")
    ns = ap.parse_args()
    warnings.filterwarnings("ignore", category=UserWarning)  # sklearn: a constant feature within a class
    rates = [float(r) for r in ns.rates.split(",") if r]
    factors = {hz: round(ns.base_hz / hz) for hz in rates}
    bad = [hz for hz, k in factors.items() if k < 1 or abs(ns.base_hz / k - hz) > 1e-9]
    if bad:
        raise SystemExit(f"rates {bad} are not base-hz {ns.base_hz:g} divided by a whole number")
    t_start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="gpuos-eval-") as tmpdir:
        tmp = Path(tmpdir)
        daemon, env = start_eval_daemon(tmp, ns.base_hz)
        seeds_pids: dict[int, list[int]] = {}
        unhinted: list[Run] = []
        try:
            for seed in range(ns.seeds):
                llm, train = configs(seed)
                pids = [run_workload(llm_args(*c), env) for c in llm]
                pids += [run_workload(train_args(*c), env) for c in train]
                seeds_pids[seed] = pids
                print(f"seed {seed}: runs {pids} ({time.monotonic() - t_start:.0f} s)", flush=True)
                if seed == 0:
                    unhinted = [
                        run_sampled([*llm_args(*llm[0]), "--no-hints"], env, ns.base_hz),
                        run_sampled([*train_args(*train[0]), "--no-hints"], env, ns.base_hz),
                    ]
        finally:
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(15)
        store = tmp / "state" / "gpuos-hint.db"
        import sqlite3

        conn = sqlite3.connect(f"file:{store}?mode=ro", uri=True)
        runs = load_runs(conn)
        conn.close()
        no_hints = nohints_comparison(store, unhinted)
    by_rate: dict[str, Any] = {}
    for hz in rates:
        per_seed, pairs_all, report_md = [], {}, ""
        for seed, pids in seeds_pids.items():
            mine = [decimate(r, factors[hz]) for r in runs if int(r.key.rsplit(":", 1)[1]) in pids]
            res = evaluate(mine)
            if "error" in res:
                print(f"{hz:g} Hz seed {seed}: {res['error']}", flush=True)
                continue
            per_seed.append({"seed": seed, **headline(res)})
            for name, rows in per_signal_recall(mine, seed=seed).items():
                pairs_all.setdefault(name, []).extend(rows)
            if seed == 0:
                report_md = report.markdown(res, f"CPU runs, seed 0 at {hz:g} Hz")
        print(f"{hz:g} Hz evaluated ({time.monotonic() - t_start:.0f} s)", flush=True)
        by_rate[f"{hz:g}"] = {
            "sample_hz": hz,
            "decimation": factors[hz],
            "seeds": len(per_seed),
            "per_seed": per_seed,
            "aggregate": aggregate([{k: v for k, v in h.items() if k != "seed"} for h in per_seed]),
            "per_signal_recall_by_length_ms": recall_curves(pairs_all),
            "no_hints": no_hints if hz == ns.base_hz else [],
            "_report_md": report_md,
        }
    h100 = evaluate_store(H100_DB)
    h100["store"] = str(H100_DB.relative_to(ROOT))
    result = {
        "experiment": "benchmarks/eval_cpu.py",
        "argv": sys.argv[1:],
        "base_hz": ns.base_hz,
        "host": {"cpus": os.cpu_count(), "python": sys.version.split()[0], "numpy": np.__version__},
        "elapsed_s": round(time.monotonic() - t_start, 1),
        "cpu": by_rate,
        "h100_headline": headline(h100),
        "h100_host_vs_device": h100["breakdown"]["host_vs_device"],
    }
    for hz, r in by_rate.items():
        print(f"--- {hz} Hz, {r['seeds']} seeds")
        for k, v in r["aggregate"].items():
            print(f"{k:70s} {v['mean']:.3f} [{v['lo']:.3f}, {v['hi']:.3f}]")
    if ns.out and not ns.no_write:
        for r in by_rate.values():
            r.pop("_report_md", None)
        Path(ns.out).write_text(report.to_json(result))
        print(f"wrote {ns.out}")
    elif not ns.no_write:
        for hz, r in by_rate.items():
            (RESULTS / f"eval_cpu_report_{hz}hz.md").write_text(r.pop("_report_md"))
        (RESULTS / "eval_h100_report.md").write_text(report.markdown(h100, "Recorded H100 run (CuPy, NVML)"))
        OUT_JSON.write_text(report.to_json(result))
        from eval_doc import blocks

        OUT_MD.write_text(report.replace_generated(OUT_MD.read_text(), blocks(result)))
        print(f"wrote {OUT_JSON.relative_to(ROOT)}, the reports and the generated blocks of {OUT_MD.relative_to(ROOT)}")
    print(f"elapsed {result['elapsed_s']} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
