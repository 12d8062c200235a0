#!/usr/bin/env python3
"""When does a driver power sample describe the GPU? Square waves with known edges (issue 9).

The daemon integrates the driver's power samples over each span's device interval, reading sample
``i`` as the mean power over ``(t_{i-1}, t_i]``.  Phases of 15-25 ms on an H200 came out 23-36 %
under their isolated power (results/h200/round3/accuracy_gpu_profiler_first.json) while the sum over all spans matched the
energy counter: energy moved to a neighbour, which is what a sample that describes an *earlier*
(or longer) stretch of time than assumed would do.  This measures it instead of guessing.

A known square wave runs on GPU 0: bursts of back-to-back 4096^2 fp16 matmuls (launched while the
GPU is idle, ended by a device sync, both edges stamped on CLOCK_MONOTONIC) and host sleeps, for
several burst/idle lengths (200/200 ms down to 10/10 ms).  power_recorder.py records the power
samples from a process of its own.  For each model - sample ``i`` is the mean of the true power over
``(t_i - d - w, t_i - d]``, w = the sample spacing ("step", the daemon's model) or a fixed window,
0 meaning an instant - the busy fraction of each sample's window is computed from the known edges,
power is fitted as idle + (busy - idle) x fraction (least squares) and the residual kept.  The best
(d, w) is the driver's sample model on this GPU; ``gpuos_hintd.power_model`` holds the fit and the
table of measured delays the daemon uses.

    OUT=/tmp/out python3 benchmarks/gpu/power_lag.py     # ~25 s on an H200, JSON into $OUT
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1] / "daemon"))
PATTERNS = ((200, 200, 5), (50, 50, 20), (25, 25, 40), (15, 35, 40), (10, 10, 100), (20, 5, 60))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "out")))
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    import torch
    from gpuos_hintd import power_model

    a = torch.randn(4096, 4096, device="cuda", dtype=torch.float16)
    b = torch.randn(4096, 4096, device="cuda", dtype=torch.float16)
    for _ in range(200):
        a @ b
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(400):
        a @ b
    torch.cuda.synchronize()
    per_ms = (time.perf_counter() - t0) / 400 * 1e3
    rec_path = args.out / "power_lag_samples.json"
    rec = subprocess.Popen([sys.executable, str(HERE / "power_recorder.py"), "--out", str(rec_path), "--poll-s", "0.2"])
    time.sleep(1.0)
    edges: list[tuple[int, int]] = []
    t_start = time.monotonic_ns()
    for busy_ms, idle_ms, n in PATTERNS:
        k = max(1, round(busy_ms / per_ms))
        for _ in range(n):
            s = time.monotonic_ns()
            for _ in range(k):
                a @ b
            torch.cuda.synchronize()
            e = time.monotonic_ns()
            edges.append((s, e))
            time.sleep(idle_ms / 1e3)
        time.sleep(0.3)
    t_end = time.monotonic_ns()
    time.sleep(1.0)
    rec.terminate()
    rec.wait(30)
    recorded = json.loads(rec_path.read_text())
    samples = [(int(t), float(w)) for t, w in recorded["samples"] if t_start - 5e8 <= t <= t_end + 5e8]
    fit = power_model.fit_sample_model(samples, edges)
    result = {
        "benchmark": "power_lag",
        "device": recorded.get("device"),
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "matmul_ms": round(per_ms, 4),
        "patterns_ms": [list(p) for p in PATTERNS],
        "edges_ns": edges,
        "samples_in_window": len(samples),
        "fit": fit,
    }
    (args.out / "power_lag.json").write_text(json.dumps(result) + "\n")
    print(json.dumps({k: v for k, v in fit.items() if k != "grid"}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
