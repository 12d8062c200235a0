"""The instrumented workloads (NumPy path here): their phases reach the daemon; --no-hints sends nothing."""

from __future__ import annotations

import json
import subprocess
import sys


def run_workload(d, *args):
    out = subprocess.run(
        [sys.executable, "-m", *args, "--quiet", "--json", "-"], env=d.env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout[out.stdout.index("{\n") :])


def spans_when(d, ok, what):
    """Wait until the store's spans satisfy ok(count); return them."""
    return d.wait_for(lambda: rows if ok(len(rows := d.query("SELECT * FROM spans"))) else None, what=what)


def test_llm_phases_and_classes(daemon):
    s = run_workload(
        daemon,
        "gpuos_workloads.llm",
        "--device",
        "cpu",
        "--requests",
        "2",
        "--steps",
        "5",
        "--prompt-tokens",
        "64",
        "--hidden",
        "64",
        "--layers",
        "2",
        "--vocab",
        "256",
    )
    assert s["backend"] == "numpy" and s["client"]["dropped"] == 0
    rows = spans_when(daemon, lambda n: n == 2 * (2 + 5), "llm spans")
    got = sorted((r["path"], r["workload_class"]) for r in rows)
    assert got == sorted(
        [("prefill", "inference.prefill")] * 2
        + [("decode", "inference.decode")] * 2
        + [("decode/step", "inference.decode")] * 10
    )


def test_train_phases(daemon, tmp_path):
    run_workload(
        daemon,
        "gpuos_workloads.train",
        "--device",
        "cpu",
        "--steps",
        "4",
        "--batch",
        "64",
        "--features",
        "16",
        "--hidden",
        "32",
        "--checkpoint-every",
        "2",
        "--workdir",
        str(tmp_path / "w"),
    )
    rows = spans_when(daemon, lambda n: n >= 4 * 5 + 3, "train spans")
    counts = {}
    for r in rows:
        counts[r["path"]] = counts.get(r["path"], 0) + 1
    assert counts == {
        "prepare": 1,
        "step": 4,
        "step/data": 4,
        "step/forward": 4,
        "step/backward": 4,
        "step/optimizer": 4,
        "checkpoint": 2,
    }
    assert {r["workload_class"] for r in rows if r["path"] == "checkpoint"} == {"training.checkpoint"}
    assert len(daemon.query("SELECT * FROM marks WHERE name='checkpoint_written'")) == 2
    assert (tmp_path / "w" / "ckpt.npy").exists()


def test_sweeps_levels_are_phases(daemon):
    s = run_workload(daemon, "gpuos_workloads.sweeps", "--device", "cpu", "--launches", "8", "--n", "16")
    assert len(s["levels"]) == 12
    rows = spans_when(daemon, lambda n: n == 12, "sweep spans")
    gaps = sorted(json.loads(r["attrs"])["gap_us"] for r in rows if r["name"] == "cadence")
    assert gaps == [0, 50, 200, 1000, 2000]
    assert {json.loads(r["attrs"])["order"] for r in rows if r["name"] == "ordering"} == {"interleaved", "grouped"}


def test_no_hints_sends_nothing(daemon):
    s = run_workload(
        daemon,
        "gpuos_workloads.llm",
        "--device",
        "cpu",
        "--no-hints",
        "--requests",
        "1",
        "--steps",
        "2",
        "--prompt-tokens",
        "16",
        "--hidden",
        "32",
        "--layers",
        "1",
        "--vocab",
        "64",
    )
    assert s["client"] is None
    daemon.sync()
    assert daemon.query("SELECT * FROM spans") == []
    assert daemon.status()["counters"].get("events", 0) == 0
