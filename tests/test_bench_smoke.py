"""The benchmark scripts still run and write well-formed results (tiny sizes; no timing is asserted),
and a run whose events were not all delivered is marked invalid, not reported as a figure."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"


def run_bench(tmp_path: Path, script: str, *args: str, timeout: float = 240) -> dict:
    out = tmp_path / "result.json"
    res = subprocess.run(
        [sys.executable, str(BENCH / script), *args, "--out", str(out)], capture_output=True, text=True, timeout=timeout
    )
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    doc = json.loads(out.read_text())
    assert doc["benchmark"] in script and doc["host"]["cpus"] >= 1
    assert len(doc["host"]["loadavg_at_write"]) == 3  # a shared machine: the load is recorded
    return doc


def test_latency_runs_and_writes_json(tmp_path):
    doc = run_bench(tmp_path, "bench_latency.py", "--trials", "10", "--baseline-polls", "10")
    assert {"results", "summary", "parameters"} <= set(doc)


def test_footprint_before_after_in_one_run(tmp_path):
    doc = run_bench(
        tmp_path,
        "bench_footprint.py",
        *("--clients", "2", "--window", "1.5", "--settle", "0.5", "--repeats", "1", "--no-baseline"),
    )
    assert set(doc["runs"]) == {"before", "after"} and doc["before_commit"]
    for cond in ("before", "after"):
        (r,) = doc["runs"][cond]
        assert r["daemon_cpu_pct"] is not None and r["daemon_rss_end_mb"] > 0
        assert r["ticks_per_s"] is not None and r["host_busy_pct_of_all_cores"] is not None
        assert r["delivery"]["events_handed"] > 0 and "valid" in r and "flags" in r
        assert "proc" in r["samplers"]
    assert "after_over_before_cpu" in doc["summary"] and "all_valid" in doc["summary"]


def matrix(tmp_path: Path, *extra: str) -> dict:
    return run_bench(
        tmp_path,
        "bench_daemon_matrix.py",
        *("--clients", "1,2", "--rates", "20", "--window", "1", "--settle", "0.3", *extra),
    )


def test_daemon_matrix_cells_have_their_fields(tmp_path):
    doc = matrix(tmp_path)
    assert [(c["clients"], c["rate_hz_per_client"]) for c in doc["cells"]] == [(1, 20.0), (2, 20.0)]
    for c in doc["cells"]:
        for k in ("daemon_cpu_pct", "daemon_rss_peak_mb", "daemon_rss_end_mb", "ticks_per_s", "achieved_phases_per_s"):
            assert c[k] is not None, k
        assert c["configured_ticks_per_s"] == 10.0 and c["loadavg_start"] and c["stop"]["killed"] is False
        assert c["delivery"]["events_delivered"] == c["delivery"]["events_handed"] > 0
        assert c["valid"], c["delivery"]["problems"]
    assert doc["summary"]["invalid_cells"] == 0 and doc["run_time_s"] > 0


def test_daemon_matrix_flags_a_cell_whose_events_were_refused(tmp_path):
    # A daemon whose rate limit refuses most events: the clients see them rejected (acks), so the cell
    # must say invalid, with the reason, instead of giving a CPU figure as if all were taken.
    doc = matrix(
        tmp_path, "--flush-timeout", "2", "--daemon-config", "rate_events_per_s = 1.0\\nrate_burst_events = 4.0"
    )
    for c in doc["cells"]:
        assert not c["valid"] and "not_all_delivered" in c["flags"]
        assert any("rejected" in p for p in c["delivery"]["problems"])
    assert doc["summary"]["invalid_cells"] == len(doc["cells"])


@pytest.mark.parametrize("max_open", [None, 1])
def test_ingest_quick_checks_ticks_and_delivery(tmp_path, max_open):
    args = ["--quick", "--senders", "1", "--ack-timeout", "30", "--drain-timeout", "30"]
    if max_open:  # one open span allowed: the daemon refuses nested begins, so the runs are invalid
        args += ["--max-open-spans", str(max_open)]
    doc = run_bench(tmp_path, "bench_ingest.py", *args)
    sc = doc["results"]["sustained_check"]
    assert sc["configured_ticks_per_s"] == 10.0 and sc["ticks"] >= 0 and "flags" in sc
    (e2e,) = doc["results"]["e2e"]
    assert e2e["pinning"]["machine_cpus"] and e2e["stop"]["killed"] is False
    if max_open is None:
        assert sc["ticks"] >= 1 and sc["ticks_per_s"] > 0
        assert sc["valid"] and sc["spans_finalised"] == sc["end_events"], sc["problems"]
        assert e2e["valid"] and e2e["acked_ok"] == e2e["sent"], e2e["problems"]
    else:
        assert not sc["valid"] and sc["problems"]
        assert not e2e["valid"] and e2e["acked_bad"] > 0
        assert doc["summary"]["e2e_all_valid"] is False
