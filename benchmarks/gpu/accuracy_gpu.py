"""GPU attribution accuracy against independent truth (issue 9), bounded to ~6 minutes.

Runs a private gpuos-hintd at default settings and, in this process, hinted workloads using
the plain client API (``with gpuos_client.phase("prefill", device=True)``):

1. HF GPT-2-medium shape (random init from a config, fp16, batch 8, 512-token prompt):
   ``prefill`` and ``decode`` steps (the model's forward with a KV cache, as generate() runs it);
2. a torchvision ResNet-50 training step (fp16 autocast): ``forward``, ``backward``, ``optimizer``;
3. an asynchronous pipeline: ``stage_a`` (GEMMs) and ``stage_b`` (elementwise) enqueued with no
   host sync inside or between phases, so host and device intervals differ.

Truth the daemon did not produce:

* energy per phase: each phase repeated alone, back to back, >= 30 times and >= 2 s, between two
  readings of NVML's total-energy counter around a device sync (the counter moves every ~100 ms,
  so >= 2 s keeps its quantisation < 5 %); per-repetition energy and device time;
* device time per phase: torch.profiler's kernel time per phase, profiled alone and in the hinted
  run's own sequences (each device event assigned to the phase whose range launched it);
* the sum of span energy over the fully hinted window against the counter's delta over it.

The daemon's figures: per-span energy over the device interval from the driver's power samples,
the per-phase NNLS fit (`gpuos-hintctl phases --json`), device time from the __device__ marks.

    OUT=/tmp/out python benchmarks/gpu/accuracy_gpu.py            # H200: ~6 min, JSON into $OUT
    python benchmarks/gpu/accuracy_gpu.py --cpu --out /tmp/acc    # smoke test here, tiny sizes
"""

from __future__ import annotations

import argparse
import bisect
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from profiler_trace import DEVICE_CATEGORIES, chrome_trace, device_events, union_length

REPO = Path(__file__).resolve().parents[2]


# ----------------------------------------------------------------------------- daemon
def start_daemon(tmp: Path, extra: list[str]) -> tuple[subprocess.Popen[bytes], dict[str, str]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPUOS_HINT_")}
    env.update(
        GPUOS_HINT_ENDPOINT=f"ipc://{tmp}/hint.sock",
        GPUOS_HINT_CONTROL=f"ipc://{tmp}/control.sock",
        GPUOS_HINT_STATE_DIR=str(tmp / "state"),
    )
    log = open(tmp / "daemon.log", "wb")  # noqa: SIM115 - lives as long as the daemon
    proc = subprocess.Popen([sys.executable, "-m", "gpuos_hintd.main", "--log-level", "warning", *extra],
                            env=env, stdout=log, stderr=log)  # fmt: skip
    from gpuos_hintd.control import request

    for _ in range(200):
        try:
            request(env["GPUOS_HINT_CONTROL"], "ping", timeout_s=0.2)
            break
        except Exception:
            if proc.poll() is not None:
                raise SystemExit((tmp / "daemon.log").read_text()[-3000:]) from None
            time.sleep(0.05)
    os.environ.update({k: v for k, v in env.items() if k.startswith("GPUOS_HINT_")})
    return proc, env


# ----------------------------------------------------------------------------- truth
class Counter:
    """NVML total-energy counter of GPU 0 (mJ), or nothing on --cpu."""

    def __init__(self, on: bool) -> None:
        self.nv = None
        if on:
            import pynvml

            pynvml.nvmlInit()
            self.nv = pynvml
            self.h = pynvml.nvmlDeviceGetHandleByIndex(0)

    def mj(self) -> float | None:
        return float(self.nv.nvmlDeviceGetTotalEnergyConsumption(self.h)) if self.nv else None


def isolated(name: str, fn: Callable[[], None], sync: Callable[[], None], counter: Counter, min_reps: int,
             min_s: float) -> dict[str, Any]:  # fmt: skip
    """Repeat one phase alone, back to back, >= min_reps times and >= min_s, counter around it."""
    fn()
    sync()
    e0, t0, c0 = counter.mj(), time.monotonic(), time.thread_time()
    reps = 0
    while reps < min_reps or time.monotonic() - t0 < min_s:
        fn()
        reps += 1
        if reps % 8 == 0:
            sync()  # bounded queue, and an honest wall clock
    sync()
    t1, e1, c1 = time.monotonic(), counter.mj(), time.thread_time()
    out: dict[str, Any] = {"phase": name, "reps": reps, "seconds": round(t1 - t0, 3),
                           "wall_ms_per_rep": round((t1 - t0) / reps * 1e3, 4),
                           "thread_cpu_ms_per_rep": round((c1 - c0) / reps * 1e3, 4)}  # fmt: skip
    if e0 is not None and e1 is not None:
        out["energy_j_per_rep"] = round((e1 - e0) / 1000 / reps, 5)
        out["power_w"] = round((e1 - e0) / 1000 / (t1 - t0), 2)
    return out


ISOLATED_PHASES = ("prefill", "decode", "forward", "forward_backward", "optimizer", "stage_a", "stage_b")


def run_isolated(alone: dict[str, Callable[[], Any]], sync: Callable[[], None], counter: Counter, min_reps: int,
                 min_s: float, t_start: float, budget_s: float) -> dict[str, Any]:  # fmt: skip
    """Every phase alone (``isolated``), backward derived as (forward + backward) - forward."""
    iso: dict[str, Any] = {}
    for name in ISOLATED_PHASES:
        if time.monotonic() - t_start > budget_s:
            break
        iso[name] = isolated(name, alone[name], sync, counter, min_reps, min_s)
        print(json.dumps(iso[name]), flush=True)
    if "forward_backward" in iso and "forward" in iso:
        fb, f = iso["forward_backward"], iso["forward"]
        iso["backward"] = {"phase": "backward", "derived": "forward_backward - forward",
                           "wall_ms_per_rep": round(fb["wall_ms_per_rep"] - f["wall_ms_per_rep"], 4)}  # fmt: skip
        if "energy_j_per_rep" in fb and "energy_j_per_rep" in f:
            e = fb["energy_j_per_rep"] - f["energy_j_per_rep"]
            iso["backward"]["energy_j_per_rep"] = round(e, 5)
            iso["backward"]["power_w"] = round(e / (iso["backward"]["wall_ms_per_rep"] / 1e3), 2)
    return iso


def merge_isolated(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """The truth: the mean of the runs before and after the hinted one, with their drift."""
    out: dict[str, Any] = {}
    for name, x in a.items():
        y = b.get(name)
        if not y:
            out[name] = dict(x, runs=1)
            continue
        m: dict[str, Any] = {"phase": name, "runs": 2}
        for k in ("wall_ms_per_rep", "energy_j_per_rep", "power_w", "thread_cpu_ms_per_rep"):
            if x.get(k) is not None and y.get(k) is not None:
                m[k] = round((x[k] + y[k]) / 2, 5)
                m[k + "_drift_pct"] = _err(y[k], x[k])
        out[name] = m
    return out


def start_recorder(args: argparse.Namespace, tmp: Path) -> tuple[subprocess.Popen[bytes], Path] | None:
    """The driver's raw power samples during the hinted run, from a process of its own."""
    if args.cpu:
        return None
    path = tmp / "power_samples.json"
    proc = subprocess.Popen([sys.executable, str(Path(__file__).with_name("power_recorder.py")), "--out", str(path)])
    time.sleep(0.6)  # its first poll takes the driver's history from before the run (discarded)
    return proc, path


def stop_recorder(rec: tuple[subprocess.Popen[bytes], Path] | None) -> dict[str, Any] | None:
    if rec is None:
        return None
    proc, path = rec
    proc.terminate()
    try:
        proc.wait(30)
        return json.loads(path.read_text())
    except Exception as exc:  # the measurement stands without it; say why
        proc.kill()
        return {"error": repr(exc)}


def reintegrate(samples: dict[str, Any] | None, spans: list[list[Any]], window: dict[str, Any],
                counter_j: float | None, delays_ms: list[float]) -> dict[str, Any]:  # fmt: skip
    """Per-phase mean span energy recomputed from the raw samples, for each sample delay.

    The daemon's own integration (PowerSeries, a step curve) over each span's device interval
    (else its host interval), scaled so the window integrates to the counter's delta (the daemon
    calibrates the same way over long windows).  ``delay 0`` is the samples at face value, not
    necessarily what the daemon computed live: the daemon applies its table's delay for the GPU
    model (none before round 4's run 1 added the H200's 3 ms; pass ``--power-delay-ms`` to include
    it here).  The delays show how much the per-phase figures depend on when a sample is taken to
    describe the GPU (power_lag.py measures that delay).
    """
    from gpuos_hintd.power_series import PowerSeries

    if not samples or not samples.get("samples") or not counter_j:
        return {}
    out: dict[str, Any] = {}
    t0, t1 = window["t0_ns"], window["t1_ns"]
    for d_ms in delays_ms:
        d = int(d_ms * 1e6)
        ser = PowerSeries(maxlen=1_000_000)
        ser.add([(int(t) - d, float(w)) for t, w in samples["samples"]])
        whole = ser.integrate(t0, t1, scale=1.0)
        if whole is None or whole.mj <= 0:
            continue
        scale = counter_j * 1000.0 / whole.mj
        per: dict[str, list[float]] = {}
        for name, s0, s1, d0, d1, *_ in spans:  # [name, host, host, dev, dev, busy ms or None]
            if not t0 <= s0 <= t1:
                continue
            a, b = (d0, d1) if d0 is not None else (s0, s1)
            got = ser.integrate(a, b, scale=scale)
            if got is not None:
                per.setdefault(name, []).append(got.mj / 1000.0)
        out[str(d_ms)] = {"scale": round(scale, 4), "energy_j_mean": {n: _mean(v) for n, v in per.items()}}
    return out


# ----------------------------------------------------------------------------- workloads
def build(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    dev = "cpu" if args.cpu else "cuda"
    dtype = torch.float32 if args.cpu else torch.float16
    torch.manual_seed(0)
    from transformers import GPT2Config, GPT2LMHeadModel

    if args.cpu:
        cfg = GPT2Config(n_layer=2, n_embd=64, n_head=4, n_positions=256, vocab_size=1000)
        batch, prompt = 2, 32
    else:  # GPT-2-medium's shape
        cfg = GPT2Config(n_layer=24, n_embd=1024, n_head=16, n_positions=1024, vocab_size=50257)
        batch, prompt = 8, 512
    lm = GPT2LMHeadModel(cfg).to(dev, dtype).eval()
    ids = torch.randint(0, cfg.vocab_size, (batch, prompt), device=dev)
    try:
        import torchvision

        net = torchvision.models.resnet50() if not args.cpu else torchvision.models.resnet18(num_classes=10)
        vision = type(net).__name__
    except Exception as exc:  # the smoke environment's torchvision may not match its torch
        net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                                  torch.nn.Flatten(), torch.nn.Linear(8, 10))  # fmt: skip
        vision = f"small CNN (torchvision unavailable: {type(exc).__name__})"
    net = net.to(dev).train()
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    img = torch.randn(8 if args.cpu else 64, 3, 32 if args.cpu else 224, 32 if args.cpu else 224, device=dev)
    lab = torch.randint(0, 10, (img.shape[0],), device=dev)
    n = 256 if args.cpu else 8192
    a = torch.randn(n, n, device=dev, dtype=dtype)
    b = torch.randn(n, n, device=dev, dtype=dtype)
    return {"torch": torch, "dev": dev, "lm": lm, "ids": ids, "net": net, "opt": opt, "img": img, "lab": lab,
            "a": a, "b": b, "vision": vision, "cfg": cfg.to_dict(), "batch": batch, "prompt": prompt}  # fmt: skip


def phases(w: dict[str, Any]) -> dict[str, Callable[[], Any]]:
    """Each phase's body as a callable (no sync inside), for the isolated and the hinted runs."""
    torch, lm, ids = w["torch"], w["lm"], w["ids"]
    state: dict[str, Any] = {}

    @torch.no_grad()
    def prefill() -> None:
        out = lm(input_ids=ids, use_cache=True)
        state["past"] = out.past_key_values
        state["next"] = out.logits[:, -1:].argmax(-1)

    @torch.no_grad()
    def decode() -> None:
        # One generate() step on a fixed-length cache (isolated repetitions keep the length).
        if "past" not in state:
            prefill()
        past = state["past"]
        extra = past.get_seq_length() - ids.shape[1] if hasattr(past, "get_seq_length") else 0
        if extra > 0:
            try:
                past.crop(-extra)  # negative: drop that many tokens (transformers 4.4x and 5.x alike)
            except Exception as exc:  # an API this script does not know: let the cache grow, and say so
                state.setdefault("crop_error", repr(exc))
        out = lm(input_ids=state["next"], past_key_values=past, use_cache=True)
        state["next"] = out.logits[:, -1:].argmax(-1)

    net, opt, img, lab = w["net"], w["opt"], w["img"], w["lab"]
    amp = torch.autocast(w["dev"], dtype=torch.float16 if w["dev"] == "cuda" else torch.bfloat16)

    def forward() -> None:
        with amp:
            state["loss"] = torch.nn.functional.cross_entropy(net(img), lab)

    def backward() -> None:
        if "loss" not in state:
            forward()
        state.pop("loss").backward()

    def optimizer() -> None:
        opt.step()
        opt.zero_grad(set_to_none=False)

    a, b = w["a"], w["b"]

    def stage_a() -> None:
        state["c"] = a @ b

    def stage_b() -> None:
        c = state.get("c", a)
        state["d"] = torch.tanh(c) * 0.5 + c

    return {"prefill": prefill, "decode": decode, "forward": forward, "backward": backward,
            "optimizer": optimizer, "stage_a": stage_a, "stage_b": stage_b}  # fmt: skip


def hinted_run(w: dict[str, Any], ph: dict[str, Callable[[], Any]], sync: Callable[[], None], args) -> dict[str, Any]:
    """The workloads with hints, device timing on; returns the window's host times."""
    import gpuos_client as h

    t0 = time.monotonic_ns()
    steps = 4 if args.cpu else 64
    for _ in range(args.requests):
        with h.phase("prefill", device=True):
            ph["prefill"]()
        for _ in range(steps):
            with h.phase("decode", device=True):
                ph["decode"]()
        sync()
    for _ in range(args.train_steps):
        for name in ("forward", "backward", "optimizer"):
            with h.phase(name, device=True):
                ph[name]()
        sync()
    for _ in range(args.pipeline_iters):  # asynchronous: no sync inside or between phases
        with h.phase("stage_a", device=True):
            ph["stage_a"]()
        with h.phase("stage_b", device=True):
            ph["stage_b"]()
    sync()
    return {"t0_ns": t0, "t1_ns": time.monotonic_ns()}


def profile(w: dict[str, Any], ph: dict[str, Callable[[], Any]], sync: Callable[[], None], args) -> dict[str, Any]:
    """torch.profiler's device work per phase occurrence, each phase profiled on its own, in ms.

    Each phase runs ``reps`` times under the profiler, with a device sync and a 5 ms idle gap after
    each occurrence, and the trace's device events (categories ``kernel``, ``gpu_memcpy``,
    ``gpu_memset``) are split into occurrences at those gaps.  Per occurrence: ``kernel_ms``, the
    sum of the device events' durations (GPU busy time), and ``span_ms``, first device event start
    to last end (what a pair of CUDA events around the phase measures, idle gaps included).
    Summing every device event of the window counts kernels that the autograd engine launches
    from its own thread (backward), and never counts the profiler's ``gpu_user_annotation``
    ranges - key_averages() merges those into the same ``record_function`` row, which double
    counted the first version of this harness.
    """
    torch = w["torch"]
    from torch.profiler import ProfilerActivity

    if args.cpu:
        return {}
    reps = 5
    out: dict[str, Any] = {}

    def fwd_bwd() -> None:
        ph["forward"]()
        ph["backward"]()

    bodies = dict(ph, forward_backward=fwd_bwd)
    for name in ("prefill", "decode", "forward", "forward_backward", "optimizer", "stage_a", "stage_b"):
        fn = bodies[name]
        fn()
        sync()
        with torch.profiler.profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for _ in range(reps):
                fn()
                sync()
                time.sleep(0.005)
        evs = [(ts, dur) for ts, dur, _ in device_events(chrome_trace(prof))]
        clusters: list[list[tuple[float, float]]] = []
        for ts, dur in evs:
            if clusters and ts - max(a + d for a, d in clusters[-1]) < 2500.0:  # us; the gaps are 5 ms
                clusters[-1].append((ts, dur))
            else:
                clusters.append([(ts, dur)])
        kern = [sum(d for _, d in c) / 1e3 for c in clusters]
        span = [(max(a + d for a, d in c) - c[0][0]) / 1e3 for c in clusters]
        out[name] = {
            "occurrences": len(clusters),
            "expected_occurrences": reps,
            "kernel_ms_per_occurrence": round(statistics.median(kern), 4) if kern else None,
            "span_ms_per_occurrence": round(statistics.median(span), 4) if span else None,
            "device_events": len(evs),
        }
    fb, f = out.get("forward_backward"), out.get("forward")
    if fb and f and fb["kernel_ms_per_occurrence"] and f["kernel_ms_per_occurrence"]:
        out["backward"] = {
            "derived": "forward_backward - forward",
            "kernel_ms_per_occurrence": round(fb["kernel_ms_per_occurrence"] - f["kernel_ms_per_occurrence"], 4),
            "span_ms_per_occurrence": round(fb["span_ms_per_occurrence"] - f["span_ms_per_occurrence"], 4),
        }
    return out


LAUNCH_CATEGORIES = ("cuda_runtime", "cuda_driver")  # the host calls that launch device work


def device_time_by_range(trace: dict[str, Any], names: tuple[str, ...]) -> dict[str, Any]:
    """Device time of each ``record_function`` occurrence in a chrome trace, by who launched it.

    Every device event (kernel, memcpy, memset) carries the correlation id of the runtime or
    driver call that launched it; that call happened on the host, inside the ``user_annotation``
    range of the phase that launched it, on whichever thread (backward's kernels are launched
    by the autograd engine's thread while the main thread's ``backward`` range is open).  So
    each device event is assigned to the named range, of any thread, that contains its launch's
    timestamp; with no host sync inside a phase, its kernels still run after the range has
    ended, which is what device time means.  Per occurrence: the sum of its events' durations
    (``kernel_ms``) and the length of their union (``union_ms``: busy time, what the CUPTI
    tracer reports; the two differ where records overlap, on two streams or by a few hundred ns
    between back-to-back kernels).
    The phases' ranges must follow one another (none nests in another, as in the hinted run);
    device events whose launch falls in no named range are counted, not guessed.
    """
    evs = [e for e in trace.get("traceEvents", []) if e.get("ph") == "X"]
    launch_ts = {
        e["args"]["correlation"]: float(e["ts"])
        for e in evs
        if e.get("cat") in LAUNCH_CATEGORIES and "correlation" in e.get("args", {})
    }
    ranges = sorted(
        (float(e["ts"]), float(e["ts"]) + float(e.get("dur", 0.0)), e["name"])
        for e in evs
        if e.get("cat") == "user_annotation" and e.get("name") in names
    )
    events: list[list[tuple[float, float]]] = [[] for _ in ranges]
    unassigned = 0
    starts = [r[0] for r in ranges]
    for e in evs:
        if e.get("cat") not in DEVICE_CATEGORIES:
            continue
        t = launch_ts.get(e.get("args", {}).get("correlation"))
        # The phases' ranges follow one another (none nests in another): the range that
        # contains t is the last one to start at or before t, if it has not ended by then.
        k = bisect.bisect_right(starts, t) - 1 if t is not None else -1
        if k < 0 or t > ranges[k][1]:
            unassigned += 1
            continue
        events[k].append((float(e["ts"]), float(e["ts"]) + float(e.get("dur", 0.0))))
    out: dict[str, Any] = {"unassigned_device_events": unassigned}
    for name in names:
        mine = [ev for ev, r in zip(events, ranges, strict=True) if r[2] == name]
        if mine:
            total = [sum(b - a for a, b in ev) / 1e3 for ev in mine]
            union = [union_length(ev) / 1e3 for ev in mine]
            out[name] = {
                "occurrences": len(mine),
                "kernel_ms_per_occurrence": round(statistics.fmean(total), 4),
                "kernel_ms_median": round(statistics.median(total), 4),
                "union_ms_per_occurrence": round(statistics.fmean(union), 4),
            }
    return out


def profile_in_context(ph: dict[str, Callable[[], Any]], sync: Callable[[], None], w, args) -> dict:
    """Kernel time per phase under the hinted run's own conditions: its sequences, unhinted.

    A phase's kernels run at the clocks of what runs around it: the isolated profile (5 lone
    repetitions with idle gaps) put stage_a's GEMM 14 % slower than the sustained pipeline and
    the training phases several per cent off.  Here each workload runs as ``hinted_run`` runs it
    (prefill then 64 decode steps then a sync; forward, backward, optimizer then a sync; the
    pipeline with no sync), once unprofiled to warm up and then under torch.profiler with each
    phase in a ``record_function`` range, and ``device_time_by_range`` assigns the device events.
    """
    torch = w["torch"]
    from torch.profiler import ProfilerActivity, record_function

    if args.cpu:
        return {}

    def generate(n: int) -> None:
        for _ in range(n):
            with record_function("prefill"):
                ph["prefill"]()
            for _ in range(64):
                with record_function("decode"):
                    ph["decode"]()
            sync()

    def train(n: int) -> None:
        for _ in range(n):
            for name in ("forward", "backward", "optimizer"):
                with record_function(name):
                    ph[name]()
            sync()

    def pipeline(n: int) -> None:
        for _ in range(n):
            with record_function("stage_a"):
                ph["stage_a"]()
            with record_function("stage_b"):
                ph["stage_b"]()
        sync()

    out: dict[str, Any] = {}
    for label, body, warm, reps, names in (
        ("generate", generate, 1, 2, ("prefill", "decode")),
        ("train", train, 5, 10, ("forward", "backward", "optimizer")),
        ("pipeline", pipeline, 100, 50, ("stage_a", "stage_b")),
    ):
        try:  # one workload's profile failing must not lose the run's other results
            body(warm)
            with torch.profiler.profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
                body(reps)
            trace = chrome_trace(prof)
        except Exception as exc:
            out[f"{label}_error"] = repr(exc)[:300]
            continue
        got = device_time_by_range(trace, names)
        out[f"{label}_unassigned_device_events"] = got.pop("unassigned_device_events")
        out.update(got)
    return out


def step_cost(ph: dict[str, Callable[[], Any]], sync: Callable[[], None], args) -> dict[str, Any]:
    """What hinting costs the decode loop itself: unhinted vs phase() vs phase(device=True).

    Interleaved blocks of 32 decode steps (A, B, C, A, B, C, ...), >= 8 blocks each, per-step wall
    time per block.  This separates the hints' cost from the workload's own speed, so that a
    hinted step that runs longer than an isolated one is either explained by it or not.
    """
    import gpuos_client as h

    steps = 4 if args.cpu else 32
    blocks = 2 if args.cpu else 8
    modes: dict[str, Callable[[], None]] = {}

    def unhinted() -> None:
        for _ in range(steps):
            ph["decode"]()

    def hinted() -> None:
        for _ in range(steps):
            with h.phase("decode_ab"):
                ph["decode"]()

    def device_timed() -> None:
        for _ in range(steps):
            with h.phase("decode_ab_dev", device=True):
                ph["decode"]()

    modes = {"unhinted": unhinted, "phase": hinted, "phase_device": device_timed}
    per: dict[str, list[float]] = {m: [] for m in modes}
    for fn in modes.values():
        fn()  # warm each path once
    sync()
    for _ in range(blocks):
        for m, fn in modes.items():
            t0 = time.perf_counter()
            fn()
            sync()
            per[m].append((time.perf_counter() - t0) / steps * 1e3)
    med = {m: statistics.median(v) for m, v in per.items()}
    return {
        "steps_per_block": steps,
        "blocks": blocks,
        "order": "unhinted, phase, phase_device, repeated (interleaved)",
        "step_ms": {
            m: {"median": round(med[m], 4), "min": round(min(v), 4), "max": round(max(v), 4)} for m, v in per.items()
        },
        "phase_vs_unhinted_pct": round(100 * (med["phase"] / med["unhinted"] - 1), 2),
        "device_vs_unhinted_pct": round(100 * (med["phase_device"] / med["unhinted"] - 1), 2),
        # the spans it made (the warm-up block and the timed ones), for daemon_figures' wait
        "spans": {"decode_ab": steps * (blocks + 1), "decode_ab_dev": steps * (blocks + 1)},
    }


# ----------------------------------------------------------------------------- daemon's figures
def daemon_figures(env: dict[str, str], window: dict[str, Any], n_spans: int, n_dev: int, cpu: bool) -> dict[str, Any]:
    """The daemon's spans once all ``n_spans`` are stored and 95 % of the ``n_dev`` device-timed ones
    have their device interval (or 30 s passed); per-phase means, the phase fits, the tables.

    (The first version counted step_cost's spans by a formula that was wrong - 704 for 576 on the
    H200 - and counted its untimed spans as device-timed, so every run waited out its 60 s.)
    """
    from gpuos_hintd.control import request

    db = Path(env["GPUOS_HINT_STATE_DIR"]) / "gpuos-hint.db"
    rows: list[Any] = []
    give_up = time.monotonic() + 30.0  # device intervals still missing by then are reported missing
    for _ in range(120):
        try:
            request(env["GPUOS_HINT_CONTROL"], "sync", timeout_s=10.0)
        except Exception:
            pass
        if db.exists():
            from gpuos_hintd.store import read as store_read

            conn = store_read.connect(db)  # spans with their signals (schema v2 packs them)
            rows = conn.execute(
                "SELECT name, start_ns, end_ns, dev_start_ns, dev_end_ns, signals FROM spans"
            ).fetchall()
            conn.close()
            with_dev = [r for r in rows if r[3] is not None]
            if len(rows) >= n_spans and (cpu or len(with_dev) >= n_dev * 0.95 or time.monotonic() > give_up):
                break
        time.sleep(0.5)
    per: dict[str, dict[str, list[float]]] = {}
    total_j = 0.0
    for name, s0, s1, d0, d1, sig in rows:
        sig = json.loads(sig)
        p = per.setdefault(
            name,
            {
                "energy_j": [],
                "err_j": [],
                "dev_ms": [],
                "host_ms": [],
                "thread_cpu_ms": [],
                "counter_j": [],
                "busy_ms": [],
            },
        )
        if sig.get("gpu_energy_counter_j") is not None:  # the 10 Hz counter interpolation (before issue 9)
            p["counter_j"].append(sig["gpu_energy_counter_j"])
        if sig.get("dev_busy_ms") is not None:  # CUPTI busy time inside the device interval (opt-in)
            p["busy_ms"].append(sig["dev_busy_ms"])
        if sig.get("gpu_energy_j") is not None:
            p["energy_j"].append(sig["gpu_energy_j"])
            p["err_j"].append(sig.get("gpu_energy_err_j") or 0.0)
            if window["t0_ns"] <= s0 <= window["t1_ns"]:  # only the counter's window (not step_cost's spans)
                total_j += sig["gpu_energy_j"]
        if d0 is not None:
            p["dev_ms"].append((d1 - d0) / 1e6)
        p["host_ms"].append((s1 - s0) / 1e6)
        if sig.get("thread_cpu_ns") is not None:
            p["thread_cpu_ms"].append(sig["thread_cpu_ns"] / 1e6)
    out = {
        name: {
            "spans": len(p["host_ms"]),
            "with_device_interval": len(p["dev_ms"]),
            "energy_j_mean": _mean(p["energy_j"]),
            "energy_err_j_mean": _mean(p["err_j"]),
            "dev_ms_mean": _mean(p["dev_ms"]),
            "host_ms_mean": _mean(p["host_ms"]),
            "thread_cpu_ms_mean": _mean(p["thread_cpu_ms"]),
            "counter_energy_j_mean": _mean(p["counter_j"]),
            "dev_busy_ms_mean": _mean(p["busy_ms"]),
            "with_busy": len(p["busy_ms"]),
        }
        for name, p in per.items()
    }
    ctl = subprocess.run([sys.executable, "-m", "gpuos_hintd.cli.main", "phases", "--json"], env=env,
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    fits = {}
    try:
        for r in json.loads(ctl.stdout):
            if r.get("energy_fit"):
                fits[r["name"]] = r["energy_fit"]
    except ValueError:
        pass
    table = subprocess.run([sys.executable, "-m", "gpuos_hintd.cli.main", "phases"], env=env,
                           capture_output=True, text=True, timeout=120).stdout  # fmt: skip
    status = request(env["GPUOS_HINT_CONTROL"], "status", timeout_s=10.0)
    # Per span: name, host begin/end, device begin/end (ns), and its CUPTI busy ms (None untraced):
    # enough to relate busy time to where each span's device interval sits (accuracy.md).
    raw = [[n, s0, s1, d0, d1, json.loads(sig).get("dev_busy_ms")] for n, s0, s1, d0, d1, sig in rows]
    return {"phases": out, "fits": fits, "span_energy_total_j": round(total_j, 3), "phases_table": table,
            "raw_spans": raw,
            "samplers": status.get("samplers"), "counters": status.get("counters"),
            "rejected": status.get("rejected")}  # fmt: skip


def _mean(xs: list[float]) -> float | None:
    return round(statistics.fmean(xs), 5) if xs else None


def _err(got: float | None, true: float | None) -> float | None:
    return round(100.0 * (got - true) / true, 2) if got is not None and true else None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cpu", action="store_true", help="smoke mode: CPU, tiny sizes, no NVML truth")
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "out")))
    ap.add_argument("--requests", type=int, default=None)
    ap.add_argument("--train-steps", type=int, default=None)
    ap.add_argument("--pipeline-iters", type=int, default=None)
    ap.add_argument("--budget-s", type=float, default=330.0, help="stop adding work after this (default 330)")
    ap.add_argument("--device-busy", action="store_true",
                    help="CUPTI busy time in the hinted run (gpuos_client.device_busy); truth runs stay untraced")  # fmt: skip
    ap.add_argument("--power-delay-ms", type=float, default=None,
                    help="also recompute span energy with this sample delay (power_lag.py's fit)")  # fmt: skip
    args = ap.parse_args()
    args.requests = args.requests or (2 if args.cpu else 40)
    args.train_steps = args.train_steps or (3 if args.cpu else 60)
    args.pipeline_iters = args.pipeline_iters or (5 if args.cpu else 300)
    args.out.mkdir(parents=True, exist_ok=True)
    t_start = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="gpuos-accgpu-"))
    daemon, env = start_daemon(tmp, [])
    result: dict[str, Any] = {"benchmark": "accuracy_gpu", "mode": "cpu-smoke" if args.cpu else "gpu",
                              "device_busy": bool(args.device_busy),
                              "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}  # fmt: skip
    try:
        w = build(args)
        torch = w["torch"]
        sync = (lambda: None) if args.cpu else torch.cuda.synchronize
        if not args.cpu:
            result["device"] = torch.cuda.get_device_name(0)
        result["workload"] = {"lm_config": {k: w["cfg"][k] for k in ("n_layer", "n_embd", "n_head")},
                              "batch": w["batch"], "prompt_tokens": w["prompt"], "vision": w["vision"]}  # fmt: skip
        ph = phases(w)
        counter = Counter(not args.cpu)
        min_reps, min_s = (3, 0.05) if args.cpu else (30, 2.0)

        def fwd_bwd() -> None:
            ph["forward"]()
            ph["backward"]()

        alone = dict(ph, forward_backward=fwd_bwd)
        # Truth before and after the hinted run (drift between the two is reported); the profiler
        # runs last, in this process, so that no CUPTI state it leaves behind touches a run that
        # is measured (torch.profiler's callbacks stay registered after it exits).
        iso_a = run_isolated(alone, sync, counter, min_reps, min_s, t_start, args.budget_s * 0.25)
        result["step_cost"] = step_cost(ph, sync, args)
        print(json.dumps(result["step_cost"]), flush=True)
        time.sleep(1.0)  # an idle gap the fit sees as unhinted
        rec = start_recorder(args, tmp)
        if args.device_busy:  # CUPTI busy time for the hinted run only (it costs per launch)
            import gpuos_client as h

            h.device_busy(True)
        e0 = counter.mj()
        window = hinted_run(w, ph, sync, args)
        e1 = counter.mj()
        time.sleep(1.5)  # the daemon's power samples past the end
        if args.device_busy:
            # The marks wait (<= 2 s) for CUPTI's records of their kernels: let them go first.
            h.flush(10.0)
            time.sleep(2.5)
            result["busy_tracer"] = h.stats()["device"].get("busy")
            h.device_busy(False)
        samples = stop_recorder(rec)
        iso_b = run_isolated(alone, sync, counter, min_reps, min_s, t_start, args.budget_s * 0.6)
        iso = merge_isolated(iso_a, iso_b)
        result["isolated"] = iso
        result["isolated_before"], result["isolated_after"] = iso_a, iso_b
        result["profiler"] = profile(w, ph, sync, args)
        result["profiler_in_context"] = profile_in_context(ph, sync, w, args)
        import gpuos_client as h

        h.flush(10.0)
        n_dev = args.requests * (1 + (4 if args.cpu else 64)) + 3 * args.train_steps + 2 * args.pipeline_iters
        made = result["step_cost"]["spans"]
        n_spans = n_dev + made["decode_ab"] + made["decode_ab_dev"]
        fig = daemon_figures(env, window, n_spans, n_dev + made["decode_ab_dev"], args.cpu)
        result["daemon"] = fig
        result["client"] = h.stats()  # delivery and device-interval accounting (marks made, pending)
        result["counter_window_j"] = round((e1 - e0) / 1000, 3) if e0 is not None and e1 is not None else None
        if result["counter_window_j"]:
            result["span_energy_sum_vs_counter_pct"] = _err(fig["span_energy_total_j"], result["counter_window_j"])
        cmp = {}
        for name, d in fig["phases"].items():
            truth = iso.get(name, {})
            prof = result["profiler"].get(name, {})
            ctx = result["profiler_in_context"].get(name, {})
            fit = fig["fits"].get(name)
            dev_s = (d["dev_ms_mean"] or d["host_ms_mean"] or 0) / 1e3
            cmp[name] = {
                "truth_energy_j": truth.get("energy_j_per_rep"),
                "span_energy_j": d["energy_j_mean"],
                "span_energy_err_pct": _err(d["energy_j_mean"], truth.get("energy_j_per_rep")),
                "fit_energy_j": round(fit["power_w"] * dev_s, 5) if fit else None,
                "fit_energy_err_pct": _err(fit["power_w"] * dev_s, truth.get("energy_j_per_rep")) if fit else None,
                "fit_power_w": fit["power_w"] if fit else None,
                "fit_ci_w": fit["ci_w"] if fit else None,
                "truth_power_w": truth.get("power_w"),
                "dev_ms": d["dev_ms_mean"],
                "profiler_kernel_ms": prof.get("kernel_ms_per_occurrence"),
                "dev_vs_kernel_pct": _err(d["dev_ms_mean"], prof.get("kernel_ms_per_occurrence")),
                "profiler_in_context_kernel_ms": ctx.get("kernel_ms_per_occurrence"),
                "dev_vs_in_context_kernel_pct": _err(d["dev_ms_mean"], ctx.get("kernel_ms_per_occurrence")),
                "busy_ms": d.get("dev_busy_ms_mean"),
                "profiler_in_context_union_ms": ctx.get("union_ms_per_occurrence"),
                "busy_vs_in_context_union_pct": _err(d.get("dev_busy_ms_mean"), ctx.get("union_ms_per_occurrence")),
                "profiler_span_ms": prof.get("span_ms_per_occurrence"),
                "dev_vs_span_pct": _err(d["dev_ms_mean"], prof.get("span_ms_per_occurrence")),
                "isolated_wall_ms": truth.get("wall_ms_per_rep"),
                "dev_vs_isolated_wall_pct": _err(d["dev_ms_mean"], truth.get("wall_ms_per_rep")),
            }
        result["comparison"] = cmp
        raw_spans = fig.pop("raw_spans")
        delays = sorted(
            {0.0, 5.0, 10.0, 15.0, 20.0, 25.0, 30.0, 40.0}
            | ({args.power_delay_ms} if args.power_delay_ms is not None else set())
        )
        result["reintegrated"] = {
            "delays_ms": delays,
            "by_delay": reintegrate(samples, raw_spans, window, result["counter_window_j"], delays),
        }
        for r in result["reintegrated"]["by_delay"].values():
            r["err_pct"] = {n: _err(e, iso.get(n, {}).get("energy_j_per_rep")) for n, e in r["energy_j_mean"].items()}
        (args.out / "accuracy_gpu_raw.json").write_text(
            json.dumps({"window": window, "spans": raw_spans, "power": samples}) + "\n"
        )
    finally:
        daemon.terminate()
        try:
            daemon.wait(15)
        except subprocess.TimeoutExpired:
            daemon.kill()
        result["wall_s"] = round(time.monotonic() - t_start, 1)
        (args.out / "accuracy_gpu.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
        log = tmp / "daemon.log"
        if log.exists():
            (args.out / "accuracy_gpu_daemon.log").write_text(log.read_text()[-200_000:])
        print(f"wrote {args.out / 'accuracy_gpu.json'} in {result['wall_s']} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
