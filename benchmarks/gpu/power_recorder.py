#!/usr/bin/env python3
"""Record the driver's timestamped power samples and the energy counter, in a process of its own.

Why a process of its own: the benchmarks that need the raw samples (power_lag.py,
accuracy_gpu.py) time a workload on the host, and a polling thread in the same interpreter would
take the GIL at the very moments the workload's edges are stamped.

    python3 benchmarks/gpu/power_recorder.py --out samples.json    # until SIGTERM/SIGINT

Every ``--poll-s`` it asks NVML for the power samples newer than the last one seen
(``nvmlDeviceGetSamples(NVML_TOTAL_POWER_SAMPLES)``, ~20 ms apart on an H200) and reads the
total-energy counter.  NVML stamps samples in CPU wall-clock microseconds; they are written on
CLOCK_MONOTONIC (ns), the clock of spans and of the workloads' edges, with the wall-minus-monotonic
offset measured at each poll (its spread is written too).  Read-only: no nvmlDeviceSet* call.
"""

from __future__ import annotations

import argparse
import json
import signal
import time
from pathlib import Path
from typing import Any

_VALUE_FIELDS = {0: "dVal", 1: "uiVal", 2: "ulVal", 3: "ullVal", 4: "sllVal", 5: "siVal", 6: "usVal"}


def _offset_ns() -> int:
    """wall - monotonic, from the tightest of a few brackets."""
    best: tuple[int, int] | None = None
    for _ in range(5):
        a = time.monotonic_ns()
        w = time.time_ns()
        b = time.monotonic_ns()
        if best is None or b - a < best[0]:
            best = (b - a, w - (a + b) // 2)
    assert best is not None
    return best[1]


def record(out: Path, poll_s: float, index: int) -> dict[str, Any]:
    import pynvml

    pynvml.nvmlInit()
    h = pynvml.nvmlDeviceGetHandleByIndex(index)
    stop = {"now": False}

    def _stop(*_: Any) -> None:
        stop["now"] = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    last_us = 0
    samples: list[tuple[int, float]] = []
    counter: list[tuple[int, float]] = []
    offsets: list[int] = []
    errors: dict[str, int] = {}
    first = True
    while not stop["now"]:
        off = _offset_ns()
        offsets.append(off)
        try:
            vtype, got = pynvml.nvmlDeviceGetSamples(h, pynvml.NVML_TOTAL_POWER_SAMPLES, last_us)
            field = _VALUE_FIELDS.get(int(vtype), "uiVal")
            for s in got:
                ts = int(s.timeStamp)
                if ts <= last_us:
                    continue
                last_us = max(last_us, ts)
                if first:
                    continue  # the driver's history from before this recording started
                samples.append((ts * 1000 - off, float(getattr(s.sampleValue, field))))
        except pynvml.NVMLError as exc:
            errors[str(exc)] = errors.get(str(exc), 0) + 1
        first = False
        t = time.monotonic_ns()
        counter.append((t, float(pynvml.nvmlDeviceGetTotalEnergyConsumption(h))))
        time.sleep(poll_s)
    samples.sort()
    res = {
        "format": "gpuos-hint/power-samples",
        "device": pynvml.nvmlDeviceGetName(h),
        "clock": "CLOCK_MONOTONIC ns; samples in mW, counter in mJ",
        "samples": samples,
        "counter": counter,
        "wall_minus_mono_spread_ns": (max(offsets) - min(offsets)) if offsets else None,
        "errors": errors,
    }
    out.write_text(json.dumps(res) + "\n")
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--poll-s", type=float, default=0.25, help="poll period (default 0.25 s)")
    ap.add_argument("--index", type=int, default=0, help="GPU index (default 0)")
    args = ap.parse_args()
    record(args.out, args.poll_s, args.index)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
