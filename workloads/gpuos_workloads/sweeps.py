"""Mechanism-isolation sweeps: submission cadence, sync frequency, execution ordering.

Each sweep varies one thing the OS might see and keeps the rest fixed; each
level is one hinted phase (``cadence``, ``sync`` or ``ordering``, with the
level in its attrs), so the daemon's spans line up with the levels and the
evaluation can ask which levels the OS tells apart on its own.

* cadence: launch one small kernel, then idle for a gap (0 us .. 2 ms); the
  gap sets the submission rate the driver sees (ioctl cadence on a GPU).
* sync: enqueue work and synchronise every k launches (k = 1 .. never): the
  host thread's time in futex/poll waits vs running.
* ordering: two independent streams of work, interleaved (A B A B ...) or
  grouped (A A ... B B ...).  On a GPU these use two CUDA streams.

    python -m gpuos_workloads.sweeps [--sweep cadence|sync|ordering|all] [--device cpu|gpu]

Phase 2 (``--sweep phase2 --schedule FILE``): the levels of a randomised schedule
(``benchmarks/phase2.py`` writes it), each *held* for ``--hold-s`` seconds so that
the OS sees many sample windows of it; the achieved launches, syncs and work are
written with each level's CLOCK_MONOTONIC interval (the harness's ground truth,
hints or not).  On the CPU a launch goes to a real queue drained by a worker
thread per stream (``QueueDevice``), so submission and sync are real
producer/consumer events the kernel scheduler sees.
"""

from __future__ import annotations

import json
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from .common import Hints, base_parser, emit_summary, get_backend, hint_summary, progress

CADENCE_GAPS_US = (0, 50, 200, 1000, 2000)
SYNC_EVERY = (1, 4, 16, 64, 0)  # 0 = never (one sync at the end of the level)


def _spin_sleep(seconds: float) -> None:
    """Sleep for sub-millisecond gaps without the scheduler's 50 us+ granularity hiding them."""
    if seconds <= 0:
        return
    end = time.perf_counter() + seconds
    if seconds > 0.0005:
        time.sleep(seconds - 0.0003)
    while time.perf_counter() < end:
        pass


#: The knobs of Phase 2: the parameter each one sets, and its levels in knob order.
#: sync ``0`` = never inside the level (one sync at its end) and sorts last (the least frequent).
PHASE2_KNOBS: dict[str, tuple[str, tuple[Any, ...]]] = {
    "cadence": ("gap_us", (0, 50, 200, 1000, 2000)),
    "sync": ("every", (1, 4, 16, 64, 0)),
    "ordering": ("order", ("interleaved", "grouped")),
    "size": ("n", (64, 128, 256)),
}
#: What every knob holds fixed while another one varies.
PHASE2_BASE: dict[str, Any] = {"gap_us": 0, "every": 16, "order": "single", "n": 128}
#: Launches per stream between syncs in the ordering knob (two streams: 2 x 16 per sync).
ORDER_BLOCK = 16


class QueueDevice:
    """The CPU analogue of a GPU's launch queues: one worker thread per stream runs queued kernels.

    ``launch`` enqueues (and blocks when the queue is full, as a full CUDA launch queue blocks the
    host); ``sync`` enqueues an event on every stream and waits for all of them - a futex wait of
    the host thread while the workers compute.  What differs from a GPU, and is said in
    docs/evaluation.md: the "device" here is a host thread, so its busy/idle state is itself
    visible in /proc (running vs waiting in futex), where a GPU's is visible only through NVML.
    """

    def __init__(self, streams: int = 2, depth: int = 1024) -> None:
        self.queues: list[queue.Queue[Callable[[], Any] | None]] = [queue.Queue(maxsize=depth) for _ in range(streams)]
        self.threads = [threading.Thread(target=self._work, args=(q,), daemon=True) for q in self.queues]
        for t in self.threads:
            t.start()

    @staticmethod
    def _work(q: queue.Queue[Callable[[], Any] | None]) -> None:
        while True:
            fn = q.get()
            if fn is None:
                return
            fn()

    def launch(self, stream: int, fn: Callable[[], Any]) -> None:
        self.queues[stream].put(fn)

    def sync(self) -> None:
        events = []
        for q in self.queues:
            ev = threading.Event()
            q.put(ev.set)
            events.append(ev)
        for ev in events:
            ev.wait()

    def close(self) -> None:
        for q in self.queues:
            q.put(None)
        for t in self.threads:
            t.join(5)


def _hold(
    cfg: dict[str, Any], hold_s: float, launch: Callable[[int, int], None], sync: Callable[[], None]
) -> dict[str, int]:
    """Run one level's pattern until hold_s has passed; count what was done."""
    n, gap, every, order = cfg["n"], cfg["gap_us"] / 1e6, cfg["every"], cfg["order"]
    launches = syncs = 0
    end = time.monotonic() + hold_s
    while time.monotonic() < end:
        if order == "single":
            launch(0, n)
            launches += 1
            _spin_sleep(gap)
            if every and launches % every == 0:
                sync()
                syncs += 1
        else:
            seq = [0, 1] * ORDER_BLOCK if order == "interleaved" else [0] * ORDER_BLOCK + [1] * ORDER_BLOCK
            for which in seq:
                launch(which, n)
                launches += 1
                _spin_sleep(gap)
            sync()
            syncs += 1
    sync()
    syncs += 1
    return {"launches": launches, "syncs": syncs}


def phase2(args: Any) -> dict[str, Any]:
    """Hold each level of the schedule for args.hold_s; return the levels with their intervals and work."""
    be = get_backend(args.device)
    xp = be.xp
    hints = Hints(args.hints)
    with open(args.schedule) as f:
        schedule = json.load(f)
    base = dict(PHASE2_BASE, n=args.base_n or PHASE2_BASE["n"])
    sizes = sorted({int(it["level"]) for it in schedule if it["knob"] == "size"} | {base["n"]})
    mats = {n: (xp.ones((n, n), dtype=xp.float32), xp.ones((n, n), dtype=xp.float32)) for n in sizes}
    dev: QueueDevice | None = None
    if be.name == "cupy":
        streams = (xp.cuda.Stream(non_blocking=True), xp.cuda.Stream(non_blocking=True))

        def launch(which: int, n: int) -> None:
            a, b = mats[n]
            with streams[which]:
                _ = a @ b

        def sync() -> None:
            for s in streams:
                s.synchronize()
    else:
        dev = QueueDevice(streams=2)

        def launch(which: int, n: int) -> None:
            a, b = mats[n]
            dev.launch(which, lambda: a @ b)

        sync = dev.sync
    levels: list[dict[str, Any]] = []
    progress(args.quiet, f"phase2: {len(schedule)} levels of {args.hold_s} s on {be.name} ({be.device})")
    try:
        with hints.workload_class("batch.compute"):
            for item in schedule:
                knob, level = item["knob"], item["level"]
                cfg = dict(base)
                cfg[PHASE2_KNOBS[knob][0]] = level
                if knob == "ordering":
                    cfg["every"] = 2 * ORDER_BLOCK
                t0 = time.monotonic_ns()
                with hints.phase("phase2", knob=knob, level=str(level), repeat=item["repeat"]):
                    done = _hold(cfg, args.hold_s, launch, sync)
                t1 = time.monotonic_ns()
                levels.append(
                    {
                        **item,
                        "t0_ns": t0,
                        "t1_ns": t1,
                        **done,
                        "flop": done["launches"] * 2 * cfg["n"] ** 3,
                        "work_flop_per_s": done["launches"] * 2 * cfg["n"] ** 3 / max((t1 - t0) / 1e9, 1e-9),
                    }
                )
    finally:
        if dev is not None:
            dev.close()
    stats = hints.finish()
    return {"workload": "sweeps", "sweep": "phase2", "backend": be.name, "device": be.device, "hints": args.hints,
            "hold_s": args.hold_s, "levels": levels, "client": stats}  # fmt: skip


def run(args: Any) -> dict[str, Any]:
    if args.sweep == "phase2":
        return phase2(args)
    be = get_backend(args.device)
    xp = be.xp
    hints = Hints(args.hints)
    a = xp.ones((args.n, args.n), dtype=xp.float32)
    b = xp.ones((args.n, args.n), dtype=xp.float32)
    streams = (None, None)
    if be.name == "cupy":
        streams = (xp.cuda.Stream(non_blocking=True), xp.cuda.Stream(non_blocking=True))

    def launch(which: int = 0) -> None:
        s = streams[which]
        if s is None:
            _ = a @ b
        else:
            with s:
                _ = a @ b

    def sync() -> None:
        be.sync()
        for s in streams:
            if s is not None:
                s.synchronize()

    sweeps = ("cadence", "sync", "ordering") if args.sweep == "all" else (args.sweep,)
    levels: list[dict[str, Any]] = []
    progress(args.quiet, f"sweeps {', '.join(sweeps)} on {be.name} ({be.device}), {args.launches} launches per level")
    with hints.workload_class("batch.compute"):
        for sweep in sweeps:
            if sweep == "cadence":
                for gap in CADENCE_GAPS_US:
                    t0 = time.perf_counter()
                    with hints.phase("cadence", gap_us=gap):
                        for _ in range(args.launches):
                            launch()
                            _spin_sleep(gap / 1e6)
                        sync()
                    levels.append({"sweep": sweep, "gap_us": gap, "s": time.perf_counter() - t0})
            elif sweep == "sync":
                for every in SYNC_EVERY:
                    t0 = time.perf_counter()
                    with hints.phase("sync", every=every):
                        for i in range(1, args.launches + 1):
                            launch()
                            if every and i % every == 0:
                                sync()
                        sync()
                    levels.append({"sweep": sweep, "every": every, "s": time.perf_counter() - t0})
            elif sweep == "ordering":
                for order in ("interleaved", "grouped"):
                    t0 = time.perf_counter()
                    with hints.phase("ordering", order=order):
                        if order == "interleaved":
                            for _ in range(args.launches // 2):
                                launch(0)
                                launch(1)
                        else:
                            for which in (0, 1):
                                for _ in range(args.launches // 2):
                                    launch(which)
                        sync()
                    levels.append({"sweep": sweep, "order": order, "s": time.perf_counter() - t0})
    stats = hints.finish()
    for lv in levels:
        lv["s"] = round(lv["s"], 6)
        lv["launches_per_s"] = round(args.launches / lv["s"], 1) if lv["s"] else None
    return {
        "workload": "sweeps",
        "backend": be.name,
        "device": be.device,
        "hints": args.hints,
        "n": args.n,
        "launches": args.launches,
        "levels": levels,
        "client": stats,
    }


def render(s: dict[str, Any]) -> str:
    if s.get("sweep") == "phase2":
        return f"phase2 on {s['backend']} ({s['device']}): {len(s['levels'])} levels held {s['hold_s']} s each"
    lines = [f"sweeps on {s['backend']} ({s['device']}), {s['launches']} launches of {s['n']}^2 matmul per level"]
    for lv in s["levels"]:
        knob = next(f"{k}={v}" for k, v in lv.items() if k not in ("sweep", "s", "launches_per_s"))
        lines.append(
            f"  {lv['sweep']:9s} {knob:18s} {lv['s'] * 1e3:9.2f} ms  {lv['launches_per_s']:>12,.0f} launches/s"
        )
    if s.get("client"):
        lines.append(hint_summary(s["client"]))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = base_parser("python -m gpuos_workloads.sweeps", __doc__.split("\n\n")[0])
    p.add_argument("--sweep", choices=["cadence", "sync", "ordering", "all", "phase2"], default="all")
    p.add_argument("--schedule", metavar="FILE", help="phase2: JSON list of {knob, level, repeat} in run order")
    p.add_argument("--hold-s", type=float, default=2.4, help="phase2: seconds each level is held (default 2.4)")
    p.add_argument("--base-n", type=int, help="phase2: matrix size while another knob varies (default 128)")
    p.add_argument("--launches", type=int, default=200, help="kernel launches per level (default 200)")
    p.add_argument("--n", type=int, default=256, help="matrix size per launch (default 256)")
    args = p.parse_args(argv)
    if args.sweep == "phase2" and not args.schedule:
        p.error("--sweep phase2 needs --schedule FILE")
    emit_summary(run(args), args.json, render)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
