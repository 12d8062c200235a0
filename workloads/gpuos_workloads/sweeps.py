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
"""

from __future__ import annotations

import time
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


def run(args: Any) -> dict[str, Any]:
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
    p.add_argument("--sweep", choices=["cadence", "sync", "ordering", "all"], default="all")
    p.add_argument("--launches", type=int, default=200, help="kernel launches per level (default 200)")
    p.add_argument("--n", type=int, default=256, help="matrix size per launch (default 256)")
    args = p.parse_args(argv)
    emit_summary(run(args), args.json, render)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
