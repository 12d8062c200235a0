"""How often each signal the daemon reads actually changes: its counter (update) period.

A window-based method cannot resolve a phase shorter than the larger of the sample period and the
period at which the source itself updates (e.g. /proc CPU times advance in clock ticks; NVML
energy and utilisation are refreshed by the driver on its own schedule).  This measures the
second one: it keeps this process busy (a thread doing matmuls - NumPy, or CuPy with --device gpu
- plus small file reads), polls every available sampler on itself at --poll-hz for --seconds, and
reports per metric the median interval between changes of its value.

    nice -n 19 .venv/bin/python benchmarks/counter_periods.py [--device gpu] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import REPO, host_info
from gpuos_hintd import procfs
from gpuos_hintd.model import ProcKey, Target
from gpuos_hintd.samplers import registry
from gpuos_hintd.samplers.base import NullSampler


def busy(stop: threading.Event, device: str) -> None:
    if device == "gpu":
        import cupy as xp
    else:
        xp = np
    a = xp.ones((512, 512), dtype=xp.float32)
    with tempfile.NamedTemporaryFile() as f:
        f.write(b"x" * 65536)
        f.flush()
        while not stop.is_set():
            _ = a @ a
            if device == "gpu":
                xp.cuda.Stream.null.synchronize()
            with open(f.name, "rb") as r:
                r.read()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", choices=["cpu", "gpu"], default="cpu")
    ap.add_argument("--poll-hz", type=float, default=500.0)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "counter_periods_cpu.json"))
    ns = ap.parse_args()
    active = [s for s in registry.build() if not isinstance(s, NullSampler) and s.available()[0]]
    pid = os.getpid()
    key = ProcKey(pid, int(procfs.read_stat(procfs.PROCFS, pid)["starttime"]))
    stop = threading.Event()
    t = threading.Thread(target=busy, args=(stop, ns.device), daemon=True)
    t.start()
    time.sleep(0.3)
    rows: list[tuple[int, dict]] = []
    period = 1.0 / ns.poll_hz
    end = time.monotonic() + ns.seconds
    while time.monotonic() < end:
        now = time.monotonic_ns()
        vals: dict = {}
        for s in active:
            got = s.sample([Target(key)], now).get(key)
            if got is not None:
                vals.update(got.values)
        rows.append((now, vals))
        time.sleep(period)
    stop.set()
    t.join(5)
    out = {}
    names = sorted({k for _, v in rows for k in v})
    poll_ms = float(np.median(np.diff([r[0] for r in rows])) / 1e6)
    for n in names:
        ts = [r[0] for r in rows if r[1].get(n) is not None]
        vs = [r[1][n] for r in rows if r[1].get(n) is not None]
        change = [ts[i] for i in range(1, len(vs)) if vs[i] != vs[i - 1]]
        gaps = np.diff(change) / 1e6 if len(change) > 1 else np.array([])
        out[n] = {
            "samples": len(vs),
            "changes": len(change),
            "median_change_interval_ms": round(float(np.median(gaps)), 3) if len(gaps) else None,
            "p90_change_interval_ms": round(float(np.percentile(gaps, 90)), 3) if len(gaps) else None,
        }
    doc = {
        "benchmark": "benchmarks/counter_periods.py",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "host": host_info(),
        "device": ns.device,
        "poll_hz_asked": ns.poll_hz,
        "poll_interval_ms_median": round(poll_ms, 3),
        "seconds": ns.seconds,
        "samplers": [s.name for s in active],
        "metrics": out,
    }
    Path(ns.out).parent.mkdir(parents=True, exist_ok=True)
    Path(ns.out).write_text(json.dumps(doc, indent=1) + "\n")
    for n, v in out.items():
        print(f"{n:28s} changes {v['changes']:5d}  median interval {v['median_change_interval_ms']} ms")
    print(f"poll interval {poll_ms:.2f} ms; wrote {ns.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
