"""benchmarks/gpu/bench_integrations.py in its CPU --tiny mode: every part runs against a real daemon and
records the spans that ran (no timing asserted: a CPU smoke run of the H200 script)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from mlreq import need

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "gpu" / "bench_integrations.py"


@pytest.mark.slow
def test_tiny_mode_runs_every_part_and_records_the_spans(tmp_path):
    need("torch", "transformers", "accelerate")
    out = tmp_path / "integrations.json"
    res = subprocess.run(
        [sys.executable, str(SCRIPT), "--tiny", "--proc-runs", "1", "--train-runs", "1", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    doc = json.loads(out.read_text())
    assert res.returncode == 0 and doc["skipped"] == {}, (doc["skipped"], res.stderr[-3000:])
    ab = doc["generate"]["in_process"]
    assert ab["blocks_each"] == 8 and ab["client"]["dropped"] == 0
    n = 8 * ab["requests_per_block"]  # hinted requests; 8 new tokens each: 1 prefill + 7 decode steps
    assert {k: v["count"] for k, v in ab["spans"].items()} == {
        "generate": n,
        "generate/prefill": n,
        "generate/decode": 7 * n,
    }
    # The unmodified script under gpuos-run: 2 warm-up + 2 blocks x 2 requests.
    assert {k: v["count"] for k, v in doc["generate"]["gpuos_run_spans"].items()} == {
        "generate": 6,
        "generate/prefill": 6,
        "generate/decode": 42,
    }
    assert doc["generate"]["gpuos_run"]["client_dropped"] == [0]
    train = {k: v["count"] for k, v in doc["train"]["spans"].items()}
    assert train == {"data": 7, "forward": 6, "backward": 6, "optimizer.step": 6, "worker:data.fetch": 6}
    trainer = {k: v["count"] for k, v in doc["trainer"]["spans"].items()}
    assert {k: trainer[k] for k in ("train.step", "train.step/optimizer.step", "eval", "checkpoint")} == {
        "train.step": 4,
        "train.step/optimizer.step": 4,
        "eval": 2,
        "checkpoint": 2,
    }
    assert trainer["worker:data.fetch"] > 0  # dataloader_num_workers=2: forked workers hint too
