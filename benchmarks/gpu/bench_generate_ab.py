"""HF `generate` on a GPU: unhinted vs the first-slice client vs this client, interleaved, one run.

The program is the one issue 7 measured: a GPT-2-medium-shaped `transformers` model (random
weights from a config, nothing downloaded), fp16, batch 8, a 512-token prompt, 128 new tokens,
`model.generate()`, hinted `prefill`/`decode` from forward pre/post hooks - the way a user
without an integration would hint it.  Variants, each a fresh process per run:

  none   no hooks, no client
  old    the first-slice client (2 ms sender period), from a directory given by --old-client
  new    this checkout's client (C hot path if built, event-driven sender)

Runs are interleaved (the order rotates every round), each process times --calls generate
calls after one warm-up, and the figure is the median over runs of each process's median call.
Every hinted run must deliver every event: the client's stats are recorded and a run that
dropped is reported as invalid.  A private gpuos-hintd receives the hints.

    python benchmarks/gpu/bench_generate_ab.py --old-client /path/to/old/client --out $OUT/generate_ab.json
    python benchmarks/gpu/bench_generate_ab.py --cpu --tiny --runs 2     # smoke test, no GPU
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from _harness import REPO, daemon_env, start_daemon, write_result

CHILD = r"""
import json, os, statistics, sys, time
variant, device, tiny, calls, new_tokens = sys.argv[1], sys.argv[2], sys.argv[3] == "1", int(sys.argv[4]), int(sys.argv[5])
import torch
from transformers import GPT2Config, GPT2LMHeadModel
torch.manual_seed(0)
if tiny:
    cfg = GPT2Config(n_embd=64, n_layer=2, n_head=2, vocab_size=1000, n_positions=1024)
    batch, prompt = 2, 32
else:
    cfg = GPT2Config(n_embd=1024, n_layer=24, n_head=16, n_positions=1024)  # GPT-2 medium shape
    batch, prompt = 8, 512
dtype = torch.float16 if device == "cuda" else torch.float32
with torch.device(device):
    model = GPT2LMHeadModel(cfg).to(dtype).eval()
ids = torch.randint(0, cfg.vocab_size, (batch, prompt), device=device)
h = None
if variant != "none":
    import gpuos_client as h
    state = {}
    def pre(mod, args, kwargs):
        x = kwargs.get("input_ids", args[0] if args else None)
        name = "prefill" if x is not None and x.shape[1] > 1 else "decode"
        ph = h.phase(name)
        ph.__enter__()
        state["ph"] = ph
    def post(mod, args, kwargs, out):
        ph = state.pop("ph", None)
        if ph is not None:
            ph.__exit__(None, None, None)
    model.register_forward_pre_hook(pre, with_kwargs=True)
    model.register_forward_hook(post, with_kwargs=True)
def sync():
    if device == "cuda":
        torch.cuda.synchronize()
def gen():
    with torch.inference_mode():
        model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                       min_new_tokens=new_tokens, do_sample=False, pad_token_id=0)
    sync()
gen()  # warm-up
times = []
for _ in range(calls):
    t0 = time.perf_counter(); gen(); times.append(time.perf_counter() - t0)
out = {"variant": variant, "times_s": times, "median_s": statistics.median(times)}
if h is not None:
    ok = h.flush(5.0)
    s = h.stats()
    out["client"] = {k: s.get(k) for k in ("handed", "delivered", "undelivered", "dropped", "dropped_by_reason",
                                          "sent", "buffered", "fast_path", "errors", "last_error")}
    out["flushed"] = ok
print(json.dumps(out))
"""


def run_child(variant: str, env: dict[str, str], args: argparse.Namespace) -> dict:
    device = "cpu" if args.cpu else "cuda"
    e = dict(env)
    base_pp = e.get("PYTHONPATH", "")
    if variant == "old":
        e["PYTHONPATH"] = f"{args.old_client}:{base_pp}"
    e["PYTHONUNBUFFERED"] = "1"
    argv = [sys.executable, "-c", CHILD, variant, device, "1" if args.tiny else "0", str(args.calls), str(args.tokens)]
    out = subprocess.run(argv, env=e, capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        return {"variant": variant, "error": out.stderr[-2000:]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=8, help="processes per variant (interleaved)")
    ap.add_argument("--calls", type=int, default=3, help="timed generate calls per process")
    ap.add_argument("--tokens", type=int, default=128, help="new tokens per generate")
    ap.add_argument("--old-client", default="", help="directory holding the first-slice gpuos_client package")
    ap.add_argument("--cpu", action="store_true")
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "gpu_generate_ab.json"))
    args = ap.parse_args()
    variants = ["none", "new"] + (["old"] if args.old_client else [])
    runs: dict[str, list[dict]] = {v: [] for v in variants}
    with tempfile.TemporaryDirectory() as td:
        env = daemon_env(Path(td))
        proc = start_daemon(env)
        try:
            for r in range(args.runs):
                order = variants[r % len(variants) :] + variants[: r % len(variants)]
                for v in order:
                    res = run_child(v, env, args)
                    runs[v].append(res)
                    print(
                        r,
                        v,
                        res.get("median_s"),
                        res.get("client", {}).get("dropped"),
                        res.get("error", "")[-300:],
                        flush=True,
                    )
        finally:
            proc.terminate()
            proc.wait(10)
    summary: dict[str, dict] = {}
    base = statistics.median(x["median_s"] for x in runs["none"] if "median_s" in x)
    for v, rs in runs.items():
        good = [x for x in rs if "median_s" in x]
        valid = [x for x in good if v == "none" or (x["client"]["dropped"] == 0 and not x["client"].get("undelivered"))]
        meds = sorted(x["median_s"] for x in valid)
        if not meds:
            summary[v] = {"runs": len(rs), "valid": 0}
            continue
        m = statistics.median(meds)
        summary[v] = {
            "runs": len(rs),
            "valid": len(valid),
            "median_s": m,
            "min_s": meds[0],
            "max_s": meds[-1],
            "slowdown_pct": round((m / base - 1) * 100, 2),
            "slowdown_min_max_pct": [round((meds[0] / base - 1) * 100, 2), round((meds[-1] / base - 1) * 100, 2)],
        }
    for v, s in summary.items():
        print(v, s)
    write_result(
        args.out,
        "gpu_generate_ab",
        parameters={k: v for k, v in vars(args).items() if k != "out"},
        results={"runs": runs},
        summary=summary,
        loadavg=os.getloadavg(),
        finished=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
