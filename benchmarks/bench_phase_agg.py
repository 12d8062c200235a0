"""Per-span cost of the per-phase aggregation: before (two aggregators) vs after (one).

Before (commit BEFORE): every finalised span went through phase_stats.PhaseStats.add
(Welford per signal) and, with /metrics on, through metrics.PhaseSeries.add (the
exporter's own aggregates) and a second PhaseSeries keyed by identity (export/prom.py).
After: phase_stats.PhaseStats.add_many once per batch, which also feeds the Prometheus
view (metrics.LabelView, no per-span work of its own), plus the identity-keyed instance.

The old modules are loaded from git (``git show BEFORE:...``), so both run in one
process, interleaved, on the same rows: spans shaped like the correlator's (54
signals), 40 (phase, class) keys, batches of 256 (a tick's worth).  Reported: us per
span, median and range over repeats; and a check that both count every span.  Also the
metrics tick hook's cost after the change (it now also builds the status snapshot).

    .venv/bin/python benchmarks/bench_phase_agg.py [--spans 20000] [--repeats 15]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import statistics
import subprocess
import sys
import time
import types
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "daemon"), str(ROOT / "client")]

from gpuos_hintd.metrics import LabelView  # noqa: E402
from gpuos_hintd.model import SpanRow  # noqa: E402
from gpuos_hintd.phase_stats import PhaseStats  # noqa: E402

BEFORE = "7b3ad84"  # main before the aggregators were folded into one


def _old_module(name: str, path: str) -> types.ModuleType:
    src = subprocess.run(["git", "-C", str(ROOT), "show", f"{BEFORE}:{path}"], check=True, capture_output=True).stdout
    code = src.decode().replace("from . import", "from gpuos_hintd import").replace("from .", "from gpuos_hintd.")
    mod = types.ModuleType(name)
    mod.__dict__["__name__"] = name
    sys.modules[name] = mod
    exec(compile(code, f"{BEFORE}:{path}", "exec"), mod.__dict__)
    return mod


def _rows(n: int) -> list[SpanRow]:
    rows = []
    for i in range(n):
        sig: dict[str, Any] = {f"sig_{j}": float(j * i % 97) for j in range(40)}
        sig.update(
            cpu_user_ns=1_000_000 + i % 5000,
            cpu_sys_ns=200_000,
            cpu_pct=55.5,
            thread_cpu_pct=48.0,
            ctx_vol=3,
            gpu_util_pct_mean=71.0,
            gpu_power_mw_mean=250_000.0,
            gpu_energy_j=0.125,
            gpu_energy_mj=125.0,
            gpu_energy_source="power_samples",
            proc_cpu_ns=1_200_000,
            cpu_exact=True,
            rss_bytes=1 << 30,
            majflt=0,
        )
        path = f"step/phase{i % 20}"
        rows.append(
            SpanRow(
                boot_id="b",
                pid=1000 + i % 8,
                pid_start=1,
                span_id=i,
                parent_span_id=0,
                tid=1,
                name=path,
                path=path,
                depth=2,
                workload_class=("training.step", "inference.decode")[i % 2],
                attrs=None,
                start_ns=i * 1000,
                end_ns=i * 1000 + 5_000 + (i * 7919) % 50_000_000,
                start_wall_ns=0,
                status="ok" if i % 50 else "error",
                signals=sig,
            )
        )
    return rows


def _batches(rows: list[SpanRow], size: int = 256) -> list[list[SpanRow]]:
    return [rows[i : i + size] for i in range(0, len(rows), size)]


def _hook_cost(rows: list[SpanRow]) -> dict[str, Any]:
    """MetricsExporter.on_tick (rerank + series + status snapshot), median and max over 200 ticks."""
    try:
        from gpuos_hintd.config import Config
        from gpuos_hintd.metrics import MetricsExporter
        from gpuos_hintd.service import HintService
    except ImportError as exc:  # prometheus-client absent
        return {"skipped": str(exc)}
    out: dict[str, Any] = {}
    for label, n_keys, per_tick in (("20_keys_50_spans", 20, 50), ("2000_keys_churn_200_spans", 2000, 200)):
        svc = HintService(Config(), None, [])
        try:
            exp = MetricsExporter(svc, top_k=50).attach()
            times = []
            for t in range(200):
                batch = []
                for i in range(per_tick):
                    r = rows[(t * per_tick + i) % len(rows)]
                    k = (t * 37 + i * 11) % n_keys if n_keys > 20 else i % n_keys
                    batch.append(dataclasses.replace(r, path=f"phase{k}"))
                svc.phase_stats.add_many(batch)
                t0 = time.perf_counter()
                exp.on_tick(svc)
                times.append((time.perf_counter() - t0) * 1e6)
            out[label] = {"median": round(statistics.median(times), 1), "max": round(max(times), 1)}
        finally:
            svc.worker.close()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spans", type=int, default=20000)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "phase_agg.json")
    args = ap.parse_args()
    old_stats = _old_module("old_phase_stats", "daemon/gpuos_hintd/phase_stats.py")
    old_metrics = _old_module("old_metrics", "daemon/gpuos_hintd/metrics.py")
    rows = _rows(args.spans)
    batches = _batches(rows)
    idents = [("pod-" + str(r.pid % 3), "abc123", "train.service") for r in rows]
    ident_batches = [idents[i : i + 256] for i in range(0, len(idents), 256)]

    def before_status() -> int:
        ps = old_stats.PhaseStats()
        for b in batches:
            for r in b:
                ps.add(r)
        return sum(e.count for e in ps.entries.values())

    def after_status() -> int:
        ps = PhaseStats()
        for b in batches:
            ps.add_many(b)
        return sum(e.count for e in ps.entries.values())

    def before_metrics() -> int:
        ps, series, fleet = old_stats.PhaseStats(), old_metrics.PhaseSeries(50), old_metrics.PhaseSeries(50)
        for b, ib in zip(batches, ident_batches, strict=True):
            for r in b:  # service._on_spans
                ps.add(r)
            for r in b:  # MetricsExporter.on_spans
                series.add(r)
            for r, k in zip(b, ib, strict=True):  # FleetCollector.on_spans (identity lookup not counted)
                fleet.add(r, k)
        assert sum(a.spans for a in fleet.labelled.values()) + fleet.other.spans == len(rows)
        return sum(a.spans for a in series.labelled.values()) + series.other.spans

    def after_metrics() -> int:
        ps, fleet = PhaseStats(), PhaseStats(signals=())
        view, fview = LabelView(ps, 50), LabelView(fleet, 50)
        for b, ib in zip(batches, ident_batches, strict=True):
            ps.add_many(b)
            fleet.add_many(b, ib)
        assert sum(f[0] for _k, f in fview.series()) == len(rows)
        return sum(f[0] for _k, f in view.series())

    cases = {
        "status_only_before": before_status,
        "status_only_after": after_status,
        "with_metrics_before": before_metrics,
        "with_metrics_after": after_metrics,
    }
    times: dict[str, list[float]] = {k: [] for k in cases}
    for name, fn in cases.items():  # warm-up, and every span counted by each
        assert fn() == len(rows), name
    for _ in range(args.repeats):  # interleaved
        for name, fn in cases.items():
            t0 = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - t0) / len(rows) * 1e6)
    res: dict[str, Any] = {
        "what": "per-span cost (us) of per-phase aggregation, old two aggregators vs one",
        "command": " ".join(["python benchmarks/bench_phase_agg.py", *sys.argv[1:]]),
        "before_commit": BEFORE,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "spans": len(rows),
        "keys": 40,
        "signals_per_span": len(rows[0].signals),
        "repeats": args.repeats,
        "us_per_span": {
            k: {"median": round(statistics.median(v), 3), "min": round(min(v), 3), "max": round(max(v), 3)}
            for k, v in times.items()
        },
    }
    med = {k: statistics.median(v) for k, v in times.items()}
    res["speedup"] = {
        "status_only": round(med["status_only_before"] / med["status_only_after"], 2),
        "with_metrics": round(med["with_metrics_before"] / med["with_metrics_after"], 2),
    }
    res["metrics_tick_hook_us"] = _hook_cost(rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=1) + "\n")
    print(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
