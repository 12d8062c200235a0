"""HF `generate` on a GPU: unhinted vs the first-slice client vs this client, interleaved, one run.

The program is the one issue 7 measured: a GPT-2-medium-shaped `transformers` model (random
weights from a config, nothing downloaded), fp16, batch 8, a 512-token prompt, 128 new tokens,
`model.generate()`, hinted `prefill`/`decode` from forward pre/post hooks - the way a user
without an integration would hint it.  Variants, each a fresh process per run:

  new    this checkout's client (C hot path if built, event-driven sender)
  old    the first-slice client (2 ms sender period), from a directory given by --old-client

Each process alternates hinted and unhinted generate calls (ABBA: the hooks stay installed, a
flag turns the phases off), so drift and process-to-process variance (seen on the H200: 1.4 to
3.0 s for the same unhinted call in different processes) cancel; the figure is the median of the
per-pair ratios, with IQR and range.
Every hinted run must deliver every event: the client's stats are recorded and a run that
dropped is reported as invalid.  A private gpuos-hintd receives the hints.

    python benchmarks/gpu/bench_generate_ab.py --old-client /path/to/old/client --out $OUT/generate_ab.json
    python benchmarks/gpu/bench_generate_ab.py --cpu --tiny --procs 1 --pairs 2    # smoke test, no GPU
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from _harness import REPO, daemon_env, start_daemon, write_result

CHILD = r"""
import json, os, statistics, sys, time
variant, device, tiny, pairs, new_tokens = sys.argv[1], sys.argv[2], sys.argv[3] == "1", int(sys.argv[4]), int(sys.argv[5])
import torch
from transformers import GPT2Config, GPT2LMHeadModel
import gpuos_client as h
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
state = {"on": False}
def pre(mod, args, kwargs):
    if state["on"]:
        x = kwargs.get("input_ids", args[0] if args else None)
        ph = h.phase("prefill" if x is not None and x.shape[1] > 1 else "decode")
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
def gen(on):
    state["on"] = on
    sync()
    t0 = time.perf_counter()
    with torch.inference_mode():
        model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                       min_new_tokens=new_tokens, do_sample=False, pad_token_id=0)
    sync()
    return time.perf_counter() - t0
gen(False); gen(True)  # warm-up (and the sender's start)
h.flush(5.0)
off, on = [], []
for i in range(pairs):
    for hinted in ((False, True) if i % 2 == 0 else (True, False)):  # ABBA
        (on if hinted else off).append(gen(hinted))
ok = h.flush(5.0)
s = h.stats()
ratios = [b / a for a, b in zip(off, on)]
out = {"variant": variant, "off_s": off, "on_s": on, "ratio_median": statistics.median(ratios), "ratios": ratios,
       "flushed": ok, "client": {k: s.get(k) for k in ("handed", "delivered", "undelivered", "dropped",
       "dropped_by_reason", "sent", "buffered", "fast_path", "errors", "last_error")}}
print(json.dumps(out))
"""


def _q(xs: list[float], p: float) -> float:
    return xs[min(len(xs) - 1, int(p * len(xs)))]


def run_child(variant: str, env: dict[str, str], args: argparse.Namespace) -> dict:
    device = "cpu" if args.cpu else "cuda"
    e = dict(env)
    base_pp = e.get("PYTHONPATH", "")
    if variant == "old":
        e["PYTHONPATH"] = f"{args.old_client}:{base_pp}"
    e["PYTHONUNBUFFERED"] = "1"
    argv = [sys.executable, "-c", CHILD, variant, device, "1" if args.tiny else "0", str(args.pairs), str(args.tokens)]
    out = subprocess.run(argv, env=e, capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        return {"variant": variant, "error": out.stderr[-2000:]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--procs", type=int, default=2, help="processes per client variant")
    ap.add_argument("--pairs", type=int, default=8, help="hinted/unhinted generate pairs per process (ABBA)")
    ap.add_argument("--tokens", type=int, default=128, help="new tokens per generate")
    ap.add_argument("--old-client", default="", help="directory holding the first-slice gpuos_client package")
    ap.add_argument("--cpu", action="store_true")
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "gpu_generate_ab.json"))
    args = ap.parse_args()
    variants = ["new"] + (["old"] if args.old_client else [])
    runs: dict[str, list[dict]] = {v: [] for v in variants}
    with tempfile.TemporaryDirectory() as td:
        env = daemon_env(Path(td))
        proc = start_daemon(env)
        try:
            for r in range(args.procs):
                for v in variants if r % 2 == 0 else variants[::-1]:
                    res = run_child(v, env, args)
                    runs[v].append(res)
                    print(
                        r,
                        v,
                        res.get("ratio_median"),
                        res.get("client", {}).get("dropped"),
                        res.get("error", "")[-300:],
                        flush=True,
                    )
        finally:
            proc.terminate()
            proc.wait(10)
    summary: dict[str, dict] = {}
    for v, rs in runs.items():
        good = [x for x in rs if "ratios" in x]
        valid = [x for x in good if x["client"]["dropped"] == 0 and not x["client"].get("undelivered")]
        ratios = sorted(r for x in valid for r in x["ratios"])
        if not ratios:
            summary[v] = {"procs": len(rs), "valid": 0}
            continue
        off = [t for x in valid for t in x["off_s"]]
        on = [t for x in valid for t in x["on_s"]]
        summary[v] = {
            "procs": len(rs),
            "valid": len(valid),
            "pairs": len(ratios),
            "slowdown_pct_median": round((statistics.median(ratios) - 1) * 100, 2),
            "slowdown_pct_iqr": [round((_q(ratios, 0.25) - 1) * 100, 2), round((_q(ratios, 0.75) - 1) * 100, 2)],
            "slowdown_pct_min_max": [round((ratios[0] - 1) * 100, 2), round((ratios[-1] - 1) * 100, 2)],
            "unhinted_median_s": statistics.median(off),
            "hinted_median_s": statistics.median(on),
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
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
