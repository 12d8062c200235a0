"""docs/accuracy.md and docs/evaluation.md carry exactly what benchmarks/accuracy_doc.py renders from
the recorded results: no number in their generated blocks is typed in or stale."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from gpuos_hintd.evaluate import report

REPO = Path(__file__).resolve().parent.parent


def _module():
    spec = importlib.util.spec_from_file_location("accuracy_doc", REPO / "benchmarks" / "accuracy_doc.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_generated_accuracy_blocks_match_the_recorded_results() -> None:
    for doc, b in _module().blocks().items():
        text = doc.read_text()
        assert report.replace_generated(text, b) == text, f"{doc.name} is stale: run benchmarks/accuracy_doc.py"


def test_the_per_phase_rule_prefers_an_identified_fit_below_two_sample_periods() -> None:
    mod = _module()
    r = {
        "comparison": {
            "short": {
                "dev_ms": 10.0,
                "fit_energy_j": 1.0,
                "span_energy_j": 0.5,
                "fit_ci_w": [90, 110],
                "truth_energy_j": 1.0,
                "truth_power_w": 100,
                "span_energy_err_pct": -50,
                "fit_power_w": 100,
                "fit_energy_err_pct": 0,
                "profiler_kernel_ms": None,
            },
            "unsplit": {
                "dev_ms": 10.0,
                "fit_energy_j": 2.0,
                "span_energy_j": 0.9,
                "fit_ci_w": [0, 300],
                "truth_energy_j": 1.0,
                "truth_power_w": 100,
                "span_energy_err_pct": -10,
                "fit_power_w": 200,
                "fit_energy_err_pct": 100,
                "profiler_kernel_ms": None,
            },
            "long": {
                "dev_ms": 80.0,
                "fit_energy_j": 2.0,
                "span_energy_j": 1.1,
                "fit_ci_w": [20, 30],
                "truth_energy_j": 1.0,
                "truth_power_w": 100,
                "span_energy_err_pct": 10,
                "fit_power_w": 25,
                "fit_energy_err_pct": 100,
                "profiler_kernel_ms": None,
            },
        },
        "daemon": {"phases": {n: {"host_ms_mean": 1.0} for n in ("short", "unsplit", "long")}},
        "isolated": {},
    }
    assert mod.per_phase(r, "short")["figure"] == "fit"
    assert mod.per_phase(r, "unsplit")["figure"] == "span"  # its interval reaches 0 W: not separable
    assert mod.per_phase(r, "long")["figure"] == "span"  # resolved one by one


def test_device_time_is_checked_against_the_profile_in_context_when_a_run_has_it() -> None:
    """The reference is the in-context union, else the in-context sum, else the phase profiled alone."""
    mod = _module()
    p = {"kernel_ctx_union_ms": 1.6, "kernel_ctx_ms": 1.61, "kernel_ms": 1.43}
    assert mod.kernel_reference(p) == (1.6, "in context, union")
    assert mod.kernel_reference(p | {"kernel_ctx_union_ms": None}) == (1.61, "in context, sum")
    assert mod.kernel_reference({"kernel_ctx_union_ms": None, "kernel_ctx_ms": None, "kernel_ms": 1.43}) == (
        1.43,
        "alone",
    )
