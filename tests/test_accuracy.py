"""The CPU accuracy harness at small size: per-phase CPU against the program's own clocks.

Runs benchmarks/accuracy_cpu.py --small (a real daemon at default settings, a real hinted
client; truth read in-process, never from the daemon) and asserts accuracy, not timing.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _accuracy_gpu(monkeypatch: pytest.MonkeyPatch):
    """benchmarks/gpu/accuracy_gpu.py as a module (its directory on the path, as when it runs)."""
    gpu = REPO / "benchmarks" / "gpu"
    monkeypatch.syspath_prepend(str(gpu))
    spec = importlib.util.spec_from_file_location("accuracy_gpu", gpu / "accuracy_gpu.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_edge_readings_meet_the_cpu_targets(tmp_path):
    out = tmp_path / "acc.json"
    subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "accuracy_cpu.py"), "--small", "--no-plot", "--out", str(out)],
        check=True,
        timeout=600,
    )
    doc = json.loads(out.read_text())
    res = {r["config"]: r for r in doc["results"]}
    edges, interp = res["edges@10Hz"]["phases"], res["interp@10Hz"]["phases"]
    # A truth row is matched to the span that began within 1 ms before it: on a loaded machine a
    # preemption between the hint and the program's first reading can break that for a few.
    r = res["edges@10Hz"]
    assert r["spans_unmatched"] <= 0.02 * r["spans_matched"], r["spans_unmatched"]
    # Issue 9's alternation: hot within +-10 %, cold <= 5 % of the CPU (it was -62 % / 61 %).
    assert abs(edges["hot"]["thread_cpu_err_pct"]) <= 10, edges["hot"]
    assert edges["cold"]["share_of_case_cpu_pct"] <= 5, edges["cold"]
    for name, p in edges.items():
        if p["mix"] != "sleep" and p["length_ms"] >= 1:
            # Per-phase total CPU of phases >= 1 ms within +-5 % of the thread clock, process CPU too.
            assert abs(p["thread_cpu_err_pct"]) <= 5, (name, p)
            assert abs(p["proc_cpu_err_pct"]) <= 5, (name, p)
        else:
            # A sleep holds its own wake-up's CPU (~20-50 us of a thread's clock per wake here,
            # benchmarks/results/wake_cost.json): next to a 1 ms spin that alone is 2-5 %, so the
            # share bound is 5 % from 4 ms (issue 9's case) and 10 % below it.
            bound = 5 if p["length_ms"] >= 4 else 10
            assert p["share_of_case_cpu_pct"] <= bound, (name, p)
        # Voluntary context switches: the sleeps' own (one per sleep), not smeared.  The span also
        # holds the hint's own code (a GIL hand-off to the sender thread is a voluntary switch).
        assert abs(p["daemon_ctx_vol"] - p["truth_ctx_vol"]) <= max(5, 0.1 * p["truth_ctx_vol"]), (name, p)
        # Every span's stated CPU interval (value +- thread_cpu_ns_err; 0 when exact) meets the true
        # edge-to-edge CPU, which lies between the body's own reading and one around the block.
        assert p["within_stated_bound_pct"] >= 98, (name, p)
    # Without the readings (the interpolation) the same run is far off: the harness can tell.
    assert interp["hot"]["share_of_case_cpu_pct"] < 90 or abs(interp["hot"]["thread_cpu_err_pct"]) > 10


def test_gpu_accuracy_script_cpu_smoke(tmp_path):
    """benchmarks/gpu/accuracy_gpu.py --cpu: the same code path as on the H200, tiny, no NVML."""
    import pytest

    for mod in ("torch", "transformers"):
        pytest.importorskip(mod, reason=f"{mod} is not installed (pip install torch==2.13.0 transformers)")
    subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "gpu" / "accuracy_gpu.py"), "--cpu", "--out", str(tmp_path)],
        check=True,
        timeout=600,
        capture_output=True,
    )
    doc = json.loads((tmp_path / "accuracy_gpu.json").read_text())
    assert doc["mode"] == "cpu-smoke"
    ph = doc["daemon"]["phases"]
    # Every hinted phase reached the daemon, each span with its CPU from the edge readings.
    assert ph["prefill"]["spans"] == 2 and ph["decode"]["spans"] == 8
    assert ph["stage_a"]["spans"] == 5 and ph["forward"]["spans"] == 3
    assert all(p["thread_cpu_ms_mean"] is not None for p in ph.values())
    assert set(doc["isolated"]) >= {"prefill", "decode", "forward", "backward", "optimizer", "stage_a"}
    assert "FIT W" in doc["daemon"]["phases_table"]
    assert set(doc["isolated_before"]) == set(doc["isolated_after"]) and doc["isolated"]["decode"]["runs"] == 2
    # The span counts the harness waits for are the ones the daemon stored (a miscount made every
    # run wait out its full minute).
    assert {n: ph[n]["spans"] for n in ("decode_ab", "decode_ab_dev")} == doc["step_cost"]["spans"]
    raw = json.loads((tmp_path / "accuracy_gpu_raw.json").read_text())
    assert len(raw["spans"]) == sum(p["spans"] for p in ph.values())
    assert all(len(r) == 6 and r[5] is None for r in raw["spans"])  # busy ms: none without CUPTI


def test_gpu_accuracy_reintegration_moves_energy_by_the_sample_delay(monkeypatch):
    """accuracy_gpu.reintegrate: a sample delay moves a burst's energy back into the span that made it."""
    mod = _accuracy_gpu(monkeypatch)
    ms = 1_000_000

    # 600 W during [90, 130) ms, 100 W otherwise; samples every 20 ms, each the mean of the 20 ms
    # that ended 10 ms before its stamp (a 10 ms delay).
    def true_w(t):
        return 600.0 if 90 * ms <= t < 130 * ms else 100.0

    samples = []
    for k in range(1, 20):
        t = k * 20 * ms
        lo, hi = t - 30 * ms, t - 10 * ms
        mean = sum(true_w(lo + (i + 0.5) * (hi - lo) / 200) for i in range(200)) / 200
        samples.append([t, mean * 1000.0])
    spans = [["burst", 90 * ms, 130 * ms, None, None], ["after", 130 * ms, 170 * ms, None, None]]
    window = {"t0_ns": 40 * ms, "t1_ns": 300 * ms}
    counter_j = sum(true_w(40 * ms + (i + 0.5) * ms) for i in range(260)) / 1000.0  # 1 ms steps, J
    got = mod.reintegrate({"samples": samples}, spans, window, counter_j, [0.0, 10.0])
    burst0, burst10 = got["0.0"]["energy_j_mean"]["burst"], got["10.0"]["energy_j_mean"]["burst"]
    assert abs(burst10 - 24.0) < 0.5  # 600 W x 40 ms
    assert burst0 < 20.0  # at face value the burst's energy is smeared into "after"
    assert got["0.0"]["energy_j_mean"]["after"] > got["10.0"]["energy_j_mean"]["after"] + 4


def test_gpu_accuracy_in_context_profile_assigns_kernels_by_their_launch(monkeypatch):
    """accuracy_gpu.device_time_by_range: a kernel counts for the phase whose range launched it.

    A synthetic chrome trace in torch.profiler's layout: ``fwd`` launches two kernels that run
    after its range ended (no sync), ``bwd``'s kernel is launched from another thread inside the
    main thread's ``bwd`` range, and one memset is launched outside every range.
    """
    mod = _accuracy_gpu(monkeypatch)

    def x(cat, name, ts, dur, corr=None, tid=1):
        return {"ph": "X", "cat": cat, "name": name, "ts": ts, "dur": dur, "tid": tid,
                "args": {} if corr is None else {"correlation": corr}}  # fmt: skip

    trace = {"traceEvents": [
        x("user_annotation", "fwd", 0, 10), x("user_annotation", "bwd", 12, 20), x("user_annotation", "fwd", 40, 5),
        x("cuda_runtime", "cudaLaunchKernel", 1, 1, 1), x("cuda_runtime", "cudaLaunchKernel", 5, 1, 2),
        x("cuda_driver", "cuLaunchKernel", 15, 1, 3, tid=2), x("cuda_runtime", "cudaMemsetAsync", 35, 1, 4),
        x("cuda_runtime", "cudaLaunchKernel", 41, 1, 5),
        x("kernel", "gemm", 11, 300, 1), x("kernel", "relu", 311, 200, 2), x("kernel", "dgrad", 520, 1000, 3),
        x("gpu_memset", "Memset", 1600, 7, 4), x("kernel", "gemm", 1610, 400, 5),
        x("gpu_user_annotation", "fwd", 11, 500),  # the profiler's GPU-side range: never counted
    ]}  # fmt: skip
    got = mod.device_time_by_range(trace, ("fwd", "bwd"))
    assert got["unassigned_device_events"] == 1
    assert got["fwd"]["occurrences"] == 2 and got["fwd"]["kernel_ms_per_occurrence"] == (0.5 + 0.4) / 2
    assert got["bwd"] == {"occurrences": 1, "kernel_ms_per_occurrence": 1.0, "kernel_ms_median": 1.0,
                          "union_ms_per_occurrence": 1.0}  # fmt: skip
    # The second fwd's memset [1600, 1607) and GEMM [1610, 2010) do not overlap; the first fwd's
    # GEMM [11, 311) and relu [311, 511) touch: union == sum for both.
    assert got["fwd"]["union_ms_per_occurrence"] == got["fwd"]["kernel_ms_per_occurrence"]
    overlap = {"traceEvents": [
        x("user_annotation", "fwd", 0, 10), x("cuda_runtime", "a", 1, 1, 1), x("cuda_runtime", "b", 2, 1, 2),
        x("kernel", "s1", 20, 100, 1), x("kernel", "s2", 70, 100, 2),  # two streams, 50 us overlap
    ]}  # fmt: skip
    got = mod.device_time_by_range(overlap, ("fwd",))["fwd"]
    assert got["kernel_ms_per_occurrence"] == 0.2 and got["union_ms_per_occurrence"] == 0.15


def test_profiler_union_counts_overlap_once():
    """profiler_trace.union_length, the truth side's busy time (not the client's BusyIntervals)."""
    spec = importlib.util.spec_from_file_location("profiler_trace", REPO / "benchmarks" / "gpu" / "profiler_trace.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.union_length([]) == 0.0
    assert mod.union_length([(5.0, 9.0), (0.0, 2.0), (1.0, 3.0), (9.0, 10.0)]) == 3.0 + 5.0
    assert mod.union_length([(0.0, 10.0), (2.0, 3.0)]) == 10.0  # one inside another
