"""gpuos_client.hf against real transformers (a tiny Llama built from a config, random weights, nothing
downloaded) and a real daemon: generate's prefill/decode split and the Trainer's phases, by hand and
under gpuos-run with no code change."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

from mlreq import need

GPUOS_RUN = str(Path(sys.executable).with_name("gpuos-run"))

TINY = """
import json, os, sys, torch
from transformers import LlamaConfig, LlamaForCausalLM
torch.manual_seed(0)
cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64)
HAND = os.environ.get("HAND") == "1"
"""

GENERATE = (
    TINY
    + """
model = LlamaForCausalLM(cfg).eval()
if HAND:
    from gpuos_client.hf import instrument_generate
    instrument_generate(model)
lens = []
for batch, prompt in ((2, 5), (1, 7)):
    ids = torch.randint(1, 64, (batch, prompt))
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=6, min_new_tokens=6,
                         do_sample=False, pad_token_id=0)
    lens.append(out.shape[1] - prompt)
import gpuos_client
gpuos_client.flush()
print(json.dumps({"pid": os.getpid(), "new": lens}))
"""
)

TRAIN = (
    TINY
    + """
from transformers import Trainer, TrainingArguments
model = LlamaForCausalLM(cfg)
class DS(torch.utils.data.Dataset):
    def __len__(self):
        return 16
    def __getitem__(self, i):
        ids = torch.randint(0, 64, (8,), generator=torch.Generator().manual_seed(i))
        return {"input_ids": ids, "labels": ids.clone()}
args = TrainingArguments(output_dir=sys.argv[1], max_steps=4, per_device_train_batch_size=2,
                         per_device_eval_batch_size=4, gradient_accumulation_steps=2, eval_strategy="steps",
                         eval_steps=2, save_strategy="steps", save_steps=2, logging_steps=100, report_to="none",
                         use_cpu=True, dataloader_num_workers=0, disable_tqdm=True)
trainer = Trainer(model=model, args=args, train_dataset=DS(), eval_dataset=DS())
if HAND:
    from gpuos_client.hf import instrument_trainer
    instrument_trainer(trainer)
trainer.train()
import gpuos_client
gpuos_client.flush()
print(json.dumps({"pid": os.getpid()}))
"""
)


def run(d, argv, env=None):
    res = subprocess.run(argv, env={**d.env, **(env or {})}, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-4000:]
    return json.loads(res.stdout.splitlines()[-1])


def spans(d, pid, expect):
    def got():
        rows = d.query("SELECT * FROM spans WHERE pid = ? ORDER BY start_ns", (pid,))
        return len(rows) >= expect and rows

    return [dict(r) for r in d.wait_for(got, what=f"{expect} spans of pid {pid}")]


def test_generate_prefill_decode_split_by_hand_and_under_gpuos_run(daemon, tmp_path):
    need("torch", "transformers")
    script = tmp_path / "gen.py"
    script.write_text(GENERATE)
    results = {}
    for how, argv, env in (
        ("hand", [sys.executable, str(script)], {"HAND": "1"}),
        ("auto", [GPUOS_RUN, "--", sys.executable, str(script)], {}),
    ):
        out = run(daemon, argv, env)
        assert out["new"] == [6, 6]
        rows = spans(daemon, out["pid"], 2 * (1 + 1 + 5))
        by_id = {r["span_id"]: r for r in rows}
        gens = [r for r in rows if r["name"] == "generate"]
        assert [json.loads(r["attrs"]) for r in gens] == [
            {"batch": 2, "prompt_len": 5, "max_new_tokens": 6},
            {"batch": 1, "prompt_len": 7, "max_new_tokens": 6},
        ]
        for g, (batch, prompt) in zip(gens, ((2, 5), (1, 7)), strict=True):
            kids = [r for r in rows if r["parent_span_id"] == g["span_id"]]
            # One prefill over the prompt, then one decode per further token, each extending the cache by one.
            assert [k["name"] for k in kids] == ["prefill"] + ["decode"] * 5
            assert json.loads(kids[0]["attrs"]) == {"batch": batch, "tokens": prompt, "past": 0}
            assert [json.loads(k["attrs"]) for k in kids[1:]] == [
                {"batch": batch, "past": prompt + i} for i in range(5)
            ]
            assert kids[0]["workload_class"] == "inference.prefill"
            assert {k["workload_class"] for k in kids[1:]} == {"inference.decode"}
            assert all(g["start_ns"] <= k["start_ns"] <= k["end_ns"] <= g["end_ns"] for k in kids)
            assert [by_id[k["parent_span_id"]]["name"] for k in kids] == ["generate"] * 6
        marks = daemon.query("SELECT attrs FROM marks WHERE pid = ? AND name = 'generate.done'", (out["pid"],))
        assert [json.loads(m["attrs"]) for m in marks] == [{"new_tokens": 6, "batch": 2}, {"new_tokens": 6, "batch": 1}]
        results[how] = Counter((r["path"], r["workload_class"], r["attrs"]) for r in rows)
    assert results["auto"] == results["hand"]


def test_trainer_phases_by_hand_and_under_gpuos_run(daemon, tmp_path):
    need("torch", "transformers", "accelerate")
    script = tmp_path / "train.py"
    script.write_text(TRAIN)
    steps, accum, evals, saves = 4, 2, 2, 2
    trainer_level = {
        ("train.step", "training.step"): steps,
        ("train.step/optimizer.step", "training.step"): steps,
        ("eval", "inference.batch"): evals,
        ("checkpoint", "training.checkpoint"): saves,
    }
    hand = run(daemon, [sys.executable, str(script), str(tmp_path / "hand")], {"HAND": "1"})
    rows = spans(daemon, hand["pid"], sum(trainer_level.values()))
    assert Counter((r["path"], r["workload_class"]) for r in rows) == trainer_level
    assert [json.loads(r["attrs"]) for r in rows if r["name"] == "train.step"] == [{"step": s} for s in (1, 2, 3, 4)]
    assert [json.loads(r["attrs"]) for r in rows if r["name"] == "checkpoint"] == [{"step": 2}, {"step": 4}]

    auto = run(daemon, [GPUOS_RUN, "--", sys.executable, str(script), str(tmp_path / "auto")])
    # Under gpuos-run: the same Trainer-level phases, plus forward/backward/data from the torch integration.
    eval_batches = 16 // 4
    extra = {
        ("train.step/forward", "training.step"): steps * accum,
        ("train.step/backward", "training.step"): steps * accum,
        ("eval/forward", "inference.batch"): evals * eval_batches,
        ("eval/data", "training.data"): evals * (eval_batches + 1),
    }
    rows = spans(daemon, auto["pid"], sum(trainer_level.values()) + sum(extra.values()))
    got = Counter((r["path"], r["workload_class"]) for r in rows)
    top_data = got.pop(("data", "training.data"))  # the Trainer prefetches: how many is its business
    assert top_data >= steps * accum
    assert got == {**trainer_level, **extra}
