"""The asynchronous-pipeline case on an NVIDIA GPU: host spans vs device spans, and what each attributes.

Each trial is two host phases: ``enqueue`` launches K large matmuls on a stream *without* a sync
(the host returns in milliseconds), then ``host_work`` does CPU work for --host-work-s while the GPU
drains the queue; a sync ends the trial.  CUDA events give the device interval of the kernels.  A
thread reads NVML's energy counter and utilisation at --nvml-hz.  Reported per trial and as means
with 95 % CIs: host vs device duration of ``enqueue``, and the share of the kernels' GPU energy
that attribution by *host* spans gives to the wrong phase (``host_work``) - what hints
attribute if they carry host time only, and what OS-only attribution by time does too.
With ``--hints`` the same phases go through gpuos_client with device timing (a daemon must run).

    python3 benchmarks/gpu/async_pipeline.py --out $OUT [--trials 10]      (~30 s)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "daemon"))
from gpuos_hintd.evaluate.stats import mean_ci


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    ap.add_argument("--trials", type=int, default=10)
    ap.add_argument("--n", type=int, default=4096)
    ap.add_argument("--kernels", type=int, default=150)
    ap.add_argument("--host-work-s", type=float, default=0.8)
    ap.add_argument("--nvml-hz", type=float, default=200.0)
    ap.add_argument("--hints", action="store_true")
    ns = ap.parse_args()
    import cupy as cp
    import pynvml

    pynvml.nvmlInit()
    h = pynvml.nvmlDeviceGetHandleByIndex(cp.cuda.Device().id)
    samples: list[tuple[int, float, float]] = []  # (t_ns, energy_mJ, util %)
    stop = threading.Event()

    def poll() -> None:
        while not stop.is_set():
            t = time.monotonic_ns()
            e = float(pynvml.nvmlDeviceGetTotalEnergyConsumption(h))
            u = float(pynvml.nvmlDeviceGetUtilizationRates(h).gpu)
            samples.append((t, e, u))
            time.sleep(1.0 / ns.nvml_hz)

    phase = contextlib.nullcontext
    if ns.hints:
        import gpuos_client

        def phase(name: str):  # type: ignore[no-redef]
            return gpuos_client.phase(name, device=True)

    a = cp.ones((ns.n, ns.n), dtype=cp.float32)
    s = cp.cuda.Stream(non_blocking=True)
    with s:
        _ = a @ a
    s.synchronize()
    th = threading.Thread(target=poll, daemon=True)
    th.start()
    time.sleep(0.5)
    trials = []
    for _ in range(ns.trials):
        ev0, ev1 = cp.cuda.Event(), cp.cuda.Event()
        h0 = time.monotonic_ns()
        with phase("enqueue") if ns.hints else contextlib.nullcontext():
            ev0.record(s)
            with s:
                for _k in range(ns.kernels):
                    _ = a @ a
            ev1.record(s)
        h1 = time.monotonic_ns()
        with phase("host_work") if ns.hints else contextlib.nullcontext():
            x = np.ones((256, 256))
            end = time.monotonic() + ns.host_work_s
            while time.monotonic() < end:
                x = x @ x / 256.0
        ev1.synchronize()
        h2 = time.monotonic_ns()
        dev_ms = cp.cuda.get_elapsed_time(ev0, ev1)
        trials.append({"h0": h0, "h1": h1, "h2": h2, "dev_end": h0 + int(dev_ms * 1e6), "device_ms": dev_ms})
        time.sleep(0.3)
    time.sleep(0.3)
    stop.set()
    th.join(2)
    ts = np.array([x[0] for x in samples], dtype=float)
    en = np.array([x[1] for x in samples])
    ut = np.array([x[2] for x in samples])

    def energy(a_ns: float, b_ns: float) -> float:
        return float(np.interp(b_ns, ts, en) - np.interp(a_ns, ts, en))

    def util(a_ns: float, b_ns: float) -> float:
        sel = (ts >= a_ns) & (ts <= b_ns)
        return float(ut[sel].mean()) if sel.any() else float("nan")

    rows = []
    for t in trials:
        e_kernels = energy(t["h0"], t["dev_end"])
        e_host_enqueue = energy(t["h0"], t["h1"])
        rows.append(
            {
                "host_enqueue_ms": (t["h1"] - t["h0"]) / 1e6,
                "device_ms": t["device_ms"],
                "host_work_ms": (t["h2"] - t["h1"]) / 1e6,
                "kernel_energy_j": e_kernels / 1e3,
                "energy_in_host_enqueue_span_j": e_host_enqueue / 1e3,
                "kernel_energy_share_misattributed_by_host_spans": 1 - e_host_enqueue / e_kernels
                if e_kernels
                else None,
                "gpu_util_pct_during_host_work": util(t["h1"], min(t["dev_end"], t["h2"])),
            }
        )
    change = np.diff(en) != 0
    steps = np.diff(ts[1:][change]) / 1e6 if change.sum() > 1 else np.array([])
    summary = {}
    for k in rows[0]:
        vals = [r[k] for r in rows if r[k] is not None]
        m, lo, hi = mean_ci(vals)
        summary[k] = {"mean": m, "lo": lo, "hi": hi}
    doc = {
        "benchmark": "benchmarks/gpu/async_pipeline.py",
        "gpu": pynvml.nvmlDeviceGetName(h),
        "n": ns.n,
        "kernels": ns.kernels,
        "host_work_s": ns.host_work_s,
        "hints": ns.hints,
        "nvml_energy_counter_update_ms_median": float(np.median(steps)) if len(steps) else None,
        "summary_mean_ci95": summary,
        "trials": rows,
    }
    Path(ns.out).mkdir(parents=True, exist_ok=True)
    (Path(ns.out) / "async_pipeline.json").write_text(json.dumps(doc, indent=1, default=str) + "\n")
    for k, v in summary.items():
        print(f"{k:52s} {v['mean']:.4g} [{v['lo']:.4g}, {v['hi']:.4g}]")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
