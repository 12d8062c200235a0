"""The benchmark scripts still run and write well-formed results (tiny sizes; no timing is asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.mark.parametrize(
    ("script", "args", "keys"),
    [
        ("bench_latency.py", ["--trials", "10", "--baseline-polls", "10"], {"results", "summary", "parameters"}),
        (
            "bench_footprint.py",
            ["--clients", "2", "--window", "2", "--baseline-window", "1", "--settle", "0.5"],
            {"results", "summary", "parameters"},
        ),
    ],
)
def test_benchmark_runs_and_writes_json(tmp_path, script, args, keys):
    out = tmp_path / "result.json"
    res = subprocess.run(
        [sys.executable, str(BENCH / script), *args, "--out", str(out)], capture_output=True, text=True, timeout=180
    )
    assert res.returncode == 0, res.stderr[-3000:]
    doc = json.loads(out.read_text())
    assert keys <= set(doc) and doc["host"]["cpus"] >= 1
    assert doc["benchmark"] in script
