"""Hints on launch-bound GPU programs (issue 7, item 6d): HF generate and a small-kernel torch loop.

Two measurements in one process, each against its unhinted baseline in the same run, interleaved:

generate  A Hugging Face transformers GPT-2-medium-shaped model built from a config (random init,
          no download), fp16, batch 8, a 512-token prompt, exactly 128 new tokens (greedy,
          min_new_tokens = max_new_tokens), `model.generate()`.  Variants, rotated run by run:
            none         no hooks
            empty_hooks  forward pre/post hooks on the model that do nothing (the hook cost alone)
            hinted       the same hooks open phase("prefill") when the input is longer than one
                         token, else phase("decode"), and close it in the post hook
launch    a launch-bound torch loop: each step enqueues --kernels tiny elementwise kernels and
          ends with torch.cuda.synchronize(); one `with phase("step")` per step when hinted,
          `contextlib.nullcontext()` when not; blocks of --launch-steps steps, alternating
          AB BA ...

--device on makes the hinted phases device-timed (``phase(name, device=True)``: a CUDA event pair
per phase and the client's clock anchor); --device busy adds CUPTI busy time, switched on
(``device_busy(True)``) before each hinted run and off before every other, outside the timed
region, so the baselines run untraced.

Every figure is median and spread (IQR, min/max) over >= --runs interleaved runs per variant, with
a bootstrap 95% CI of the median ratio.  A real gpuos-hintd runs on a private socket (started here,
stopped at the end).  After every hinted run, outside the timed region, the client's stats() (0
drops required) and the daemon's count of events accepted from this process are recorded; at the
end, the daemon's stored spans for this process are compared with the phases opened.

Budget: GPU defaults take about 1-2 minutes on an H200 (model build ~10 s, ~1 s per generate run);
--budget-s (240) stops adding runs when it is spent, and the JSON says so.

    python benchmarks/gpu/bench_generate_overhead.py                 # on the GPU box, JSON into $OUT
    python benchmarks/gpu/bench_generate_overhead.py --cpu --tiny    # a CPU smoke run (no figure)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from _harness import (
    Daemon,
    bootstrap_ratio_ci,
    client_counts,
    client_under_test,
    counts_settled,
    host_info,
    load_average,
    spread,
)


def summarize(hinted: list[float], base: list[float]) -> dict[str, Any]:
    if not hinted or not base:  # the budget ran out before this part's first pair
        return {"slowdown_pct": None, "ci95_pct": None, "runs": 0, "why": "no runs within --budget-s"}
    lo, hi = bootstrap_ratio_ci(hinted, base)
    return {
        "slowdown_pct": round((statistics.median(hinted) / statistics.median(base) - 1) * 100, 3),
        "ci95_pct": [round((lo - 1) * 100, 3), round((hi - 1) * 100, 3)],
        "hinted_s": {k: round(v, 6) for k, v in spread(hinted).items()},
        "baseline_s": {k: round(v, 6) for k, v in spread(base).items()},
        "runs": min(len(hinted), len(base)),
    }


class Delivery:
    """Per-run client stats and the daemon's count, taken outside the timed regions."""

    def __init__(self, h: Any, daemon: Daemon) -> None:
        self.h, self.daemon = h, daemon
        self.records: list[dict[str, Any]] = []

    def record(self, label: str) -> dict[str, Any]:
        self.h.flush(5.0)
        pid = os.getpid()
        deadline = time.monotonic() + 3.0
        while True:  # a heartbeat may go out between the two reads: retry until they agree
            st = self.h.stats()
            seen = self.daemon.client_events(pid)
            if counts_settled(st, seen) or time.monotonic() > deadline:
                break
            time.sleep(0.05)
            self.h.flush(1.0)
        c = client_counts(st)
        rec = {"run": label, **{f"client_{k}": v for k, v in c.items()}, "daemon_events": seen}
        rec["valid"] = not c["dropped"] and not c["rejected"] and counts_settled(st, seen)
        self.records.append(rec)
        return rec


def busy_for(h: Any, args: argparse.Namespace, hinted: bool) -> None:
    """CUPTI tracing on for a hinted run only (--device busy); called outside the timed region."""
    if args.device == "busy":
        h.device_busy(hinted)


def bench_generate(args: argparse.Namespace, torch: Any, h: Any, dlv: Delivery, deadline: float) -> dict[str, Any]:
    from transformers import GPT2Config, GPT2LMHeadModel

    dev = "cpu" if args.cpu else "cuda"
    dtype = torch.float32 if args.cpu else torch.float16
    if args.tiny:
        cfg = GPT2Config(
            n_embd=64, n_layer=2, n_head=2, n_positions=256, vocab_size=1000, bos_token_id=999, eos_token_id=999
        )
        batch, prompt, new = 2, 16, 8
    else:  # GPT-2 medium's shape
        cfg = GPT2Config(n_embd=1024, n_layer=24, n_head=16, n_positions=1024, vocab_size=50257)
        batch, prompt, new = args.batch, args.prompt, args.new_tokens
    torch.manual_seed(0)
    t0 = time.perf_counter()
    model = GPT2LMHeadModel(cfg).to(dev, dtype).eval()
    build_s = time.perf_counter() - t0
    ids = torch.randint(0, cfg.vocab_size, (batch, prompt), device=dev)
    mask = torch.ones_like(ids)
    dev_timed = args.device != "off"
    prefill, decode = h.phase("prefill", device=dev_timed), h.phase("decode", device=dev_timed)
    stack: list[Any] = []
    mode = {"v": "none", "phases": 0, "prefill": 0, "decode": 0}

    def pre(module: Any, a: tuple[Any, ...], kw: dict[str, Any]) -> None:
        if mode["v"] != "hinted":
            return
        x = kw.get("input_ids")
        if x is None and a:
            x = a[0]
        ph = prefill if x is not None and x.shape[-1] > 1 else decode
        ph.__enter__()
        stack.append(ph)
        mode["phases"] += 1
        mode["prefill" if ph is prefill else "decode"] += 1

    def post(module: Any, a: tuple[Any, ...], kw: dict[str, Any], out: Any) -> None:
        if stack:
            stack.pop().__exit__(None, None, None)

    handles: list[Any] = []

    def set_variant(v: str) -> None:
        for hd in handles:
            hd.remove()
        handles.clear()
        mode["v"] = v
        busy_for(h, args, v == "hinted")
        if v != "none":
            handles.append(model.register_forward_pre_hook(pre, with_kwargs=True))
            handles.append(model.register_forward_hook(post, with_kwargs=True))

    sync = (lambda: None) if args.cpu else torch.cuda.synchronize
    forwards = {"n": 0}

    def count(module: Any, a: Any, kw: Any) -> None:
        forwards["n"] += 1

    def run_once() -> float:
        sync()
        t = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(
                input_ids=ids,
                attention_mask=mask,
                max_new_tokens=new,
                min_new_tokens=new,
                do_sample=False,
                pad_token_id=0,
                use_cache=True,
            )
        sync()
        assert out.shape[-1] == prompt + new, out.shape
        return time.perf_counter() - t

    variants = ["none", "empty_hooks", "hinted"]
    counter = model.register_forward_pre_hook(count, with_kwargs=True)
    for v in variants:  # warm up: kernels, cuBLAS, allocator, the client's sender
        set_variant(v)
        run_once()
    counter.remove()
    forwards_per_run = forwards["n"] // len(variants)
    times: dict[str, list[float]] = {v: [] for v in variants}
    budget_hit = False
    for r in range(args.runs):
        if time.monotonic() > deadline:
            budget_hit = True
            break
        for v in variants[r % 3 :] + variants[: r % 3]:
            set_variant(v)
            times[v].append(run_once())
            if v == "hinted":
                dlv.record(f"generate#{r}")
    set_variant("none")
    return {
        "config": {"n_embd": cfg.n_embd, "n_layer": cfg.n_layer, "n_head": cfg.n_head, "vocab": cfg.vocab_size},
        "batch": batch,
        "prompt_tokens": prompt,
        "new_tokens": new,
        "dtype": str(dtype),
        "model_build_s": round(build_s, 2),
        "forwards_per_generate": forwards_per_run,
        "phases_opened": mode["phases"],
        "phases_by_name": {"prefill": mode["prefill"], "decode": mode["decode"]},
        "budget_hit": budget_hit,
        "hinted_vs_none": summarize(times["hinted"], times["none"]),
        "empty_hooks_vs_none": summarize(times["empty_hooks"], times["none"]),
        "hinted_vs_empty_hooks": summarize(times["hinted"], times["empty_hooks"]),
        "run_s": {v: [round(x, 5) for x in xs] for v, xs in times.items()},
    }


def bench_launch(args: argparse.Namespace, torch: Any, h: Any, dlv: Delivery, deadline: float) -> dict[str, Any]:
    dev = "cpu" if args.cpu else "cuda"
    sync = (lambda: None) if args.cpu else torch.cuda.synchronize
    x = torch.zeros(256, device=dev)
    null = contextlib.nullcontext()
    steps = 50 if args.tiny else args.launch_steps
    kernels = 10 if args.tiny else args.kernels
    phases = {"n": 0}

    dev_timed = args.device != "off"

    def block(hinted: bool) -> float:
        nonlocal x
        busy_for(h, args, hinted)
        sync()
        t = time.perf_counter()
        for _ in range(steps):
            with h.phase("step", device=dev_timed) if hinted else null:
                for _ in range(kernels):
                    x = x.add_(1.0)
                sync()
        dt = (time.perf_counter() - t) / steps
        phases["n"] += steps if hinted else 0
        return dt

    block(False), block(True)  # warm up
    on, off = [], []
    budget_hit = False
    for r in range(args.runs):
        if time.monotonic() > deadline:
            budget_hit = True
            break
        for hinted in (True, False) if r % 2 == 0 else (False, True):
            (on if hinted else off).append(block(hinted))
            if hinted:
                dlv.record(f"launch#{r}")
    return {
        "steps_per_block": steps,
        "kernels_per_step": kernels,
        "phases_opened": phases["n"],
        "phase_rate_hz": round(1 / statistics.median(on), 1) if on else None,
        "budget_hit": budget_hit,
        "hinted_vs_unhinted": summarize(on, off),
        "step_s": {"hinted": [round(v, 7) for v in on], "unhinted": [round(v, 7) for v in off]},
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cpu", action="store_true", help="run on the CPU (a smoke test of the script)")
    ap.add_argument("--tiny", action="store_true", help="a 2-layer model and short loops (a smoke test)")
    ap.add_argument("--runs", type=int, default=10, help="interleaved runs per variant (>= 8 for a figure)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--prompt", type=int, default=512)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--launch-steps", type=int, default=500, help="steps per block of the launch-bound loop")
    ap.add_argument("--kernels", type=int, default=40, help="small kernels per step of the launch-bound loop")
    ap.add_argument("--only", choices=["generate", "launch"], help="run one of the two")
    ap.add_argument("--device", choices=["off", "on", "busy"], default="off",
                    help="hinted phases device-timed (on), and with CUPTI busy time (busy)")  # fmt: skip
    ap.add_argument("--budget-s", type=float, default=240.0, help="stop adding runs after this many seconds")
    ap.add_argument("--out", help="JSON file (default: $OUT/generate_overhead.json, else benchmarks/results/)")
    args = ap.parse_args()
    if args.cpu and args.device != "off":
        ap.error("--device times CUDA work: it needs the GPU (the client counts a no_cuda drop on the CPU)")
    started = time.monotonic()
    deadline = started + args.budget_s
    out_path = Path(
        args.out
        or (
            Path(os.environ["OUT"]) / "generate_overhead.json"
            if os.environ.get("OUT")
            else Path(__file__).resolve().parent.parent / "results" / "generate_overhead.json"
        )
    )
    import torch

    if not args.cpu and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: use --cpu (smoke test) or run on the GPU box")
    doc: dict[str, Any] = {
        "benchmark": "generate_overhead",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "host": host_info(),
        "parameters": vars(args),
        "client": client_under_test(),
        "loadavg_before": load_average(),
        "torch": torch.__version__,
        "device": "cpu" if args.cpu else torch.cuda.get_device_name(0),
        "env": {k: v for k, v in os.environ.items() if k.startswith("GPUOS_HINT_")},
    }
    try:
        import transformers

        doc["transformers"] = transformers.__version__
    except ImportError as exc:
        doc["transformers"] = None
        if args.only != "launch":
            raise SystemExit(f"transformers is not importable ({exc}); use --only launch") from None
    with tempfile.TemporaryDirectory() as td, Daemon(Path(td)) as daemon:
        # Only the socket and store move to the private daemon; other GPUOS_HINT_* settings of the
        # caller (e.g. GPUOS_HINT_FLUSH_MS) still apply to the client under test.
        for k in ("GPUOS_HINT_ENDPOINT", "GPUOS_HINT_CONTROL", "GPUOS_HINT_STATE_DIR"):
            os.environ[k] = daemon.env[k]
        import gpuos_client as h

        dlv = Delivery(h, daemon)
        if args.only != "launch":
            print("generate ...", flush=True)
            doc["generate"] = bench_generate(args, torch, h, dlv, deadline)
            g = doc["generate"]["hinted_vs_none"]
            print(f"  hinted vs none: {g['slowdown_pct']} % (95% CI {g['ci95_pct']}), {g['runs']} runs", flush=True)
        if args.only != "generate":
            print("launch-bound loop ...", flush=True)
            doc["launch"] = bench_launch(args, torch, h, dlv, deadline)
            g = doc["launch"]["hinted_vs_unhinted"]
            print(f"  hinted vs unhinted: {g['slowdown_pct']} % (95% CI {g['ci95_pct']}), {g['runs']} runs", flush=True)
        dlv.record("end")
        phases = sum(doc[k]["phases_opened"] for k in ("generate", "launch") if k in doc)
        spans = daemon.spans(os.getpid(), wait_exit=False)
        doc["delivery"] = {
            "per_run": dlv.records,
            "phases_opened": phases,
            "daemon_spans": spans,
            "client_stats_end": h.stats(),
        }
        ok_spans = spans.get("ok", 0)
        doc["summary"] = {
            "all_delivered": all(r["valid"] for r in dlv.records) and ok_spans == phases,
            "generate_slowdown_pct": doc.get("generate", {}).get("hinted_vs_none", {}).get("slowdown_pct"),
            "launch_slowdown_pct": doc.get("launch", {}).get("hinted_vs_unhinted", {}).get("slowdown_pct"),
            "target_generate_pct": 1.0,
        }
        if ok_spans != phases:
            doc["summary"]["problem"] = f"{phases} phases opened, the daemon stored {spans}"
    doc["loadavg_end"] = load_average()
    doc["run_time_s"] = round(time.monotonic() - started, 1)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(doc, indent=2) + "\n")
    print(json.dumps(doc["summary"]))
    print(f"wrote {out_path}")
    if not doc["summary"]["all_delivered"]:
        print("INVALID: not every event was delivered (see delivery)")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
