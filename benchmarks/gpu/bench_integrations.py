"""The torch/HF integrations and gpuos-run on a GPU: cost to the program, and the spans the daemon stored.

Three parts, each against a live gpuos-hintd started here (own socket and store):

1. HF ``generate`` (a Llama built from a config, random weights, nothing
   downloaded): the same process alternates blocks without hints and with
   ``instrument_generate`` (A/B/A/B..., >= 8 each); the result is the ratio of
   medians, with the spread.  Then the same unmodified script run as
   ``python gen.py`` and as ``gpuos-run -- python gen.py``, interleaved
   processes, timing only the generate section.
2. A torchvision ResNet training step fed by a DataLoader with worker
   processes: plain vs ``gpuos-run`` (interleaved processes), and the spans
   (data waits, forward, backward, optimizer steps, the workers' fetches).
3. An HF Trainer loop (steps, evaluation, checkpoints) under ``gpuos-run``.

Everything lands in ``$OUT/integrations.json`` (or --out).  Bounded by
--budget-s (default 300 s): a part that would start past it is skipped and
says so.  On a GPU box (the image has torch, transformers, torchvision):

    OUT=/tmp/out python benchmarks/gpu/bench_integrations.py            # ~5 minutes
    python benchmarks/gpu/bench_integrations.py --tiny --out /tmp/x.json # CPU, tiny sizes, ~1 minute
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]

GEN = """
import json, os, sys, time, torch
from transformers import LlamaConfig, LlamaForCausalLM
p = json.loads(sys.argv[1])
dev = "cuda" if torch.cuda.is_available() and not p["tiny"] else "cpu"
torch.manual_seed(0)
cfg = LlamaConfig(vocab_size=p["vocab"], hidden_size=p["hidden"], intermediate_size=p["hidden"] * 4 // 1,
                  num_hidden_layers=p["layers"], num_attention_heads=p["heads"], num_key_value_heads=p["heads"],
                  max_position_embeddings=p["prompt"] + p["new"] + 8)
dtype = torch.bfloat16 if dev == "cuda" else torch.float32
model = LlamaForCausalLM(cfg).to(dev, dtype).eval()
ids = torch.randint(1, p["vocab"], (p["batch"], p["prompt"]), device=dev)
mask = torch.ones_like(ids)

def sync():
    if dev == "cuda":
        torch.cuda.synchronize()

def request():
    return model.generate(ids, attention_mask=mask, max_new_tokens=p["new"], min_new_tokens=p["new"],
                          do_sample=False, pad_token_id=0)

def block():
    sync(); t0 = time.perf_counter()
    for _ in range(p["per_block"]):
        request()
    sync()
    return (time.perf_counter() - t0) / p["per_block"]

out = {"pid": os.getpid(), "device": torch.cuda.get_device_name(0) if dev == "cuda" else "cpu"}
with torch.inference_mode():
    request(); request()  # warm up
    if p["mode"] == "ab":   # in-process A/B: instrument_generate on and off
        import gpuos_client as h
        import gpuos_client.torch as gt
        from gpuos_client.hf import _generate_wrapper
        on, off = [], []
        for _ in range(p["blocks"]):
            off.append(block())
            # What instrument_generate(model) does, kept removable: forward hooks + the generate phase.
            handle = gt.instrument(model, device=p["device_timing"])
            model.generate = _generate_wrapper(type(model).generate).__get__(model)
            on.append(block())
            handle.remove()
            del model.generate
        h.flush(5.0)
        out.update(on=on, off=off, client=h.stats())
    else:                   # one variant per process (plain or under gpuos-run)
        out["blocks"] = [block() for _ in range(p["blocks"])]
        if "gpuos_client" in sys.modules:
            import gpuos_client as h
            h.flush(5.0)
            out["client"] = h.stats()
print(json.dumps(out))
"""

TRAIN = """
import json, os, sys, time, torch
p = json.loads(sys.argv[1])
try:
    import torchvision
    make, arch = (lambda: torchvision.models.resnet18(num_classes=10)), "resnet18"
except Exception:  # the CPU smoke run where torchvision is absent: a small convnet in its place
    make = lambda: torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.ReLU(),
                                       torch.nn.AdaptiveAvgPool2d(4), torch.nn.Flatten(), torch.nn.Linear(256, 10))
    arch = "convnet (torchvision not importable)"
dev = "cuda" if torch.cuda.is_available() and not p["tiny"] else "cpu"
torch.manual_seed(0)

class Synthetic(torch.utils.data.Dataset):
    # Images made on the CPU per sample (a little decode-like work), labels from the index.
    def __len__(self):
        return p["steps"] * p["batch"]
    def __getitem__(self, i):
        g = torch.Generator().manual_seed(i)
        x = torch.rand(3, p["size"], p["size"], generator=g)
        return (x - 0.5) / 0.25, i % 10

model = make().to(dev)
if dev == "cuda":
    model = model.to(memory_format=torch.channels_last)
opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
loader = torch.utils.data.DataLoader(Synthetic(), batch_size=p["batch"], num_workers=p["workers"],
                                     multiprocessing_context="fork", pin_memory=dev == "cuda")
def sync():
    if dev == "cuda":
        torch.cuda.synchronize()
sync(); t0 = time.perf_counter(); n = 0
for x, y in loader:
    x, y = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
    loss = torch.nn.functional.cross_entropy(model(x), y)
    loss.backward()
    opt.step(); opt.zero_grad(set_to_none=True)
    n += 1
sync()
out = {"pid": os.getpid(), "arch": arch, "steps": n, "s_per_step": (time.perf_counter() - t0) / n}
if "gpuos_client" in sys.modules:
    import gpuos_client as h
    h.flush(5.0)
    out["client"] = h.stats()
print(json.dumps(out))
"""

TRAINER = """
import json, os, sys, torch
from transformers import LlamaConfig, LlamaForCausalLM, Trainer, TrainingArguments
p = json.loads(sys.argv[1])
torch.manual_seed(0)
cfg = LlamaConfig(vocab_size=p["vocab"], hidden_size=p["hidden"], intermediate_size=p["hidden"] * 4,
                  num_hidden_layers=p["layers"], num_attention_heads=p["heads"], num_key_value_heads=p["heads"],
                  max_position_embeddings=p["seq"])
model = LlamaForCausalLM(cfg)
class DS(torch.utils.data.Dataset):
    def __len__(self):
        return 64
    def __getitem__(self, i):
        ids = torch.randint(0, p["vocab"], (p["seq"],), generator=torch.Generator().manual_seed(i))
        return {"input_ids": ids, "labels": ids.clone()}
args = TrainingArguments(output_dir=p["dir"], max_steps=p["steps"], per_device_train_batch_size=4,
                         per_device_eval_batch_size=8, eval_strategy="steps", eval_steps=p["steps"] // 2,
                         save_strategy="steps", save_steps=p["steps"] // 2, save_only_model=True, logging_steps=1000,
                         report_to="none",
                         use_cpu=p["tiny"] or not torch.cuda.is_available(), dataloader_num_workers=2,
                         disable_tqdm=True)
import time
t0 = time.perf_counter()
Trainer(model=model, args=args, train_dataset=DS(), eval_dataset=DS()).train()
out = {"pid": os.getpid(), "train_s": time.perf_counter() - t0}
if "gpuos_client" in sys.modules:
    import gpuos_client as h
    h.flush(5.0)
    out["client"] = h.stats()
print(json.dumps(out))
"""


class Daemon:
    """A gpuos-hintd of our own: private socket, private store."""

    def __init__(self, tmp: Path, store_samples_hz: float | None = None) -> None:
        run, self.state = tmp / "run", tmp / "state"
        run.mkdir(parents=True)
        cfg = tmp / "config.toml"
        extra = "" if store_samples_hz is None else f"store_samples_hz = {float(store_samples_hz)}\n"
        cfg.write_text('log_format = "json"\n' + extra)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("GPUOS_HINT_")}
        self.env.update(
            GPUOS_HINT_ENDPOINT=f"ipc://{run}/hint.sock",
            GPUOS_HINT_CONTROL=f"ipc://{run}/control.sock",
            GPUOS_HINT_STATE_DIR=str(self.state),
            GPUOS_HINT_CONFIG=str(cfg),
            PYTHONUNBUFFERED="1",
        )
        pp = [str(REPO / "client"), str(REPO / "daemon"), self.env.get("PYTHONPATH", "")]
        self.env["PYTHONPATH"] = os.pathsep.join(p for p in pp if p)
        self.log = open(tmp / "daemon.log", "wb")  # noqa: SIM115 (lives as long as the daemon)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gpuos_hintd.main"], env=self.env, stdout=self.log, stderr=self.log
        )
        deadline = time.monotonic() + 20
        while True:
            try:
                self.request("ping", 0.5)
                break
            except Exception:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError(f"daemon did not start: {(tmp / 'daemon.log').read_text()[-2000:]}") from None
                time.sleep(0.1)

    def request(self, op: str, timeout: float = 10.0) -> Any:
        for p in (str(REPO / "daemon"), str(REPO / "client")):
            if p not in sys.path:
                sys.path.insert(0, p)
        from gpuos_hintd.control import request

        return request(self.env["GPUOS_HINT_CONTROL"], op, timeout_s=timeout)

    def spans(self, pids: set[int] | None = None, after_id: int = 0) -> list[dict[str, Any]]:
        self.request("sync")
        from gpuos_hintd.store import read as store_read

        conn = store_read.connect(self.state / "gpuos-hint.db")  # spans with their signals (schema v2)
        try:
            rows = [dict(r) for r in conn.execute("SELECT * FROM spans WHERE id > ? ORDER BY id", (after_id,))]
        finally:
            conn.close()
        return [r for r in rows if pids is None or r["pid"] in pids]

    def max_id(self) -> int:
        rows = self.spans()
        return rows[-1]["id"] if rows else 0

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def per_phase(rows: list[dict[str, Any]], main_pid: int | None = None) -> dict[str, Any]:
    """Count and duration figures per phase path (workers' spans under 'worker:')."""
    groups: dict[str, list[int]] = {}
    for r in rows:
        key = r["path"] if main_pid is None or r["pid"] == main_pid else f"worker:{r['path']}"
        groups.setdefault(key, []).append(r["duration_ns"])
    return {
        k: {
            "count": len(v),
            "median_ms": round(statistics.median(v) / 1e6, 4),
            "p90_ms": round(sorted(v)[int(len(v) * 0.9)] / 1e6, 4),
            "total_ms": round(sum(v) / 1e6, 2),
        }
        for k, v in sorted(groups.items())
    }


def spread(xs: list[float]) -> dict[str, float]:
    s = sorted(xs)
    return {
        "median": statistics.median(s),
        "min": s[0],
        "max": s[-1],
        "iqr": (s[(3 * len(s)) // 4] - s[len(s) // 4]) if len(s) >= 4 else s[-1] - s[0],
    }


def run_py(daemon: Daemon, code: str, params: dict[str, Any], launcher: bool, timeout: float) -> dict[str, Any]:
    argv = [sys.executable, "-c", code, json.dumps(params)]
    if launcher:
        exe = shutil.which("gpuos-run")
        argv = ([exe] if exe else [sys.executable, "-m", "gpuos_client.run"]) + ["--", *argv]
    res = subprocess.run(argv, env=daemon.env, capture_output=True, text=True, timeout=timeout)
    if res.returncode != 0:
        raise RuntimeError(f"child failed ({res.returncode}): {res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def part_generate(d: Daemon, a: argparse.Namespace, deadline: float) -> dict[str, Any]:
    sizes = (
        dict(vocab=128, hidden=64, layers=2, heads=2, batch=2, prompt=16, new=8, per_block=2)
        if a.tiny
        else dict(vocab=32000, hidden=2048, layers=16, heads=16, batch=4, prompt=512, new=64, per_block=3)
    )
    p = {**sizes, "tiny": a.tiny, "blocks": a.blocks, "mode": "ab", "device_timing": a.device_timing}
    first = d.max_id()
    ab = run_py(d, textwrap.dedent(GEN), p, False, timeout=max(60.0, deadline - time.monotonic()))
    rows = d.spans({ab["pid"]}, first)
    m_on, m_off = statistics.median(ab["on"]), statistics.median(ab["off"])
    res: dict[str, Any] = {
        "params": sizes,
        "device": ab["device"],
        "in_process": {
            "request_ms_unhinted": spread([x * 1e3 for x in ab["off"]]),
            "request_ms_hinted": spread([x * 1e3 for x in ab["on"]]),
            "overhead_pct": round((m_on / m_off - 1) * 100, 3),
            "blocks_each": len(ab["on"]),
            "requests_per_block": sizes["per_block"],
            "order": "unhinted, hinted, unhinted, ... (interleaved blocks)",
            "device_timing": a.device_timing,
            "client": ab["client"],
            "spans": per_phase(rows),
        },
    }
    # The unmodified script as a plain process and under gpuos-run, interleaved.
    p = {**p, "mode": "plain", "blocks": 2}
    plain: list[float] = []
    hinted: list[float] = []
    drops = []
    for i in range(a.proc_runs):
        if time.monotonic() > deadline - 30:
            res["launcher_note"] = f"stopped after {i} pairs (budget)"
            break
        plain.append(statistics.median(run_py(d, textwrap.dedent(GEN), p, False, 600)["blocks"]))
        first = d.max_id()
        out = run_py(d, textwrap.dedent(GEN), p, True, 600)
        hinted.append(statistics.median(out["blocks"]))
        drops.append(out.get("client", {}).get("dropped"))
        if i == 0:
            res["gpuos_run_spans"] = per_phase(d.spans({out["pid"]}, first))
    if plain and hinted:
        res["gpuos_run"] = {
            "request_ms_plain": spread([x * 1e3 for x in plain]),
            "request_ms_gpuos_run": spread([x * 1e3 for x in hinted]),
            "overhead_pct": round((statistics.median(hinted) / statistics.median(plain) - 1) * 100, 3),
            "process_pairs": len(plain),
            "client_dropped": drops,
        }
    return res


def part_train(d: Daemon, a: argparse.Namespace, deadline: float) -> dict[str, Any]:
    p = (
        dict(steps=6, batch=8, size=32, workers=2, tiny=True)
        if a.tiny
        else dict(steps=60, batch=128, size=160, workers=6, tiny=False)
    )
    if a.train_steps:
        p["steps"] = a.train_steps
    plain, hinted, res = [], [], {"params": p, "order": "ABBA: plain, gpuos-run, gpuos-run, plain, ..."}
    for i in range(a.train_runs):
        if time.monotonic() > deadline - 20:
            res["note"] = f"stopped after {i} pairs (budget)"
            break
        first = d.max_id()
        if i % 2 == 0:
            plain.append(run_py(d, textwrap.dedent(TRAIN), p, False, 600)["s_per_step"])
            first = d.max_id()
            out = run_py(d, textwrap.dedent(TRAIN), p, True, 600)
        else:
            out = run_py(d, textwrap.dedent(TRAIN), p, True, 600)
            plain.append(run_py(d, textwrap.dedent(TRAIN), p, False, 600)["s_per_step"])
        hinted.append(out["s_per_step"])
        if i == 0:
            res["arch"] = out["arch"]
            time.sleep(1.0)  # the workers' last batches
            res["spans"] = per_phase(d.spans(None, first), out["pid"])
            res["client"] = out.get("client")
    if plain and hinted:
        res["step_ms_plain"] = spread([x * 1e3 for x in plain])
        res["step_ms_gpuos_run"] = spread([x * 1e3 for x in hinted])
        res["overhead_pct"] = round((statistics.median(hinted) / statistics.median(plain) - 1) * 100, 3)
        res["process_pairs"] = len(plain)
    return res


def part_trainer(d: Daemon, a: argparse.Namespace, tmp: Path, deadline: float) -> dict[str, Any]:
    p = (
        dict(vocab=128, hidden=32, layers=2, heads=2, seq=16, steps=4, tiny=True)
        if a.tiny
        else dict(vocab=32000, hidden=1024, layers=8, heads=16, seq=256, steps=40, tiny=False)
    )
    p["dir"] = str(tmp / "trainer")
    if a.trainer_steps:
        p["steps"] = a.trainer_steps
    first = d.max_id()
    t0 = time.perf_counter()
    out = run_py(d, textwrap.dedent(TRAINER), p, True, 600)
    wall = time.perf_counter() - t0
    time.sleep(1.0)
    res: dict[str, Any] = {
        "params": p,
        "wall_s": round(wall, 2),
        "spans": per_phase(d.spans(None, first), out["pid"]),
        "client": out.get("client"),
    }
    # Overhead: the same Trainer script, plain vs gpuos-run, interleaved ABBA; train() timed inside.
    plain: list[float] = []
    hinted: list[float] = [out["train_s"]]
    i = 0
    while len(plain) < a.trainer_runs or len(hinted) < a.trainer_runs:
        if time.monotonic() > deadline - 25:
            res["note"] = f"stopped after {len(plain)} plain / {len(hinted)} gpuos-run runs (budget)"
            break
        # After the first gpuos-run run: plain, gpuos-run, gpuos-run, plain, plain, ... (ABBA)
        launcher = i % 4 in (1, 2) if len(plain) < a.trainer_runs else True
        if len(hinted) >= a.trainer_runs:
            launcher = False
        r = run_py(d, textwrap.dedent(TRAINER), p, launcher, 600)
        (hinted if launcher else plain).append(r["train_s"])
        i += 1
    if plain and hinted:
        res["train_s_plain"] = spread(plain)
        res["train_s_gpuos_run"] = spread(hinted)
        res["overhead_pct"] = round((statistics.median(hinted) / statistics.median(plain) - 1) * 100, 3)
        res["runs"] = {"plain": len(plain), "gpuos_run": len(hinted)}
        res["order"] = "gpuos-run, plain, gpuos-run, gpuos-run, plain, plain, gpuos-run, ... (interleaved)"
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="CPU, tiny sizes (a smoke run of every part)")
    ap.add_argument("--blocks", type=int, default=8, help="in-process A/B blocks per variant (>= 8)")
    ap.add_argument("--proc-runs", type=int, default=3, help="plain/gpuos-run process pairs for generate")
    ap.add_argument("--train-runs", type=int, default=2, help="plain/gpuos-run process pairs for training")
    ap.add_argument("--train-steps", type=int, default=0, help="steps per training run (0: the default)")
    ap.add_argument("--trainer-runs", type=int, default=1, help="Trainer runs per variant (plain/gpuos-run)")
    ap.add_argument("--trainer-steps", type=int, default=0, help="steps per Trainer run (0: the default)")
    ap.add_argument("--keep-store", help="copy the daemon's store here (for gpuos-hintctl evaluate on real programs)")
    ap.add_argument(
        "--store-samples-hz",
        type=float,
        default=None,
        help="the daemon's store_samples_hz (0: every tick, for `evaluate`; default: its own)",
    )
    ap.add_argument("--budget-s", type=float, default=300.0)
    ap.add_argument("--device-timing", action="store_true", help="hinted A/B blocks also record CUDA events")
    ap.add_argument("--out", help="JSON path (default: $OUT/integrations.json)")
    ap.add_argument("--parts", default="generate,train,trainer")
    a = ap.parse_args()
    out_path = a.out or os.path.join(os.environ.get("OUT", "."), "integrations.json")
    deadline = time.monotonic() + a.budget_s
    result: dict[str, Any] = {"benchmark": "integrations", "tiny": a.tiny, "budget_s": a.budget_s, "skipped": {}}
    try:
        import torch

        result["torch"] = torch.__version__
        import transformers

        result["transformers"] = transformers.__version__
    except Exception as exc:
        result["skipped"]["all"] = f"torch/transformers not importable: {exc!r}"
    tmp = Path(tempfile.mkdtemp(prefix="gpuos-bench-int-"))
    d = Daemon(tmp, a.store_samples_hz)
    result["store_samples_hz"] = a.store_samples_hz if a.store_samples_hz is not None else "daemon default"
    t_start = time.monotonic()
    try:
        parts = {
            "generate": lambda: part_generate(d, a, deadline),
            "train": lambda: part_train(d, a, deadline),
            "trainer": lambda: part_trainer(d, a, tmp, deadline),
        }
        for name in a.parts.split(","):
            if "all" in result["skipped"]:
                break
            if time.monotonic() > deadline - 15:
                result["skipped"][name] = "over the time budget"
                continue
            t0 = time.monotonic()
            try:
                result[name] = parts[name]()
            except Exception as exc:
                result["skipped"][name] = f"failed: {exc!r}"[-2000:]
            print(f"{name}: {time.monotonic() - t0:.1f} s", file=sys.stderr)
        result["daemon_status"] = d.request("status")
    finally:
        d.stop()
        if a.keep_store:
            Path(a.keep_store).mkdir(parents=True, exist_ok=True)
            for f in (tmp / "state").glob("gpuos-hint.db*"):
                shutil.copy2(f, Path(a.keep_store) / f.name)
        result["wall_s"] = round(time.monotonic() - t_start, 1)
        Path(out_path).parent.mkdir(parents=True, exist_ok=True)
        Path(out_path).write_text(json.dumps(result, indent=2, default=str))
        print(json.dumps({k: result.get(k) for k in ("skipped", "wall_s")}), file=sys.stderr)
        shutil.rmtree(tmp, ignore_errors=True)
    return 0 if not result["skipped"] else 1


if __name__ == "__main__":
    sys.exit(main())
