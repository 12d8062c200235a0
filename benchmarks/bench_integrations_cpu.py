"""What the torch integration's hooks cost per call, on the CPU, against a live daemon (0 drops required).

A tiny module (so the hooks dominate) is called in blocks, alternating: no
hooks / ``instrument()`` / the process-wide hooks of ``gpuos-run``
(``gpuos_client.torch.auto()``, measured last since it cannot be undone).
Each variant's figure is the median of its blocks' per-call times; the cost
is the difference to the unhinted median.  Also: ``loss.backward()`` and
``opt.step()`` with and without their phases.

    .venv/bin/python benchmarks/bench_integrations_cpu.py --out benchmarks/results/integrations_cpu.json
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
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "gpu"))
from bench_integrations import Daemon

CHILD = """
import json, statistics, sys, time, torch
import gpuos_client as h, gpuos_client.torch as gt
p = json.loads(sys.argv[1])
torch.set_num_threads(1)
m = torch.nn.Linear(8, 8).eval()
x = torch.randn(1, 8)

def block(fn, n):
    t0 = time.perf_counter_ns()
    for _ in range(n):
        fn()
    return (time.perf_counter_ns() - t0) / n

def fwd():
    m(x)

res = {"forward_ns": {"none": [], "instrument": []}}
with torch.no_grad():
    for _ in range(p["blocks"]):
        res["forward_ns"]["none"].append(block(fwd, p["calls"]))
        hd = gt.instrument(m)
        res["forward_ns"]["instrument"].append(block(fwd, p["calls"]))
        hd.remove()
        h.flush(5.0)

# backward and step: a small training step, the phases on and off
model = torch.nn.Linear(64, 64)
opt = torch.optim.SGD(model.parameters(), lr=0.01)
xb = torch.randn(16, 64)
def bwd():
    model(xb).sum().backward()
def step():
    opt.step()
res["backward_ns"] = {"none": [], "phase": []}
res["step_ns"] = {"none": [], "phase": []}
for _ in range(p["blocks"]):
    res["backward_ns"]["none"].append(block(bwd, p["calls"] // 10))
    res["step_ns"]["none"].append(block(step, p["calls"] // 10))
    hb, ho = gt.instrument_backward(), gt.instrument_optimizer(opt)
    res["backward_ns"]["phase"].append(block(bwd, p["calls"] // 10))
    res["step_ns"]["phase"].append(block(step, p["calls"] // 10))
    hb.remove(); ho.remove()
    h.flush(5.0)

# a model of 50 children with no work in them: what each submodule call pays
outer = torch.nn.Sequential(*[torch.nn.Identity() for _ in range(50)])
res["submodule_ns"] = {"none": [], "auto": []}
with torch.no_grad():
    for _ in range(p["blocks"]):
        res["submodule_ns"]["none"].append(block(lambda: outer(x), p["calls"] // 10) / 51)

# the process-wide hooks (cannot be undone).  While gpuos-run is still discovering models, every
# module call goes through torch's slow path; once discovery ends only the models' own hooks remain.
gt.auto()
gt.DISCOVERY_QUIET = 10**9
res["forward_ns"]["auto_discovering"] = []
res["submodule_ns"]["auto_discovering"] = []
res["forward_ns"]["auto"] = []
res["submodule_ns"]["auto"] = []
with torch.no_grad():
    outer(x); m(x)  # both discovered (instrumented) now
    for _ in range(p["blocks"]):
        res["forward_ns"]["auto_discovering"].append(block(fwd, p["calls"]))
        res["submodule_ns"]["auto_discovering"].append(block(lambda: outer(x), p["calls"] // 10) / 51)
        h.flush(5.0)
    gt.DISCOVERY_QUIET = 50
    for _ in range(60):
        m(x)
    assert gt._discovery["ended"]
    for _ in range(p["blocks"]):
        res["forward_ns"]["auto"].append(block(fwd, p["calls"]))
        res["submodule_ns"]["auto"].append(block(lambda: outer(x), p["calls"] // 10) / 51)
        h.flush(5.0)
h.flush(5.0)
res["client"] = h.stats()
res["errors"] = gt.errors()
print(json.dumps(res))
"""


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--blocks", type=int, default=8)
    ap.add_argument("--calls", type=int, default=5000)
    ap.add_argument("--out")
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="gpuos-bench-icpu-"))
    d = Daemon(tmp)
    try:
        argv = [sys.executable, "-c", textwrap.dedent(CHILD), json.dumps({"blocks": a.blocks, "calls": a.calls})]
        r = subprocess.run(argv, env=d.env, capture_output=True, text=True, timeout=600)
        if r.returncode != 0:
            print(r.stderr, file=sys.stderr)
            return 1
        raw = json.loads(r.stdout.strip().splitlines()[-1])
        status = d.request("status")
    finally:
        d.stop()

    def med(xs: list[float]) -> float:
        return round(statistics.median(xs), 1)

    def lo(xs: list[float]) -> float:
        return round(min(xs), 1)

    fw = raw["forward_ns"]
    sub = raw["submodule_ns"]
    pairs = {
        "forward_instrument": (fw["none"], fw["instrument"]),
        "forward_auto_discovering": (fw["none"], fw["auto_discovering"]),
        "submodule_call_auto_discovering": (sub["none"], sub["auto_discovering"]),
        "forward_auto": (fw["none"], fw["auto"]),
        "submodule_call_auto": (sub["none"], sub["auto"]),
        "backward_phase": (raw["backward_ns"]["none"], raw["backward_ns"]["phase"]),
        "optimizer_step_phase": (raw["step_ns"]["none"], raw["step_ns"]["phase"]),
    }
    summary = {
        k: {
            "base_median_ns": med(b),
            "hinted_median_ns": med(h),
            "cost_median_ns": round(med(h) - med(b), 1),
            "base_min_ns": lo(b),
            "hinted_min_ns": lo(h),
            "cost_min_ns": round(lo(h) - lo(b), 1),
        }
        for k, (b, h) in pairs.items()
    }
    summary["client_dropped"] = raw["client"]["dropped"]
    summary["hook_errors"] = raw["errors"]
    doc = {
        "benchmark": "integrations_cpu",
        "host": {"cpus": os.cpu_count(), "loadavg": os.getloadavg()},
        "parameters": {
            "blocks": a.blocks,
            "calls": a.calls,
            "order": "none/instrument interleaved, then auto while discovering, then auto after discovery",
        },
        "summary": summary,
        "results": raw,
        "daemon_rejected": status.get("counters", {}).get("rejected_total"),
    }
    print(json.dumps(summary, indent=2))
    if a.out:
        Path(a.out).write_text(json.dumps(doc, indent=2))
    return 0 if summary["client_dropped"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
