"""Span finalisation throughput and storage: correlate + store, in process, old vs new in one run.

What it measures (issue 10, deliverable 1): the cost of turning ended spans into stored rows -
the correlator's per-tick finalisation and the store's writer (encoding, SQLite insert, commit) -
at a realistic shape: 16 processes x N threads, ~50 signals per span (counters with thread scope,
gauges, the client's edge readings on every span), spans ended at a given rate per process,
samples at 10 Hz.  Inputs (span rows, samples) are built before the clock starts; begin/end calls,
every on_sample and the writer thread until its last commit are inside it.

* ``spans_per_s``: spans / wall seconds (begin/end + ticks + writer until flushed);
* ``us_per_span``: process CPU seconds (all threads, so the writer too) / spans: the all-in cost;
* ``finalise_us_per_span``: CPU of the calling thread in on_sample (the correlator's finalisation) / spans;
* ``bytes_per_span``: file size after a WAL checkpoint (no VACUUM) / spans: what a span costs on disk.

"old" is the per-span correlator and JSON store of commit 7b3ad84 (git show into a temp package),
"new" is the working tree; they run interleaved, each repeat on fresh stores, same inputs, and the
counter deltas of the two are compared span by span.  Every span must be written (0 shed).

    nice -n 19 .venv/bin/python benchmarks/bench_spans.py [--repeats 3] [--ticks 30] [--out FILE]
"""

from __future__ import annotations

import argparse
import importlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import RESULTS, write_result

REPO = Path(__file__).resolve().parents[1]
OLD_COMMIT = "7b3ad84"
OLD_FILES = ("correlate.py", "store.py", "edge_cpu.py", "power_series.py", "model.py", "errors.py")
MS = 1_000_000


def old_package(tmp: Path) -> Any:
    """The daemon's correlate + store as of OLD_COMMIT, importable as gpuos_hintd_old."""
    pkg = tmp / "gpuos_hintd_old"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    for name in OLD_FILES:
        src = subprocess.run(
            ["git", "-C", str(REPO), "show", f"{OLD_COMMIT}:daemon/gpuos_hintd/{name}"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        (pkg / name).write_text(src)
    sys.path.insert(0, str(tmp))
    return (
        importlib.import_module("gpuos_hintd_old.correlate"),
        importlib.import_module("gpuos_hintd_old.store"),
        importlib.import_module("gpuos_hintd_old.model"),
    )


def metrics(model: Any) -> dict[str, Any]:
    """~50 signals per span: what proc + syscalls + nvml declare, in shape (counters, gauges, scopes)."""
    m = model.Metric
    out = {}
    for n in ("cpu_user_ns", "cpu_sys_ns", "minflt", "majflt", "io_syscr", "io_syscw", "io_rchar_bytes"):
        out[n] = m("1", "counter")
    for n in ("io_wchar_bytes", "io_read_bytes", "io_write_bytes", "ctx_vol", "ctx_invol", "gpu_energy_mj"):
        out[n] = m("1", "counter")
    for n in ("thread_cpu_ns", "run_delay_ns", "thread_minflt", "thread_majflt"):
        out[n] = m("1", "counter", "thread")
    for n in ("rss_bytes", "threads", "threads_running", "threads_sync_wait", "gpu_util_pct", "gpu_mem_util_pct"):
        out[n] = m("1", "gauge")
    for n in ("gpu_power_mw", "gpu_mem_bytes", "gpu_sm_clock_mhz", "gpu_dev_maps", "gpu_dev_fds", "gpu_devices"):
        out[n] = m("1", "gauge")
    for n in ("thread_running", "thread_in_io", "thread_in_sync_wait"):
        out[n] = m("1", "gauge", "thread")
    return out


def workload(model: Any, procs: int, threads: int, ticks: int, rate_hz: int) -> dict[str, Any]:
    """Span rows and samples for every process and tick (built before the clock starts)."""
    per_tick = rate_hz // 10  # spans per process per 100 ms tick
    keys = [model.ProcKey(10_000 + p, 1_000 + p) for p in range(procs)]
    plan = []  # per tick: [(key, [(row, ru_b, t_end, ru_e)], sample)]
    span_id = 0
    for k in range(1, ticks + 1):
        t0, t1 = (k - 1) * 100 * MS, k * 100 * MS
        tick = []
        for p, key in enumerate(keys):
            spans = []
            step = (t1 - t0) // per_tick
            for j in range(per_tick):
                span_id += 1
                tid = key.pid + j % threads
                s, e = t0 + j * step + 1000, t0 + j * step + step - 2000
                row = model.SpanRow(
                    "boot", key.pid, key.start, span_id, 0, tid, f"step{j % 4}", f"train/step{j % 4}", 2, "train",
                    None, s, s, t0, "open",
                )  # fmt: skip
                cpu = (k * 100 + j) * 50_000
                ru_b = (s - 3000, cpu, cpu * 3, j, 0, 100 + j, 0)
                ru_e = (e, cpu + step // 2, cpu * 3 + step, j + 1, 0, 101 + j, 0)
                spans.append((row, ru_b, e, ru_e))
            values = {
                "cpu_user_ns": k * 60 * MS + p,
                "cpu_sys_ns": k * 20 * MS,
                "minflt": k * 97,
                "majflt": 0,
                "io_syscr": k * 13,
                "io_syscw": k * 7,
                "io_rchar_bytes": k * 1_334_122,
                "io_wchar_bytes": k * 3,
                "io_read_bytes": 0,
                "io_write_bytes": k * 4096,
                "ctx_vol": k * 11,
                "ctx_invol": k,
                "gpu_energy_mj": k * 30_000 + p,
                "rss_bytes": 600_000_000 + k * 4096,
                "threads": threads + 17,
                "threads_running": 1,
                "threads_sync_wait": 20,
                "gpu_util_pct": (k * 7) % 100,
                "gpu_mem_util_pct": 2,
                "gpu_power_mw": 134_000 + k,
                "gpu_mem_bytes": 1_468_006_400,
                "gpu_sm_clock_mhz": 1980,
                "gpu_dev_maps": 31,
                "gpu_dev_fds": 23,
                "gpu_devices": 1,
            }
            th = {
                key.pid + i: {
                    "thread_cpu_ns": k * 50 * MS // threads + i,
                    "run_delay_ns": k * 1000,
                    "thread_minflt": k * 90,
                    "thread_majflt": 0,
                    "thread_running": 1,
                    "thread_in_io": 0,
                    "thread_in_sync_wait": 0,
                }
                for i in range(threads)
            }
            tick.append((key, spans, model.ProcSample(values, th), t1))
        plan.append(tick)
    return {"keys": keys, "plan": plan, "spans": span_id}


def run_once(corr_mod: Any, store_mod: Any, model: Any, args: argparse.Namespace, where: Path) -> dict[str, Any]:
    load = workload(model, args.procs, args.threads, args.ticks, args.rate)
    store = store_mod.Store(where, max_queue_rows=10_000_000)
    emitted: list[Any] = []

    def emit(rows: list[Any]) -> None:
        emitted.extend(rows)
        store.submit("spans", rows)

    corr = corr_mod.Correlator(metrics(model), emit)
    if hasattr(store, "register_metrics"):
        store.register_metrics(metrics(model))
    for key in load["keys"]:
        corr.on_sample(key, 0, model.ProcSample({}, {}))
    store.flush(30)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    fin = 0.0
    for tick in load["plan"]:
        for key, spans, sample, t1 in tick:
            for row, ru_b, t_end, ru_e in spans:
                corr.begin(key, row, ru_b)
                corr.end(key, row.span_id, t_end, "ok", ru_e)
            f0 = time.thread_time()
            corr.on_sample(key, t1, sample)
            fin += time.thread_time() - f0
    flushed = store.flush(120)
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    health = store.health()
    store.close()
    conn = __import__("sqlite3").connect(where / "gpuos-hint.db")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    size = (where / "gpuos-hint.db").stat().st_size
    n = load["spans"]
    return {
        "spans": n,
        "emitted": len(emitted),
        "written": health["written"]["spans"],
        "shed_rows": health["shed_rows"],
        "flushed": flushed,
        "wall_s": round(wall, 4),
        "cpu_s": round(cpu, 4),
        "finalise_cpu_s": round(fin, 4),
        "spans_per_s": round(n / wall),
        "us_per_span": round(cpu / n * 1e6, 3),
        "finalise_us_per_span": round(fin / n * 1e6, 3),
        "bytes_per_span": round(size / n, 1),
        "file_bytes": size,
        "signals_per_span": len(emitted[0].signals) if emitted else 0,
        "_rows": {r.span_id: r.signals for r in emitted[:: max(1, n // 500)]},
    }


def spread(runs: list[dict[str, Any]], field: str) -> dict[str, float]:
    vals = [r[field] for r in runs]
    return {"median": statistics.median(vals), "min": min(vals), "max": max(vals)}


def compare(old: dict[int, dict[str, Any]], new: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """Largest relative difference of the shared numeric signals over the spans both kept."""
    worst, keys_differ, n = 0.0, 0, 0
    for sid, o in old.items():
        s = new.get(sid)
        if s is None:
            continue
        n += 1
        keys_differ += set(o) != set(s)
        for k, v in o.items():
            w = s.get(k)
            if isinstance(v, bool) or not isinstance(v, int | float) or not isinstance(w, int | float):
                continue
            worst = max(worst, abs(v - w) / max(abs(v), 1.0))
    return {"spans_compared": n, "spans_with_other_keys": keys_differ, "max_rel_diff": worst}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--procs", type=int, default=16)
    ap.add_argument("--threads", type=int, default=4)
    ap.add_argument("--ticks", type=int, default=30)
    ap.add_argument("--rate", type=int, default=1000, help="spans per second per process")
    ap.add_argument("--no-old", action="store_true", help="only the working tree")
    ap.add_argument("--out", default=str(RESULTS / "spans.json"))
    args = ap.parse_args()
    sys.path.insert(0, str(REPO / "daemon"))
    from gpuos_hintd import correlate, model, store

    tmp = Path(tempfile.mkdtemp(prefix="bench_spans_"))
    try:
        variants = {"new": (correlate, store, model)}
        if not args.no_old:
            variants["old"] = old_package(tmp)
        runs: dict[str, list[dict[str, Any]]] = {k: [] for k in variants}
        for r in range(args.repeats):
            for name in sorted(variants, key=lambda v: (v != "old") ^ (r % 2 == 1)):  # interleaved, order alternates
                got = run_once(*variants[name], args, tmp / f"{name}{r}")
                runs[name].append(got)
                print(
                    f"{name} #{r}: {got['spans']} spans {got['spans_per_s']}/s {got['us_per_span']} us/span "
                    f"(finalise {got['finalise_us_per_span']}) {got['bytes_per_span']} B/span written={got['written']}"
                )
        same = compare(runs["old"][0]["_rows"], runs["new"][0]["_rows"]) if "old" in runs else None
        summary = {}
        for name, rs in runs.items():
            summary[name] = {
                f: spread(rs, f)
                for f in ("spans_per_s", "us_per_span", "finalise_us_per_span", "bytes_per_span", "wall_s")
            }
            summary[name]["all_written"] = all(x["written"] == x["spans"] and x["shed_rows"] == 0 for x in rs)
        if "old" in summary:
            summary["speedup_spans_per_s"] = round(
                summary["new"]["spans_per_s"]["median"] / summary["old"]["spans_per_s"]["median"], 2
            )
            summary["storage_ratio"] = round(
                summary["old"]["bytes_per_span"]["median"] / summary["new"]["bytes_per_span"]["median"], 2
            )
        for rs in runs.values():
            for x in rs:
                x.pop("_rows", None)
        write_result(
            args.out,
            "bench_spans",
            command="nice -n 19 .venv/bin/python benchmarks/bench_spans.py " + " ".join(sys.argv[1:]),
            shape={
                "processes": args.procs,
                "threads_per_process": args.threads,
                "ticks": args.ticks,
                "tick_hz": 10,
                "spans_per_s_per_process": args.rate,
                "signals_per_span": runs["new"][0]["signals_per_span"],
            },
            old=f"daemon/gpuos_hintd correlate.py + store.py at {OLD_COMMIT}" if "old" in runs else None,
            machine_note="shared 2-core machine, other jobs running; run under nice -n 19",
            load_avg=os.getloadavg(),
            summary=summary,
            old_vs_new_signals=same,
            runs=runs,
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
