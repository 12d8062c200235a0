"""The CUPTI busy-time tracer (client/gpuos_client/cupti.py) on a real GPU: layout, accuracy, cost.

Run on an NVIDIA box (the H200), bounded to ~2 minutes (a watchdog ends it at --seconds):

    PYTHONPATH=/tmp/site:$PWD/client:$PWD/daemon:$PWD/workloads \\
        timeout 170 python3 benchmarks/gpu/cupti_check.py --out $OUT/cupti_check.json

It runs itself twice (``--dll pydll``, then ``--dll cdll``: how libcupti is loaded through
ctypes, keeping or releasing the GIL in CUPTI calls; cupti.py's "Threads" says why both), each a
child bounded to half of ``--seconds``; ``$OUT`` gets cupti_check_pydll.json,
cupti_check_cdll.json and the summary cupti_check.json.

``--cpu`` checks only that, without CUDA, everything fails cleanly (no exception, a reason).

What it does, each part written to the JSON as soon as it is done:

1. **facts**: torch/CUDA/GPU, the libcupti candidates and the one loaded, ``cuptiGetVersion``.
2. **ground truth first**: a fixed pattern (``--spans`` spans; each: a ~1 ms matmul, a 2 ms host
   sleep, a second matmul; every odd span also a matmul on a second stream overlapping the
   first; a sync and a 3 ms gap between spans) under ``torch.profiler``; per span the union and
   the sum of its kernels' time (clusters split at the gaps, checked: one cluster per span).
   The profiler runs before the tracer starts, so the two never hold CUPTI together.
3. **tracer**: the same pattern with device-timed spans through the client's real code
   (device.begin/end with the torch backend, collect_device_times with its wait for CUPTI's
   records) and busy time on.  Per span: busy_ns against the profiler's union (the issue's
   target is +-2 %), the CUDA-event interval (busy < interval for the slept spans), and the kinds
   of records seen.  This is also the layout check: wrong start/end offsets give busy times
   nowhere near the profiler's.
4. **pipeline**: 300 spans back to back, no sync (the GPU kept fed), a sender-like thread
   collecting every 50 ms: does every span still get its busy time within the client's wait?
5. **cost**: a launch-bound step (200 tiny elementwise kernels, then a sync); blocks of 40 steps
   alternate tracing on and off (cuptiActivityEnable/Disable), a thread draining every 50 ms as
   the client's sender does; before the tracer ever started, baseline blocks too.  Median and
   p10/p90 per mode, and the drain's own cost per record.  CUPTI's dropped records are reported.
6. **interaction**: torch.profiler started while the tracer is on: does the profiler see kernels,
   does the tracer keep receiving records during and after it (measured, not assumed).
"""

from __future__ import annotations

import argparse
import collections
import faulthandler
import json
import os
import statistics
import sys
import threading
import time
import types
from pathlib import Path
from typing import Any

from profiler_trace import chrome_trace, device_events, union_length

RESULT: dict[str, Any] = {"ok": False, "parts": {}}
OUT_PATH: Path | None = None


def save() -> None:
    if OUT_PATH is not None:
        OUT_PATH.parent.mkdir(parents=True, exist_ok=True)
        OUT_PATH.write_text(json.dumps(RESULT, indent=1, default=str))


class Rt:
    """The few Runtime attributes device.py touches (no daemon needed: marks are kept here)."""

    def __init__(self) -> None:
        self._device_open: dict[int, Any] = {}
        self._device_pending: collections.deque[Any] = collections.deque()
        self._device_waiting: collections.deque[Any] = collections.deque()
        self.device_marks = self.device_anchor_misses = self.device_busy_unresolved = 0
        self.drops: collections.Counter[str] = collections.Counter()
        self.last_error: str | None = None
        self.core = types.SimpleNamespace(device_ok=1)

    def drop(self, reason: str, n: int = 1) -> None:
        self.drops[reason] += n


def cpu_mode() -> int:
    from gpuos_client import cupti, device

    out: dict[str, Any] = {"mode": "cpu", "candidates": cupti.candidates()}
    try:
        t = cupti.CuptiTracer()
        out["tracer_started"] = t.start()
        out["tracer_why"] = t.why
        device.set_busy(True)
        rt = Rt()
        device.begin(rt, 1)  # type: ignore[arg-type]
        device.end(rt, 1)  # type: ignore[arg-type]
        out["device_last_error"] = rt.last_error
        out["device_timing_off"] = rt.core.device_ok == 0
        out["ok"] = not out["tracer_started"] and bool(t.why) and out["device_timing_off"]
    except Exception as exc:  # the point of this mode: there must be none
        out["exception"] = f"{type(exc).__name__}: {exc}"
        out["ok"] = False
    RESULT.update(out)
    save()
    print(json.dumps(out, indent=1))
    return 0 if out["ok"] else 1


# ------------------------------------------------------------------------------ the pattern
def make_pattern(torch: Any, n: int) -> Any:
    a = torch.randn(n, n, device="cuda", dtype=torch.float16)
    b = torch.randn(n, n, device="cuda", dtype=torch.float16)
    c = torch.randn(n, n, device="cuda", dtype=torch.float16)
    s2 = torch.cuda.Stream()

    def span_body(i: int) -> None:
        cur = torch.cuda.current_stream()
        ev = torch.cuda.Event()
        ev.record(cur)  # after the span's start event, before its first matmul
        torch.mm(a, b)
        if i % 2:
            s2.wait_event(ev)
            with torch.cuda.stream(s2):
                torch.mm(c, b)  # may run alongside the first matmul on another stream: counted once
        time.sleep(0.002)  # host gap: the device idles once the first matmul is done
        torch.mm(b, a)
        if i % 2:
            cur.wait_stream(s2)

    return span_body


def _mm_ms(torch: Any, a: Any, reps: int = 10) -> float:
    """One ``a @ a``'s device time in ms: ``reps`` back to back between two CUDA events."""
    e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    e0.record()
    for _ in range(reps):
        torch.mm(a, a)
    e1.record()
    torch.cuda.synchronize()
    return e0.elapsed_time(e1) / reps


def calibrate(torch: Any) -> tuple[int, float]:
    """A square fp16 matmul size that takes about 1 ms here."""
    n = 4096
    for _ in range(3):
        a = torch.randn(n, n, device="cuda", dtype=torch.float16)
        for _ in range(3):
            torch.mm(a, a)
        ms = _mm_ms(torch, a)
        n = max(1024, min(16384, int(n * (1.0 / ms) ** (1 / 3)) // 256 * 256))
    return n, _mm_ms(torch, torch.randn(n, n, device="cuda", dtype=torch.float16))


def _kernels(prof: Any) -> list[tuple[float, float]]:
    """(start ns, end ns) of every kernel/memcpy/memset in a profiler's trace."""
    return [(ts * 1000, (ts + dur) * 1000) for ts, dur, _ in device_events(chrome_trace(prof))]


def profiler_truth(torch: Any, body: Any, spans: int) -> dict[str, Any]:
    from torch.profiler import ProfilerActivity

    with torch.profiler.profile(activities=[ProfilerActivity.CUDA]) as prof:
        for i in range(spans):
            body(i)
            torch.cuda.synchronize()
            time.sleep(0.003)
    evs = _kernels(prof)
    clusters: list[list[tuple[float, float]]] = []
    last_end = -1e30
    for s, e in evs:
        # Inside a span the device idles at most the 2 ms host sleep; between spans a sync and 3 ms.
        if s - last_end > 2_500_000:
            clusters.append([])
        clusters[-1].append((s, e))
        last_end = max(last_end, e)
    return {
        "kernels": len(evs),
        "clusters": len(clusters),
        "union_ns": [round(union_length(c)) for c in clusters],
        "sum_ns": [round(sum(e - s for s, e in c)) for c in clusters],
    }


def tracer_run(torch: Any, body: Any, spans: int, device: Any, cupti: Any) -> dict[str, Any]:
    rt = Rt()
    device.set_busy(True)
    marks: list[Any] = []
    for i in range(spans):
        device.begin(rt, i + 1)
        if device._tracer is not None and device._tracer.log is None:
            device._tracer.log = []  # every flush: time, records, forced, gate (diagnostics)
        body(i)
        device.end(rt, i + 1)
        torch.cuda.synchronize()
        time.sleep(0.003)
        marks += device.collect_device_times(rt)
    deadline = time.monotonic() + 5
    while (rt._device_pending or rt._device_waiting) and time.monotonic() < deadline:
        time.sleep(0.02)
        marks += device.collect_device_times(rt)
    tr = device._tracer
    posthoc: dict[int, int | None] = {}
    if tr is not None and tr.on:
        # The tracer's own complete record set, long after: busy at mark time against it separates a
        # gate that opened too early (records not in yet) from a clock mapping that is off.
        time.sleep(0.3)
        tr.drain(force=True)
        posthoc = {m[4]["span"]: tr.intervals.busy_ns(m[4]["dev_begin_ns"], m[4]["dev_end_ns"]) for m in marks}
    out: dict[str, Any] = {
        "tracer_on": bool(tr and tr.on),
        "why": tr.why if tr else rt.last_error,
        "lib_path": tr.lib_path if tr else None,
        "cupti_version": tr.version if tr else None,
        "record_kinds_seen": dict(tr.kinds) if tr else None,
        "tracer_stats": tr.stats() if tr else None,
        "marks": len(marks),
        "busy_unresolved": rt.device_busy_unresolved,
        "drops": dict(rt.drops),
        "spans": [
            {
                "span": m[4]["span"],
                "dev_ns": m[4]["dev_end_ns"] - m[4]["dev_begin_ns"],
                "busy_ns": m[4].get("busy_ns"),
                "busy_err_ns": m[4].get("busy_err_ns"),
                "busy_posthoc_ns": posthoc.get(m[4]["span"]),
                "dev_begin_ns": m[4]["dev_begin_ns"],
                "dev_end_ns": m[4]["dev_end_ns"],
            }
            for m in marks
        ],
        "intervals": tr.intervals.intervals()[-400:] if tr is not None else None,
        "drain_log": (tr.log or [])[-400:] if tr is not None else None,
    }
    return out


def pipeline(torch: Any, device: Any, spans: int) -> dict[str, Any]:
    """Spans back to back with no sync (the GPU kept fed), collected by a sender-like thread every 50 ms.

    Checks the completeness gate where CUPTI's current buffer always holds an unfinished kernel:
    every span should still get its busy time (busy_unresolved 0) within the client's wait.
    """
    rt = Rt()
    # ~0.5 ms of GEMM per span against ~0.1 ms to launch it: the queue deepens, the GPU never waits
    # (the first version's 2048^2 GEMM + 20 small kernels was launch-bound: busy ~16 % was right).
    a = torch.randn(6144, 6144, device="cuda", dtype=torch.float16)
    x = torch.zeros(1 << 20, device="cuda")
    marks: list[Any] = []
    stop = threading.Event()

    def sender() -> None:
        while not stop.wait(0.05):
            marks.extend(device.collect_device_times(rt))

    th = threading.Thread(target=sender, daemon=True)
    th.start()
    t0 = time.monotonic()
    for i in range(spans):
        device.begin(rt, 10_000 + i)
        torch.mm(a, a)
        for _ in range(3):
            x.mul_(1.0001)
        device.end(rt, 10_000 + i)
    torch.cuda.synchronize()
    launch_s = time.monotonic() - t0
    deadline = time.monotonic() + 6
    while (rt._device_pending or rt._device_waiting) and time.monotonic() < deadline:
        time.sleep(0.05)
    stop.set()
    th.join()
    marks.extend(device.collect_device_times(rt))
    shares = [m[4]["busy_ns"] / (m[4]["dev_end_ns"] - m[4]["dev_begin_ns"]) for m in marks if "busy_ns" in m[4]]
    return {
        "spans": spans,
        "marks": len(marks),
        "with_busy": len(shares),
        "busy_unresolved": rt.device_busy_unresolved,
        "launch_s": round(launch_s, 3),
        "busy_share_median": round(statistics.median(shares), 4) if shares else None,
        "busy_share_min": round(min(shares), 4) if shares else None,
        "busy_share_p10": round(sorted(shares)[len(shares) // 10], 4) if shares else None,
        "tracer_bad_records": device._tracer.bad_records if device._tracer else None,
        "forced_flushes": device._tracer.forced_flushes if device._tracer else None,
    }


# ------------------------------------------------------------------------------ cost
def cost(torch: Any, tracer: Any, cupti: Any, blocks: int, steps: int, deadline: float) -> dict[str, Any]:
    x = torch.zeros(1024, device="cuda")

    def step() -> float:
        t0 = time.perf_counter()
        for _ in range(200):
            x.add_(1.0)
        torch.cuda.synchronize()
        return (time.perf_counter() - t0) * 1000

    stop = threading.Event()
    drain_s: list[float] = []
    drain_records: list[int] = []

    def drainer() -> None:  # the client's sender thread drains every round (~50 ms)
        while not stop.wait(0.05):
            r0 = tracer.records
            t0 = time.perf_counter()
            tracer.drain()
            drain_s.append(time.perf_counter() - t0)
            drain_records.append(tracer.records - r0)

    def set_on(on: bool) -> None:
        for kind in cupti.ENABLED_KINDS:
            (tracer._lib.cuptiActivityEnable if on else tracer._lib.cuptiActivityDisable)(kind)

    th = threading.Thread(target=drainer, daemon=True)
    th.start()
    per: dict[str, list[float]] = {"on": [], "off": []}
    order = []
    for _ in range(steps):
        step()  # warm
    for b in range(blocks):
        if time.monotonic() > deadline:
            break
        mode = "on" if b % 2 == 0 else "off"
        order.append(mode)
        set_on(mode == "on")
        per[mode] += [step() for _ in range(steps)]
    set_on(True)
    stop.set()
    th.join()
    out: dict[str, Any] = {"order": order, "steps_per_block": steps, "kernels_per_step": 200}
    for mode, v in per.items():
        if v:
            q = statistics.quantiles(v, n=10)
            out[mode] = {
                "n": len(v),
                "median_ms": round(statistics.median(v), 4),
                "p10_ms": round(q[0], 4),
                "p90_ms": round(q[-1], 4),
            }
    if per["on"] and per["off"]:
        out["on_over_off"] = round(out["on"]["median_ms"] / out["off"]["median_ms"], 4)
        out["per_kernel_us"] = round((out["on"]["median_ms"] - out["off"]["median_ms"]) * 1000 / 200, 3)
    recs = sum(drain_records)
    out["drain"] = {
        "calls": len(drain_s),
        "records": recs,
        "total_s": round(sum(drain_s), 4),
        "us_per_record": round(sum(drain_s) * 1e6 / recs, 3) if recs else None,
    }
    out["cupti_dropped"] = tracer.dropped
    out["no_buffer"] = tracer.no_buffer
    return out


def baseline(torch: Any, blocks: int, steps: int) -> dict[str, Any]:
    x = torch.zeros(1024, device="cuda")
    v = []
    for _ in range(blocks * steps):
        t0 = time.perf_counter()
        for _ in range(200):
            x.add_(1.0)
        torch.cuda.synchronize()
        v.append((time.perf_counter() - t0) * 1000)
    v = v[steps:]  # the first block warms
    q = statistics.quantiles(v, n=10)
    return {
        "n": len(v),
        "median_ms": round(statistics.median(v), 4),
        "p10_ms": round(q[0], 4),
        "p90_ms": round(q[-1], 4),
    }


def interaction(torch: Any, body: Any, tracer: Any, cupti: Any) -> dict[str, Any]:
    """torch.profiler started while the tracer is on: who gets the records (measured)."""
    from torch.profiler import ProfilerActivity

    tracer.drain()
    r0 = tracer.records
    with torch.profiler.profile(activities=[ProfilerActivity.CUDA]) as prof:
        seen = cupti._profiler_running()
        for i in range(4):
            body(i)
        torch.cuda.synchronize()
        tracer.drain()
    r1 = tracer.records
    n_prof = len(_kernels(prof))
    for i in range(4):
        body(i)
    torch.cuda.synchronize()
    time.sleep(0.1)
    tracer.drain()
    r2 = tracer.records
    return {
        "tracer_records_during_profiler": r1 - r0,
        "tracer_records_after_profiler": r2 - r1,
        "profiler_kernels": n_prof,
        "client_saw_profiler_running": seen,
    }


def main() -> int:
    global OUT_PATH
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(os.environ.get("OUT", "."), "cupti_check.json"))
    ap.add_argument("--cpu", action="store_true", help="only check that it fails cleanly without CUDA")
    ap.add_argument("--seconds", type=float, default=120.0)
    ap.add_argument("--spans", type=int, default=20)
    ap.add_argument("--blocks", type=int, default=24)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--truth-after", action="store_true", help="run the profiler after the tracer, not before")
    ap.add_argument("--dll", choices=("pydll", "cdll"), help="one child run with this ctypes loader")
    ap.add_argument("--both-loaders", action="store_true",
                    help="also a PyDLL child (it deadlocked a flush on the H200: round4/cupti/cupti_check_pydll.json)")  # fmt: skip
    args = ap.parse_args()
    OUT_PATH = Path(args.out)
    if args.cpu:
        faulthandler.dump_traceback_later(60, exit=True)
        return cpu_mode()
    if args.dll is None:
        return parent(args)
    faulthandler.dump_traceback_later(args.seconds + 10, exit=True)  # a hang (GIL vs CUPTI thread) ends here
    import ctypes

    from gpuos_client import cupti as _c

    _c.LOADER = ctypes.PyDLL if args.dll == "pydll" else ctypes.CDLL
    RESULT["dll"] = args.dll
    t_start = time.monotonic()
    deadline = t_start + args.seconds
    import torch
    from gpuos_client import cupti, device

    facts: dict[str, Any] = {
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
        "candidates": cupti.candidates(),
    }
    RESULT["facts"] = facts
    if not torch.cuda.is_available():
        RESULT["error"] = "no CUDA: run with --cpu"
        save()
        return 1
    facts["gpu"] = torch.cuda.get_device_name(0)
    n, mm_ms = calibrate(torch)
    facts["matmul_n"], facts["matmul_ms"] = n, round(mm_ms, 4)
    body = make_pattern(torch, n)
    for i in range(3):
        body(i)
    torch.cuda.synchronize()
    save()

    RESULT["parts"]["baseline_before_cupti"] = baseline(torch, 4, args.steps)
    save()
    if not args.truth_after:
        truth = profiler_truth(torch, body, args.spans)
        RESULT["parts"]["profiler"] = truth
        save()
        facts["profiler_running_after_exit"] = cupti._profiler_running()
    got = tracer_run(torch, body, args.spans, device, cupti)
    if args.truth_after:
        truth = profiler_truth(torch, body, args.spans)
        RESULT["parts"]["profiler"] = truth
    facts["lib_loaded"] = got["lib_path"]
    facts["cupti_version"] = got["cupti_version"]
    facts["record_kinds_seen"] = got["record_kinds_seen"]
    tr0 = device._tracer
    if tr0 is not None and tr0.on:
        tr0._map_clock()
        wall_minus_mono = time.time_ns() - time.monotonic_ns()
        facts["clock"] = {
            "map_err_ns": tr0.map_err_ns,
            "cupti_minus_monotonic_ns": -tr0._offset,
            "cupti_minus_realtime_ns": -tr0._offset - wall_minus_mono,
        }
    RESULT["parts"]["tracer"] = got
    spans = sorted(got["spans"], key=lambda s: s["span"])
    cmp = []
    if truth["clusters"] == args.spans and len(spans) == args.spans:
        for s, u, k in zip(spans, truth["union_ns"], truth["sum_ns"], strict=True):
            if s["busy_ns"] is not None and u:
                cmp.append(
                    {
                        "span": s["span"],
                        "busy_ns": s["busy_ns"],
                        "profiler_union_ns": u,
                        "profiler_sum_ns": k,
                        "dev_ns": s["dev_ns"],
                        "rel_err": round(s["busy_ns"] / u - 1, 5),
                        "posthoc_rel_err": round(s["busy_posthoc_ns"] / u - 1, 5)
                        if s.get("busy_posthoc_ns") is not None
                        else None,
                        "busy_share_of_dev": round(s["busy_ns"] / s["dev_ns"], 4) if s["dev_ns"] else None,
                    }
                )
    errs = [abs(c["rel_err"]) for c in cmp]
    RESULT["parts"]["accuracy"] = {
        "compared": len(cmp),
        "median_abs_rel_err": round(statistics.median(errs), 5) if errs else None,
        "max_abs_rel_err": round(max(errs), 5) if errs else None,
        "within_2pct": sum(e <= 0.02 for e in errs),
        "note": "profiler run separately, before the tracer: same pattern, same process",
        "spans": cmp,
    }
    save()

    tr = device._tracer
    if tr is not None and tr.on and time.monotonic() < deadline:
        RESULT["parts"]["pipeline"] = pipeline(torch, device, 300)
        save()
    if tr is not None and tr.on and time.monotonic() < deadline:
        RESULT["parts"]["cost"] = cost(torch, tr, cupti, args.blocks, args.steps, deadline - 25)
        save()
    if tr is not None and tr.on and time.monotonic() < deadline:
        try:
            RESULT["parts"]["interaction"] = interaction(torch, body, tr, cupti)
        except Exception as exc:
            RESULT["parts"]["interaction"] = {"error": f"{type(exc).__name__}: {exc}"}
        save()
    acc = RESULT["parts"]["accuracy"]
    RESULT["ok"] = bool(got["tracer_on"] and acc["compared"] == args.spans)
    RESULT["wall_s"] = round(time.monotonic() - t_start, 1)
    save()
    print(json.dumps({k: RESULT[k] for k in ("ok", "wall_s", "facts")}, indent=1, default=str))
    print(json.dumps({k: v for k, v in RESULT["parts"].items() if k != "tracer"}, indent=1, default=str)[:6000])
    return 0 if RESULT["ok"] else 1


def parent(args: argparse.Namespace) -> int:
    """Two child runs, one per ctypes loader (PyDLL keeps the GIL in CUPTI calls, CDLL releases it):
    which one CUPTI's threads need is not documented, and the wrong one hangs (the watchdog ends it)."""
    import subprocess

    budget = max(20.0, args.seconds / 2 - 5)
    summary: dict[str, Any] = {"ok": False, "runs": {}}
    for dll in ("pydll", "cdll") if args.both_loaders else ("cdll",):
        out = OUT_PATH.with_name(f"cupti_check_{dll}.json")
        argv = [sys.executable, __file__, "--dll", dll, "--out", str(out), "--seconds", str(budget - 10)]
        argv += ["--spans", str(args.spans), "--blocks", str(args.blocks), "--steps", str(args.steps)]
        argv += ["--truth-after"] if args.truth_after else []
        t0 = time.monotonic()
        try:
            p = subprocess.run(argv, capture_output=True, text=True, timeout=budget + 15)
            rc, tail = p.returncode, (p.stdout + p.stderr)[-3000:]
        except subprocess.TimeoutExpired as exc:
            rc, tail = "timeout", str(exc.stdout or "")[-3000:]
        got = json.loads(out.read_text()) if out.exists() else {}
        summary["runs"][dll] = {"rc": rc, "wall_s": round(time.monotonic() - t0, 1), "ok": got.get("ok"), "tail": tail}
        print(f"== {dll}: rc {rc}, ok {got.get('ok')}\n{tail}", flush=True)
        summary[dll] = got
        OUT_PATH.write_text(json.dumps(summary, indent=1, default=str))
    summary["ok"] = any(r["ok"] for r in summary["runs"].values())
    OUT_PATH.write_text(json.dumps(summary, indent=1, default=str))
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
