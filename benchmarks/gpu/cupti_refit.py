#!/usr/bin/env python3
"""Re-map a cupti_check.py recording made with the offset-only clock map, fitting the clock rate.

The first H200 runs of the CUPTI tracer mapped CUPTI timestamps onto CLOCK_MONOTONIC with an
offset only; busy times came out 0-100 % off.  This takes the recorded merged intervals and
device intervals (cupti_check's ``tracer`` part: four intervals per span of its fixed pattern -
memset, matmul, memset, matmul), fits a line from each span's device begin to its first interval
(the offset-only mapped time), maps every interval back through it, and recomputes each span's
busy time against the profiler's union of the same pattern.  A fitted slope far from 1 with
busy times then within the profiler's is the evidence that CUPTI's clock ran at another rate.

    python3 benchmarks/gpu/cupti_refit.py benchmarks/results/h200/round4/cupti_offset_only/cupti_check_cdll.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def refit(doc: dict) -> dict:
    t, acc = doc["parts"]["tracer"], doc["parts"]["accuracy"]["spans"]
    iv = t["intervals"]
    sp = sorted(t["spans"], key=lambda s: s["span"])
    per = len(iv) // len(sp)
    xs = [s["dev_begin_ns"] for s in sp]
    ys = [iv[per * i][0] for i in range(len(sp))]
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    a = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum((x - mx) ** 2 for x in xs)
    b = my - a * mx
    back = [((s - b) / a, (e - b) / a) for s, e in iv]

    def busy(lo: float, hi: float) -> float:
        return sum(max(0.0, min(e, hi) - max(s, lo)) for s, e in back)

    union = {c["span"]: c["profiler_union_ns"] for c in acc}
    errs = {s["span"]: round(100 * (busy(s["dev_begin_ns"], s["dev_end_ns"]) / union[s["span"]] - 1), 3) for s in sp}
    return {
        "intervals_per_span": per,
        "fitted_rate": round(a, 5),
        "busy_err_pct_refit": errs,
        "max_abs_busy_err_pct_refit": max(abs(v) for v in errs.values()),
        "max_abs_busy_err_pct_recorded": round(100 * max(abs(c["rel_err"]) for c in acc), 2),
        "kernel_ms_recorded": [round((e - s) / 1e6, 3) for s, e in iv[1:per:2]],
    }


def main() -> int:
    src = Path(sys.argv[1])
    res = refit(json.loads(src.read_text()))
    res["source"] = str(src)
    out = src.with_name("refit.json")
    out.write_text(json.dumps(res, indent=1) + "\n")
    print(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
