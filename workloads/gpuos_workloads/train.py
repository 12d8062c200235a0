"""A training loop: data loading, forward, backward, optimizer step, periodic checkpoint.

The phases stress different parts of the machine on purpose: data loading
reads and decodes files on the CPU (I/O syscalls, page cache), forward and
backward are GEMM-bound on the device, the optimizer is a memory-bound sweep
over the parameters, and the checkpoint writes and fsyncs them (write I/O,
a device-to-host copy).  Phases: train/step/{data,forward,backward,optimizer}
and checkpoint; classes training.data / training.step / training.checkpoint.

    python -m gpuos_workloads.train --steps 50 [--no-hints] [--device cpu|gpu]
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any

from .common import Hints, Timer, base_parser, emit_summary, get_backend, hint_summary, progress


def make_dataset(root: Path, shards: int, rows: int, features: int, seed: int) -> list[Path]:
    """Write shards of random float32 rows as .npy files: real files for the loader to read."""
    import numpy as np

    rng = np.random.default_rng(seed)
    paths = []
    for i in range(shards):
        p = root / f"shard{i:03d}.npy"
        np.save(p, rng.standard_normal((rows, features), dtype=np.float32))
        paths.append(p)
    return paths


def load_batch(paths: list[Path], step: int, batch: int) -> Any:
    """Read one shard from disk and 'decode' it on the CPU (normalise, shuffle)."""
    import numpy as np

    data = np.load(paths[step % len(paths)])
    data = (data - data.mean(axis=0)) / (data.std(axis=0) + 1e-6)
    idx = np.random.default_rng(step).permutation(len(data))[:batch]
    return np.ascontiguousarray(data[idx])


def run(args: Any) -> dict[str, Any]:
    be = get_backend(args.device)
    xp = be.xp
    hints = Hints(args.hints, args.device_timing and be.name == "cupy")
    timer = Timer(be)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="gpuos-train-"))
    workdir.mkdir(parents=True, exist_ok=True)
    with hints.phase("prepare"):
        paths = make_dataset(workdir, args.shards, args.batch * 2, args.features, args.seed)
    rng = xp.random.default_rng(args.seed) if hasattr(xp.random, "default_rng") else xp.random
    # 1/sqrt(fan-in) initialisation and a step size scaled by the width keep any size stable.
    w1 = (rng.standard_normal((args.features, args.hidden), dtype=xp.float32) / args.features**0.5).astype(xp.float32)
    w2 = (rng.standard_normal((args.hidden, 1), dtype=xp.float32) / args.hidden**0.5).astype(xp.float32)
    lr = args.lr * 1024 / args.hidden
    m1, m2 = xp.zeros_like(w1), xp.zeros_like(w2)
    ema1 = w1.copy()
    target_w = rng.standard_normal((args.features, 1), dtype=xp.float32).astype(xp.float32)
    progress(
        args.quiet,
        f"train: {be.name} on {be.device}, {args.steps} steps, batch {args.batch}, "
        f"hidden {args.hidden}, checkpoint every {args.checkpoint_every}",
    )
    losses = []
    t0 = time.perf_counter()
    for step in range(args.steps):
        with hints.phase("step", step=step):
            with hints.workload_class("training.data"), hints.phase("data"), timer.section("data", sync=False):
                x_host = load_batch(paths, step, args.batch)
                x = xp.asarray(x_host)
            with hints.workload_class("training.step"):
                with hints.phase("forward"), timer.section("forward"):
                    h = xp.maximum(x @ w1, 0)
                    pred = h @ w2
                    y = x @ target_w / args.features**0.5
                    err = pred - y
                with hints.phase("backward"), timer.section("backward"):
                    g2 = h.T @ err / args.batch
                    gh = (err @ w2.T) * (h > 0)
                    g1 = x.T @ gh / args.batch
                with hints.phase("optimizer"), timer.section("optimizer"):
                    m1 *= 0.9  # momentum SGD
                    m1 += g1
                    m2 *= 0.9
                    m2 += g2
                    w1 -= lr * m1
                    w2 -= lr * m2
                    for _ in range(args.optimizer_sweeps):  # weight averaging: memory-bound sweeps
                        ema1 *= 0.99
                        ema1 += 0.01 * w1
            if step % args.log_every == 0 or step == args.steps - 1:
                losses.append(float((err**2).mean()))  # a host sync, as logging does
        if args.checkpoint_every and (step + 1) % args.checkpoint_every == 0:
            with (
                hints.workload_class("training.checkpoint"),
                hints.phase("checkpoint", step=step),
                timer.section("checkpoint"),
            ):
                path = workdir / "ckpt.npy"
                host = be.xp.asnumpy(w1) if be.name == "cupy" else w1
                with open(path, "wb") as f:
                    import numpy as np

                    np.save(f, host)
                    f.flush()
                    os.fsync(f.fileno())
            hints.mark("checkpoint_written", step=step)
    be.sync()
    wall = time.perf_counter() - t0
    stats = hints.finish()
    return {
        "workload": "train",
        "backend": be.name,
        "device": be.device,
        "hints": args.hints,
        "steps": args.steps,
        "batch": args.batch,
        "hidden": args.hidden,
        "wall_s": round(wall, 6),
        "sections_s": {k: round(v, 6) for k, v in timer.totals.items()},
        "loss_first": losses[0] if losses else None,
        "loss_last": losses[-1] if losses else None,
        "client": stats,
    }


def render(s: dict[str, Any]) -> str:
    secs = ", ".join(f"{k} {v:.3f}s" for k, v in s["sections_s"].items())
    lines = [
        f"train workload on {s['backend']} ({s['device']}), hints {'on' if s['hints'] else 'off'}",
        f"  {s['steps']} steps of batch {s['batch']} in {s['wall_s']:.3f} s: {secs}",
        f"  loss {s['loss_first']:.4f} -> {s['loss_last']:.4f}",
    ]
    if s.get("client"):
        lines.append(hint_summary(s["client"]))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = base_parser("python -m gpuos_workloads.train", __doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--batch", type=int, default=2048)
    p.add_argument("--features", type=int, default=512)
    p.add_argument("--hidden", type=int, default=2048)
    p.add_argument("--shards", type=int, default=4)
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument("--optimizer-sweeps", type=int, default=4)
    p.add_argument("--checkpoint-every", type=int, default=10, help="0 = never")
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--workdir", help="where data shards and checkpoints go (default: a new tmp dir)")
    args = p.parse_args(argv)
    emit_summary(run(args), args.json, render)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
