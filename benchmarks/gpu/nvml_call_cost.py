"""What each NVML call the sampler makes costs, on this GPU host (read-only calls only).

python3 benchmarks/gpu/nvml_call_cost.py [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import pynvml as nv


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out")
    ap.add_argument("--n", type=int, default=30)
    args = ap.parse_args()
    nv.nvmlInit()
    h = nv.nvmlDeviceGetHandleByIndex(0)
    calls = {
        "nvmlDeviceGetUtilizationRates": lambda: nv.nvmlDeviceGetUtilizationRates(h),
        "nvmlDeviceGetMemoryInfo": lambda: nv.nvmlDeviceGetMemoryInfo(h),
        "nvmlDeviceGetPowerUsage": lambda: nv.nvmlDeviceGetPowerUsage(h),
        "nvmlDeviceGetTotalEnergyConsumption": lambda: nv.nvmlDeviceGetTotalEnergyConsumption(h),
        "nvmlDeviceGetClockInfo(SM)": lambda: nv.nvmlDeviceGetClockInfo(h, nv.NVML_CLOCK_SM),
        "nvmlDeviceGetCurrentClocksEventReasons": lambda: nv.nvmlDeviceGetCurrentClocksEventReasons(h),
        "nvmlDeviceGetPcieThroughput(TX)": lambda: nv.nvmlDeviceGetPcieThroughput(h, nv.NVML_PCIE_UTIL_TX_BYTES),
        "nvmlDeviceGetPcieThroughput(RX)": lambda: nv.nvmlDeviceGetPcieThroughput(h, nv.NVML_PCIE_UTIL_RX_BYTES),
        "nvmlDeviceGetComputeRunningProcesses": lambda: nv.nvmlDeviceGetComputeRunningProcesses(h),
        "nvmlDeviceGetProcessUtilization": lambda: nv.nvmlDeviceGetProcessUtilization(h, 0),
    }
    out = {}
    for name, fn in calls.items():
        ts = []
        for _ in range(args.n):
            t0 = time.perf_counter()
            try:
                fn()
            except nv.NVMLError:
                pass
            ts.append((time.perf_counter() - t0) * 1000)
        out[name] = {"median_ms": round(statistics.median(ts), 4), "max_ms": round(max(ts), 4)}
        print(f"{name:42s} median {out[name]['median_ms']:8.3f} ms  max {out[name]['max_ms']:8.3f} ms")
    nv.nvmlShutdown()
    if args.out:
        with open(args.out, "w") as f:
            json.dump(out, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
