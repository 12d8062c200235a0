"""An LLM-shaped inference workload: one prefill, then many decode steps.

Prefill multiplies the whole prompt (tokens x hidden) through every layer:
large GEMMs, compute bound.  Decode runs one token at a time (1 x hidden):
small, launch- and memory-bound kernels, and a host sync per token to pick
the next one - the pattern that makes the two phases look so different to
the OS and the GPU.  Phases: prefill, decode (with one decode/step per
token); workload classes inference.prefill / inference.decode.

    python -m gpuos_workloads.llm --steps 64 [--no-hints] [--device cpu|gpu]
"""

from __future__ import annotations

import time
from typing import Any

from .common import Hints, Timer, base_parser, emit_summary, get_backend, hint_summary, progress


def build_model(xp: Any, layers: int, hidden: int, vocab: int, seed: int) -> dict[str, Any]:
    rng = xp.random.default_rng(seed) if hasattr(xp.random, "default_rng") else xp.random
    scale = 1.0 / hidden**0.5

    def mat(r: int, c: int) -> Any:
        return (rng.standard_normal((r, c), dtype=xp.float32) * scale).astype(xp.float32)

    return {
        "w_in": [mat(hidden, 4 * hidden) for _ in range(layers)],
        "w_out": [mat(4 * hidden, hidden) for _ in range(layers)],
        "embed": mat(vocab, hidden),
        "head": mat(hidden, vocab),
    }


def forward(xp: Any, model: dict[str, Any], x: Any) -> Any:
    for w_in, w_out in zip(model["w_in"], model["w_out"], strict=True):
        h = xp.maximum(x @ w_in, 0)  # matmul + ReLU
        x = x + h @ w_out  # residual
    return x


def run(args: Any) -> dict[str, Any]:
    be = get_backend(args.device)
    xp = be.xp
    hints = Hints(args.hints, args.device_timing and be.name == "cupy")
    timer = Timer(be)
    model = build_model(xp, args.layers, args.hidden, args.vocab, args.seed)
    prompt = xp.asarray(
        (xp.arange(args.prompt_tokens) * 7919 % args.vocab).astype(xp.int64)
        if be.name == "cupy"
        else (xp.arange(args.prompt_tokens) * 7919 % args.vocab)
    )
    be.sync()
    progress(
        args.quiet,
        f"llm: {be.name} on {be.device}, {args.layers} layers, hidden {args.hidden}, "
        f"prompt {args.prompt_tokens}, {args.steps} decode steps, hints {'on' if args.hints else 'off'}",
    )
    for _ in range(args.warmup):  # unhinted, untimed: cuBLAS handles, kernel caches, allocator pools
        x = forward(xp, model, model["embed"][prompt])
        token = int((x[-1:] @ model["head"]).argmax())
        for _ in range(min(args.steps, 8)):
            token = int((forward(xp, model, model["embed"][token : token + 1]) @ model["head"]).argmax())
    be.sync()
    t_start = time.perf_counter()
    for rep in range(args.requests):
        with (
            hints.workload_class("inference.prefill"),
            hints.phase("prefill", tokens=args.prompt_tokens, req=rep),
            timer.section("prefill"),
        ):
            x = model["embed"][prompt]
            x = forward(xp, model, x)
            logits = x[-1:] @ model["head"]
            token = int(logits.argmax())  # the host needs the first token: a sync
        with hints.workload_class("inference.decode"), hints.phase("decode", steps=args.steps, req=rep):
            for _step in range(args.steps):
                with hints.phase("step"), timer.section("decode_step"):
                    x = model["embed"][token : token + 1]
                    x = forward(xp, model, x)
                    token = int((x @ model["head"]).argmax())  # per-token sync, as in real decoding
        progress(args.quiet, f"  request {rep}: last token {token}")
    wall = time.perf_counter() - t_start
    stats = hints.finish()
    decode_s = timer.totals.get("decode_step", 0.0)
    return {
        "workload": "llm",
        "backend": be.name,
        "device": be.device,
        "hints": args.hints,
        "requests": args.requests,
        "layers": args.layers,
        "hidden": args.hidden,
        "prompt_tokens": args.prompt_tokens,
        "steps": args.steps,
        "wall_s": round(wall, 6),
        "prefill_s": round(timer.totals.get("prefill", 0.0), 6),
        "decode_s": round(decode_s, 6),
        "decode_tokens_per_s": round(args.steps * args.requests / decode_s, 2) if decode_s else None,
        "prefill_tokens_per_s": round(args.prompt_tokens * args.requests / timer.totals["prefill"], 2),
        "client": stats,
    }


def render(s: dict[str, Any]) -> str:
    lines = [
        f"llm workload on {s['backend']} ({s['device']}), hints {'on' if s['hints'] else 'off'}",
        f"  prefill: {s['requests']} x {s['prompt_tokens']} tokens in {s['prefill_s']:.3f} s "
        f"({s['prefill_tokens_per_s']:,.0f} tok/s)",
        f"  decode:  {s['requests']} x {s['steps']} steps in {s['decode_s']:.3f} s "
        f"({s['decode_tokens_per_s'] or 0:,.1f} tok/s)",
        f"  wall:    {s['wall_s']:.3f} s",
    ]
    if s.get("client"):
        lines.append(hint_summary(s["client"]))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = base_parser("python -m gpuos_workloads.llm", __doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=2, help="prefill+decode rounds (default 2)")
    p.add_argument("--steps", type=int, default=32, help="decode steps per request (default 32)")
    p.add_argument("--warmup", type=int, default=1, help="unhinted warm-up requests first (default 1)")
    p.add_argument("--prompt-tokens", type=int, default=512, help="prompt length (default 512)")
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--vocab", type=int, default=4096)
    args = p.parse_args(argv)
    emit_summary(run(args), args.json, render)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
