"""The generated blocks of docs/accuracy.md and docs/evaluation.md on attribution accuracy.

Rendered from the recorded results only (benchmarks/results/...), never typed in: the H200 runs
of benchmarks/gpu/accuracy_gpu.py (``GPU_RUNS``) and benchmarks/results/accuracy_cpu.json.

    .venv/bin/python benchmarks/accuracy_doc.py      # re-render the blocks

The per-phase energy figure is chosen by a rule, the same for every phase and run: the phase fit
(``FIT J/SPAN``) when a phase's mean device time is shorter than two power-sample periods (its
spans cannot be resolved one by one) and the fit is identified (its 95 % interval does not reach
0 W: phases that always alternate 1:1 cannot be told apart by occupancy); the mean span energy
otherwise.
"""

from __future__ import annotations

import json
import lzma
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
R4 = RESULTS / "h200" / "round4"
GPU_RUNS = {
    "run 1": R4 / "accuracy_gpu_run1.json",
    "run 2": R4 / "accuracy_gpu_run2.json",
    "run 3 (CUPTI busy tracing in the hinted run)": R4 / "accuracy_gpu_run3_busy.json",
    "run 4 (busy; per-thread CUPTI buffers)": R4 / "accuracy_gpu_run4_busy.json",
    "run 5 (busy; per-thread buffers; profiler in context)": R4 / "accuracy_gpu_run5_busy.json",
    "run 6 (busy; per-thread buffers; profiler in context)": R4 / "accuracy_gpu_run6_busy.json",
    "run 7 (busy; global CUPTI buffers; profiler in context)": R4 / "accuracy_gpu_run7_busy.json",
    "run 8 (busy; global buffers; bracketed clock anchor; profiler in context)": R4 / "accuracy_gpu_run8_busy.json",
    "run 9 (busy; as run 8, CUPTI buffers walked in C)": R4 / "accuracy_gpu_run9_busy.json",
}
#: The energy tables show the runs at default settings and the first busy run; runs 4-9 were made for
#: device time (CUPTI tracing slows the host-bound phases, so their energy is not a default figure;
#: it is in their JSON files).
ENERGY_RUNS = ("run 1", "run 2", "run 3 (CUPTI busy tracing in the hinted run)")
CUPTI_RUNS = {
    "offset-only clock map": R4 / "cupti_offset_only" / "cupti_check_cdll.json",
    "linear clock map": R4 / "cupti_rate" / "cupti_check_cdll.json",
    "linear map, 256-record buffers, no forced flush while work is queued": R4
    / "cupti_final"
    / "cupti_check_cdll.json",
    "the same, again (with accuracy run 4)": R4 / "cupti_final2" / "cupti_check_cdll.json",
    "global activity buffers (with accuracy run 7)": R4 / "cupti_global" / "cupti_check_cdll.json",
    "buffers walked in C, shorter run (with accuracy run 9)": R4 / "busy_walk" / "cupti_check_cdll.json",
    "no start sleep: records held until the clock rate is measured": R4 / "rate_hold" / "cupti_check_cdll.json",
}
#: The program's cost of device timing and of CUPTI busy time: run_batch.sh device-cost (the first
#: four: the Python buffer walk), busy-walk (the C walk against the Python one, launch-bound) and
#: rate-hold (the C walk again, with the tracer's start sleep gone).
DEVICE_COST_RUNS = [
    R4 / "device_cost" / "generate_overhead_device_on.json",
    R4 / "device_cost" / "launch_overhead_device_on.json",
    R4 / "device_cost" / "generate_overhead_device_busy.json",
    R4 / "device_cost" / "launch_overhead_device_busy.json",
    R4 / "busy_walk" / "launch_overhead_device_busy_walk_python.json",
    R4 / "busy_walk" / "launch_overhead_device_busy_walk_c.json",
    R4 / "rate_hold" / "launch_overhead_device_busy_walk_c_2.json",
]
PHASES = ("prefill", "decode", "forward", "backward", "optimizer", "stage_a", "stage_b")
SAMPLE_PERIOD_MS = 20.0  # the H200's power-sample spacing (status: power_samples_period_ms; recorded)
TARGET_MIN_MS = 5.0  # issue 9's energy target covers phases >= 5 ms


def _f(x: float | None, nd: int = 2, pct: bool = False) -> str:
    if x is None:
        return "-"
    return f"{x:+.{nd}f} %" if pct else f"{x:.{nd}f}"


def _err(got: float | None, true: float | None) -> float | None:
    return 100.0 * (got - true) / true if got is not None and true else None


def runs() -> dict[str, dict[str, Any]]:
    return {k: json.loads(p.read_text()) for k, p in GPU_RUNS.items() if p.exists()}


def per_phase(r: dict[str, Any], name: str) -> dict[str, Any]:
    """One phase of one run: truth, per-span, fit, and the figure the rule picks."""
    c = r["comparison"][name]
    d = r["daemon"]["phases"][name]
    iso = r["isolated"].get(name, {})
    dev = c["dev_ms"] or d["host_ms_mean"]
    identified = bool(c["fit_ci_w"]) and c["fit_ci_w"][0] > 0  # an interval reaching 0 W: not separable
    use_fit = dev < 2 * SAMPLE_PERIOD_MS and c["fit_energy_j"] is not None and identified
    fig = c["fit_energy_j"] if use_fit else c["span_energy_j"]
    span_w = c["span_energy_j"] / (dev / 1e3) if c["span_energy_j"] and dev else None
    return {
        "dev_ms": dev,
        "iso_ms": iso.get("wall_ms_per_rep"),
        "iso_ms_drift": iso.get("wall_ms_per_rep_drift_pct"),
        "truth_j": c["truth_energy_j"],
        "truth_drift": iso.get("energy_j_per_rep_drift_pct"),
        "truth_w": c["truth_power_w"],
        "span_j": c["span_energy_j"],
        "span_err": c["span_energy_err_pct"],
        "span_w": span_w,
        "fit_w": c["fit_power_w"],
        "fit_ci": c["fit_ci_w"],
        "fit_j": c["fit_energy_j"],
        "fit_err": c["fit_energy_err_pct"],
        "figure": "fit" if use_fit else "span",
        "figure_j": fig,
        "figure_err": _err(fig, c["truth_energy_j"]),
        "busy_ms": d.get("dev_busy_ms_mean"),
        "kernel_ms": c["profiler_kernel_ms"],
        "kernel_ctx_ms": c.get("profiler_in_context_kernel_ms"),
        "kernel_ctx_union_ms": c.get("profiler_in_context_union_ms"),
    }


def phases_of(r: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(name, per_phase) of every phase a run compared, in PHASES order."""
    return [(name, per_phase(r, name)) for name in PHASES if name in r["comparison"]]


def kernel_reference(p: dict[str, Any]) -> tuple[float | None, str]:
    """The profiler figure a phase's device time is checked against, and which one it is.

    In the hinted run's own sequences (union of the device events, else their sum) when the run
    profiled them, else the phase profiled alone: a phase's kernels run at the clocks of what runs
    around it (stage_a's GEMM 13 % faster sustained than in 5 lone repetitions).
    """
    if p["kernel_ctx_union_ms"] is not None:
        return p["kernel_ctx_union_ms"], "in context, union"
    if p["kernel_ctx_ms"] is not None:
        return p["kernel_ctx_ms"], "in context, sum"
    return p["kernel_ms"], "alone"


def gpu_energy() -> str:
    out = []
    for label, r in runs().items():
        if label not in ENERGY_RUNS:
            continue
        out += [
            "",
            f"**{label}** (`{GPU_RUNS[label].relative_to(ROOT)}`, {r.get('when', '?')}; sum of span energy over the "
            f"hinted window against the counter: {_f(r.get('span_energy_sum_vs_counter_pct'), 2, pct=True)}):",
            "",
            "| phase | isolated ms / rep (drift after vs before) | truth J / rep (drift) | hinted device ms "
            "| span J (error) | span W vs isolated W | fit W (95 % CI) | fit J (error) | per-phase figure (error) |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for name, p in phases_of(r):
            ci = f"{p['fit_ci'][0]:.0f}-{p['fit_ci'][1]:.0f}" if p["fit_ci"] else "-"
            out.append(
                f"| {name} | {_f(p['iso_ms'])} ({_f(p['iso_ms_drift'], 1, True)}) | {_f(p['truth_j'], 3)} "
                f"({_f(p['truth_drift'], 1, True)}) | {_f(p['dev_ms'])} | {_f(p['span_j'], 3)} "
                f"({_f(p['span_err'], 1, True)}) | {_f(p['span_w'], 0)} vs {_f(p['truth_w'], 0)} "
                f"| {_f(p['fit_w'], 0)} ({ci}) | {_f(p['fit_j'], 3)} ({_f(p['fit_err'], 1, True)}) "
                f"| {p['figure']}: {_f(p['figure_err'], 1, True)} |"
            )
    return "\n".join(out) + "\n"


def gpu_device_time() -> str:
    out = [
        "",
        "| run | phase | device ms (interval) | busy ms (CUPTI) | profiler kernel ms: alone | in context: sum "
        "/ union | interval vs reference | busy vs reference (reference) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for label, r in runs().items():
        for name, p in phases_of(r):
            ref, which = kernel_reference(p)
            busy = _err(p["busy_ms"], ref)
            out.append(
                f"| {label} | {name} | {_f(p['dev_ms'], 3)} | {_f(p['busy_ms'], 3)} | {_f(p['kernel_ms'], 3)} "
                f"| {_f(p['kernel_ctx_ms'], 3)} / {_f(p['kernel_ctx_union_ms'], 3)} "
                f"| {_f(_err(p['dev_ms'], ref), 1, True)} "
                f"| {_f(busy, 2, True)}{f' ({which})' if busy is not None else ''} |"
            )
    return "\n".join(out) + "\n"


def busy_anchor() -> str:
    """Per busy run profiled in context: how late the device intervals sit, and the optimizer's shortfall.

    The device interval of a phase that starts on an idle GPU (``forward``, after the step's
    sync) begins one launch latency after its host begin, plus the clock anchor's error.  A
    late anchor moves every device window later against CUPTI's records; a phase with queued
    work before it and idle after it (``optimizer``, before the sync) then loses that much busy
    time at its start.  Both columns come from the recorded runs (the raw spans' device and
    host begins; busy time against the in-context profile).
    """
    out = [
        "",
        "| run | forward: device begin - host begin, median / p10 (us) | optimizer: busy time short of "
        "the in-context profile (us) |",
        "|---|---|---|",
    ]
    for label, r in runs().items():
        if not r.get("device_busy") or "optimizer" not in r.get("comparison", {}):
            continue
        p = per_phase(r, "optimizer")
        ref, which = kernel_reference(p)
        raw = GPU_RUNS[label].with_name(GPU_RUNS[label].stem + "_raw.json.xz")
        if which == "alone" or p["busy_ms"] is None or not raw.exists():
            continue
        spans = json.loads(lzma.decompress(raw.read_bytes()))["spans"]
        lag = sorted((d0 - s0) / 1e3 for n, s0, _s1, d0, *_ in spans if n == "forward" and d0)
        out.append(
            f"| {label} | {lag[len(lag) // 2]:.0f} / {lag[len(lag) // 10]:.0f} | {(ref - p['busy_ms']) * 1e3:.1f} |"
        )
    return "\n".join(out) + "\n"


def _window_s(label: str) -> float | None:
    raw = GPU_RUNS[label].with_name(GPU_RUNS[label].stem + "_raw.json.xz")
    if not raw.exists():
        return None
    w = json.loads(lzma.decompress(raw.read_bytes()))["window"]
    return (w["t1_ns"] - w["t0_ns"]) / 1e9


def three_columns() -> str:
    """OS-only (derived), hinted and truth, for the CPU alternation and the H200 phases."""
    cpu = json.loads((RESULTS / "accuracy_cpu.json").read_text())
    res = {c["config"]: c for c in cpu["results"]}
    e, i = res["edges@10Hz"]["phases"], res["interp@10Hz"]["phases"]
    hot, cold = e["hot"], e["cold"]
    tot = hot["truth_thread_cpu_ms"] + cold["truth_thread_cpu_ms"]
    mean_util = tot / (hot["spans"] * 4 + cold["spans"] * 6)  # ms of CPU per ms of wall, the window mean
    out = [
        "",
        f"CPU, issue 9's alternation (hot 4 ms spin / cold 6 ms sleep x {hot['spans']}; "
        "`benchmarks/results/accuracy_cpu.json`, daemon at 10 Hz):",
        "",
        "| per-phase thread CPU | OS-only inference (derived: window mean) | hinted, edge readings (default) "
        "| hinted, interpolated (before) | truth (program's thread clock) |",
        "|---|---|---|---|---|",
        f"| hot | {mean_util * 4 * hot['spans']:.1f} ms ({_f(_err(mean_util * 4 * hot['spans'], hot['truth_thread_cpu_ms']), 1, True)}) "
        f"| {hot['daemon_thread_cpu_ms']:.1f} ms ({_f(hot['thread_cpu_err_pct'], 2, True)}) "
        f"| {i['hot']['daemon_thread_cpu_ms']:.1f} ms ({_f(i['hot']['thread_cpu_err_pct'], 1, True)}) "
        f"| {hot['truth_thread_cpu_ms']:.1f} ms |",
        f"| cold | {mean_util * 6 * cold['spans']:.1f} ms ({100 * mean_util * 6 * cold['spans'] / tot:.0f} % of the CPU) "
        f"| {cold['daemon_thread_cpu_ms']:.1f} ms ({cold['share_of_case_cpu_pct']:.1f} %) "
        f"| {i['cold']['daemon_thread_cpu_ms']:.1f} ms ({i['cold']['share_of_case_cpu_pct']:.1f} %) "
        f"| {cold['truth_thread_cpu_ms']:.1f} ms ({cold['truth_share_of_case_cpu_pct']:.1f} %) |",
        "",
        "The OS-only column is derived, not measured: ten alternations share every 100 ms window, so no "
        "window-level method can separate them; the best it can give a phase is the window's mean "
        "utilisation times the phase's time.  The interpolated column is its own run with its own truth "
        "(accuracy.md).",
    ]
    for label, r in runs().items():
        if r.get("device_busy"):
            continue  # not default settings: CUPTI tracing changes the hinted program (accuracy.md)
        ws = _window_s(label)
        mean_w = r["counter_window_j"] / ws if ws and r.get("counter_window_j") else None
        out += [
            "",
            f"GPU energy per phase, H200, {label} (`{GPU_RUNS[label].relative_to(ROOT)}`; truth: each phase "
            "repeated alone, energy counter around >= 2 s, before and after the hinted run):",
            "",
            "| phase (device ms) | OS-only inference (derived: window mean power x device time) "
            "| hinted, per span | hinted, phase fit | hinted, per-phase figure (accuracy.md's rule) | truth (isolated) |",
            "|---|---|---|---|---|---|",
        ]
        for name, p in phases_of(r):
            if p["dev_ms"] < TARGET_MIN_MS:
                continue
            os_j = mean_w * p["dev_ms"] / 1e3 if mean_w else None
            out.append(
                f"| {name} ({p['dev_ms']:.1f}) | {_f(os_j, 3)} J ({_f(_err(os_j, p['truth_j']), 1, True)}) "
                f"| {_f(p['span_j'], 3)} J ({_f(p['span_err'], 1, True)}) "
                f"| {_f(p['fit_j'], 3)} J ({_f(p['fit_err'], 1, True)}) "
                f"| {p['figure']}: {_f(p['figure_j'], 3)} J ({_f(p['figure_err'], 1, True)}) | {_f(p['truth_j'], 3)} J |"
            )
        if mean_w:
            out.append(f"| (the hinted window's mean power: {mean_w:.0f} W over {ws:.1f} s) | | | | | |")
    return "\n".join(out) + "\n"


CPU_CONFIGS = ("edges@10Hz", "edges@2Hz", "interp@2Hz", "interp@10Hz", "interp@50Hz")


def _cpu() -> dict[str, Any]:
    return json.loads((RESULTS / "accuracy_cpu.json").read_text())


def cpu_by_length() -> str:
    """Per phase length and configuration: the busy phases' worst error, the sleep's share, the bound."""
    doc = _cpu()
    res = {c["config"]: c["phases"] for c in doc["results"]}
    cfgs = [c for c in CPU_CONFIGS if c in res]
    lengths = sorted({p["length_ms"] for p in res[cfgs[0]].values() if p["case"] != "hotcold"} - {4.0, 6.0})
    out = [
        "",
        f"`{doc['command']}` ({doc['when']}, {doc['wall_s']:.0f} s on a {doc['host']['cpus']}-core machine; "
        "[results](../benchmarks/results/accuracy_cpu.json), [plot](../benchmarks/results/accuracy_cpu.png)). "
        "Per phase length: the worst per-phase total thread-CPU error of the busy phases (spin, I/O, "
        "syscalls) / the largest share of the case's CPU given to a sleep phase / the share of spans whose "
        "stated bound held (worst phase):",
        "",
        "| phase length | " + " | ".join(cfgs) + " |",
        "|---|" + "---|" * len(cfgs),
    ]
    for L in lengths:
        cells = []
        for c in cfgs:
            ph = [p for p in res[c].values() if p["length_ms"] == L and p["case"] != "hotcold"]
            busy = [abs(p["thread_cpu_err_pct"]) for p in ph if p["thread_cpu_err_pct"] is not None]
            rest = [
                p["share_of_case_cpu_pct"] for p in ph if p["mix"] == "sleep" and p["share_of_case_cpu_pct"] is not None
            ]
            held = [p["within_stated_bound_pct"] for p in ph if p["within_stated_bound_pct"] is not None]
            cells.append(
                f"{max(busy):.1f} % / {max(rest):.1f} % / {min(held):.0f} %" if busy and rest and held else "-"
            )
        out.append(f"| {L:g} ms | " + " | ".join(cells) + " |")
    e = res["edges@10Hz"]
    truth_rest = {L: max(p["truth_share_of_case_cpu_pct"] for p in e.values() if p["mix"] == "sleep"
                         and p["length_ms"] == L and p["case"] != "hotcold") for L in lengths}  # fmt: skip
    med = {L: max(p["span_median_abs_err_us"] for p in e.values() if p["length_ms"] == L and p["mix"] != "sleep"
                  and p["case"] != "hotcold") for L in lengths}  # fmt: skip
    proc = {L: max(abs(p["proc_cpu_err_pct"]) for p in e.values() if p["length_ms"] == L
                   and p["proc_cpu_err_pct"] is not None) for L in lengths}  # fmt: skip
    ctx = max(abs(p["daemon_ctx_vol"] - p["truth_ctx_vol"]) for p in e.values())
    r10 = next(c for c in doc["results"] if c["config"] == "edges@10Hz")
    out += [
        "",
        "The sleep phase's true share (edges@10Hz's truth): "
        + ", ".join(f"{truth_rest[L]:.1f} % ({L:g} ms)" for L in lengths)
        + ".  Edges @ 10 Hz, per length: process CPU per phase within "
        + ", ".join(f"{proc[L]:.1f} %" for L in lengths)
        + f"; voluntary context switches per phase at most {ctx:g} from the program's own getrusage count; "
        "per-span median absolute thread-CPU difference against the body's reading (worst busy mix) "
        + ", ".join(f"{med[L]:.1f} us" for L in lengths)
        + f" (the body's clocks do not see the CPU between the span's edges and the body).  {r10['spans_matched']} of {r10['spans_matched'] + r10['spans_unmatched']} spans matched a truth "
        "row by start time.",
    ]
    return "\n".join(out) + "\n"


def cpu_alternation() -> str:
    doc = _cpu()
    res = {c["config"]: c["phases"] for c in doc["results"]}
    e, i = res["edges@10Hz"], res["interp@10Hz"]
    e2 = res.get("edges@2Hz")
    out = [
        "",
        "| | truth (thread clock) | hinted, edge readings (default, 10 Hz) | hinted, interpolation (before, 10 Hz) |",
        "|---|---|---|---|",
        f"| hot: thread CPU | {e['hot']['truth_thread_cpu_ms']:.1f} ms | {e['hot']['daemon_thread_cpu_ms']:.1f} ms "
        f"({_f(e['hot']['thread_cpu_err_pct'], 2, True)}) | {i['hot']['daemon_thread_cpu_ms']:.1f} ms of "
        f"{i['hot']['truth_thread_cpu_ms']:.1f} ms ({_f(i['hot']['thread_cpu_err_pct'], 1, True)}) |",
        f"| cold: thread CPU | {e['cold']['truth_thread_cpu_ms']:.1f} ms ({e['cold']['truth_share_of_case_cpu_pct']:.1f} % "
        f"of the case) | {e['cold']['daemon_thread_cpu_ms']:.1f} ms ({e['cold']['share_of_case_cpu_pct']:.1f} %) "
        f"| {i['cold']['daemon_thread_cpu_ms']:.1f} ms ({i['cold']['share_of_case_cpu_pct']:.1f} %) |",
        f"| cold: voluntary context switches | {e['cold']['truth_ctx_vol']} | {e['cold']['daemon_ctx_vol']:g} "
        f"| {i['cold']['daemon_ctx_vol']:g} of {i['cold']['truth_ctx_vol']} |",
        f"| spans whose stated bound held (hot / cold) | | {e['hot']['within_stated_bound_pct']:.0f} % / "
        f"{e['cold']['within_stated_bound_pct']:.0f} % | {i['hot']['within_stated_bound_pct']:.0f} % / "
        f"{i['cold']['within_stated_bound_pct']:.0f} % |",
        "",
        "(The interpolation column is its own run, hence its own truth.)"
        + (
            f"  At 2 Hz with edge readings: hot {_f(e2['hot']['thread_cpu_err_pct'], 2, True)}, cold "
            f"{e2['cold']['share_of_case_cpu_pct']:.1f} % of the CPU."
            if e2
            else ""
        ),
    ]
    return "\n".join(out) + "\n"


def cupti_checks() -> str:
    """benchmarks/gpu/cupti_check.py on the H200, one row per version of the tracer."""
    out = [
        "",
        "| tracer version (file) | busy vs profiler union, 20 spans: median / max error, within 2 % "
        "| fed pipeline: busy share of the interval, median / p10 | records lost (bad) | CUPTI clock rate "
        "| launch-bound step, tracing on / off |",
        "|---|---|---|---|---|---|",
    ]
    for label, path in CUPTI_RUNS.items():
        if not path.exists():
            continue
        r = json.loads(path.read_text())
        parts = r["parts"]
        a, pipe, cost = parts.get("accuracy", {}), parts.get("pipeline", {}), parts.get("cost", {})
        st = parts.get("tracer", {}).get("tracer_stats", {})
        acc = (
            f"{100 * a['median_abs_rel_err']:.2f} % / {100 * a['max_abs_rel_err']:.2f} %, {a['within_2pct']} of {a['compared']}"
            if a.get("compared")
            else "not compared (the profiler's clusters did not match the spans)"
        )
        share = (
            f"{pipe['busy_share_median']:.3f} / {pipe['busy_share_p10']:.3f}"
            if pipe.get("busy_share_p10") is not None
            else (f"{pipe['busy_share_median']:.3f} / - (launch-bound pattern)" if pipe else "-")
        )
        bad = pipe.get("tracer_bad_records", st.get("bad_records"))
        rate = st.get("clock_rate")
        c = (
            f"x{cost['on_over_off']:.3f} ({cost['per_kernel_us']:.2f} us per kernel)"
            if cost.get("on_over_off")
            else "-"
        )
        out.append(
            f"| {label} (`{path.relative_to(ROOT)}`) | {acc} | {share} | {bad if bad is not None else '-'} "
            f"| {f'{rate:.4f}' if rate else 'not measured (offset only)'} | {c} |"
        )
    refit = R4 / "cupti_offset_only" / "refit.json"
    if refit.exists():
        f = json.loads(refit.read_text())
        out += [
            "",
            f"The offset-only recording re-mapped offline with a fitted rate of {f['fitted_rate']:.3f} "
            f"(`benchmarks/gpu/cupti_refit.py`, `{refit.relative_to(ROOT)}`): every span within "
            f"{f['max_abs_busy_err_pct_refit']:.2f} % of the profiler (recorded: up to "
            f"{f['max_abs_busy_err_pct_recorded']:.0f} %).",
        ]
    return "\n".join(out) + "\n"


def device_cost() -> str:
    """bench_generate_overhead.py --device on|busy: the hinted runs' slowdown, interleaved with baselines."""
    out = [
        "",
        "| hinted phases | CUPTI buffers walked in | program (file) | slowdown, median (95 % CI) "
        "| hinted / baseline, median | runs | every event delivered | anchor half-width at the end (us) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    programs = {
        "generate": ("hinted_vs_none", "s", 1.0, 3, "HF generate (GPT-2-medium shape, 128 tokens)"),
        "launch": ("hinted_vs_unhinted", "us/step", 1e6, 0, "launch-bound loop (40 tiny kernels + sync a step)"),
    }
    for path in DEVICE_COST_RUNS:
        if not path.exists():
            continue
        r = json.loads(path.read_text())
        part = "generate" if "generate" in r else "launch"
        key, unit, scale, nd, label = programs[part]
        g = r[part][key]
        hs, bs = g["hinted_s"]["median"] * scale, g["baseline_s"]["median"] * scale
        dev = r["delivery"]["client_stats_end"]["device"]
        busy = dev.get("busy")
        what = "device-timed + CUPTI busy time" if busy else "device-timed"
        walk = "-" if not busy else {"c": "C (_cbusy)", None: "Python"}.get(busy.get("parser"), "Python")
        out.append(
            f"| {what} | {walk} | {label} (`{path.relative_to(ROOT)}`) | {g['slowdown_pct']:+.1f} % "
            f"({g['ci95_pct'][0]:+.1f} to {g['ci95_pct'][1]:+.1f} %) | {hs:.{nd}f} / {bs:.{nd}f} {unit} "
            f"| {g['runs']} | {'yes' if r['summary']['all_delivered'] else 'no'} | {dev['anchor_err_ns'] / 1000:.1f} |"
        )
    return "\n".join(out) + "\n"


PLOT = R4 / "accuracy_gpu.png"


def gpu_plot(path: Path = PLOT) -> bool:
    """Energy error per phase against its device time, per span and by the rule, every run; busy time too."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot")
        return False
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    markers = ("o", "s", "^", "v", "D", "P", "X", "*", "h")
    for (label, r), m in zip(runs().items(), markers, strict=False):
        pts = [p | {"name": n} for n, p in phases_of(r)]
        short = label.split(" (")[0]
        if label in ENERGY_RUNS:
            axes[0].scatter([p["dev_ms"] for p in pts], [p["span_err"] for p in pts], marker=m, facecolors="none",
                            edgecolors="C0", label=f"{short}: per span")  # fmt: skip
            axes[0].scatter([p["dev_ms"] for p in pts], [p["figure_err"] for p in pts], marker=m, color="C1",
                            label=f"{short}: per-phase figure")  # fmt: skip
            for p in pts:
                axes[0].annotate(p["name"], (p["dev_ms"], p["figure_err"]), fontsize=6, alpha=0.7)
        busy = [(p["dev_ms"], 100 * (p["busy_ms"] / kernel_reference(p)[0] - 1)) for p in pts
                if p["busy_ms"] is not None]  # fmt: skip
        iv = [(p["dev_ms"], 100 * (p["dev_ms"] / kernel_reference(p)[0] - 1)) for p in pts]
        axes[1].scatter(
            *zip(*iv, strict=True), marker=m, facecolors="none", edgecolors="C2", label=f"{short}: interval"
        )
        if busy:
            axes[1].scatter(*zip(*busy, strict=True), marker=m, color="C3", label=f"{short}: CUPTI busy")
    axes[0].axhspan(-10, 10, color="grey", alpha=0.15)
    axes[0].axvline(TARGET_MIN_MS, color="grey", ls="--", lw=0.8)
    axes[0].set(xscale="log", xlabel="phase's mean device time (ms)", ylabel="energy error vs isolated truth (%)",
                title="H200: GPU energy per phase (target +-10 % from 5 ms)", ylim=(-100, 120))  # fmt: skip
    axes[1].axhspan(-2, 2, color="grey", alpha=0.15)
    axes[1].set(xscale="log", yscale="symlog", xlabel="phase's mean device time (ms)",
                ylabel="vs profiler kernel time (%)", title="device time per phase (target +-2 %)")  # fmt: skip
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return True


def blocks() -> dict[Path, dict[str, str]]:
    """Every generated block, by the document it lives in (main writes them, a test checks them)."""
    return {
        ROOT / "docs" / "accuracy.md": {
            "cpu-by-length": cpu_by_length(),
            "cpu-alternation": cpu_alternation(),
            "gpu-energy": gpu_energy(),
            "gpu-device-time": gpu_device_time(),
            "busy-anchor": busy_anchor(),
            "cupti-checks": cupti_checks(),
            "device-cost": device_cost(),
        },
        ROOT / "docs" / "evaluation.md": {"hinted-vs-truth": three_columns()},
    }


def main() -> int:
    import sys

    sys.path.insert(0, str(ROOT / "daemon"))
    from gpuos_hintd.evaluate import report

    for doc, b in blocks().items():
        doc.write_text(report.replace_generated(doc.read_text(), b))
        print(f"regenerated the blocks of {doc.relative_to(ROOT)}")
    if gpu_plot():
        print(f"plotted {PLOT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
