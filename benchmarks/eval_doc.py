"""The generated blocks of docs/evaluation.md, from the recorded results (never from prose).

Each function returns the Markdown body of one ``<!-- BEGIN GENERATED: name -->`` block;
``report.replace_generated`` puts them in place and leaves everything else alone.

    .venv/bin/python benchmarks/eval_doc.py      # re-render the blocks from benchmarks/results/ only
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
DOC = ROOT / "docs" / "evaluation.md"
LV = {"top": "top-level phase", "leaf": "innermost phase", "class": "workload class"}


def ci(a: dict[str, Any] | None, pct: bool = False) -> str:
    if not a:
        return "-"
    f = (lambda x: f"{100 * x:.1f}%") if pct else (lambda x: f"{x:.3f}")
    return f"{f(a['mean'])} [{f(a['lo'])}, {f(a['hi'])}]"


def _h(x: float | None, pct: bool = False) -> str:
    if x is None:
        return "-"
    return f"{100 * x:.1f}%" if pct else f"{x:.3f}"


def headline(res: dict[str, Any]) -> str:
    rates = list(res["cpu"])
    g = res["h100_headline"]
    head = [
        "",
        *[f"CPU {r} Hz (n = {res['cpu'][r]['seeds']} seeds)" for r in rates],
        "H100 recording, 20 Hz (one draw)",
    ]
    rows = []

    def row(label: str, key: str, pct: bool = False) -> None:
        rows.append([label, *[ci(res["cpu"][r]["aggregate"].get(key), pct) for r in rates], _h(g.get(key), pct)])

    def diff_row(label: str, a: str, b: str) -> None:
        from gpuos_hintd.evaluate.stats import bootstrap_ci

        cells = [label]
        for r in rates:
            d = [h[a] - h[b] for h in res["cpu"][r]["per_seed"] if h.get(a) is not None and h.get(b) is not None]
            m, lo, hi = bootstrap_ci(d)
            cells.append(f"{m:+.3f} [{lo:+.3f}, {hi:+.3f}]" if d else "-")
        cells.append(f"{g[a] - g[b]:+.3f}" if g.get(a) is not None and g.get(b) is not None else "-")
        rows.append(cells)

    for lv in ("top", "leaf", "class"):
        row(f"boundary F1, {LV[lv]}: OS-only PELT", f"boundary_f1.{lv}.os_only")
        diff_row(
            f"... OS-only minus random (paired by seed), {LV[lv]}",
            f"boundary_f1.{lv}.os_only",
            f"boundary_f1.{lv}.random",
        )
        row(f"boundary F1, {LV[lv]}: ruptures PELT (same cost, penalty)", f"boundary_f1.{lv}.ruptures_pelt")
        row(f"boundary F1, {LV[lv]}: random, same count", f"boundary_f1.{lv}.random")
    for lv in ("top", "leaf", "class"):
        row(f"window accuracy, {LV[lv]}: tree + segments", f"accuracy.{lv}.decision_tree+segments")
        row(f"window accuracy, {LV[lv]}: scikit-learn tree", f"accuracy.{lv}.sklearn_decision_tree")
        row(f"window accuracy, {LV[lv]}: nearest centroid", f"accuracy.{lv}.nearest_centroid")
        row(f"window accuracy, {LV[lv]}: majority of the same program", f"accuracy.{lv}.majority_per_workload")
        row(
            f"best OS-only minus same-program majority, {LV[lv]}",
            f"accuracy.{lv}.best_os_only_minus_same_program_majority",
        )
    row(
        "CPU time misattributed, top level: true labels per window",
        "misattributed.top.cpu.true_labels_per_window",
        True,
    )
    row("CPU time misattributed, top level: OS-only", "misattributed.top.cpu.os_only", True)
    row(
        "GPU energy misattributed, top level: true labels per window",
        "misattributed.top.energy.true_labels_per_window",
        True,
    )
    row("GPU energy misattributed, top level: OS-only", "misattributed.top.energy.os_only", True)
    row(
        "spans shorter than half a sample period (share of spans)",
        "spans_shorter_than_half_a_period.share_of_spans",
        True,
    )
    row("... their share of span time", "spans_shorter_than_half_a_period.share_of_time", True)
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    lines += [
        "",
        f"Mean over seeds [percentile bootstrap 95 % CI over seeds, 2000 resamples]; made by `{_cmd(res)}` "
        f"in {res['elapsed_s']:.0f} s on {res['host']['cpus']} shared CPUs (`benchmarks/results/eval_cpu.json`).  The H100 column "
        "is the recorded store evaluated once (one run per workload, blocked 3-fold): no CI can be given for it.",
    ]
    return "\n".join(lines)


def _cmd(res: dict[str, Any]) -> str:
    return "nice -n 19 .venv/bin/python benchmarks/eval_cpu.py" + ("".join(f" {a}" for a in res.get("argv", [])))


def no_hints(res: dict[str, Any]) -> str:
    first = next((r for r in res["cpu"].values() if r.get("no_hints")), next(iter(res["cpu"].values())))
    lines = [
        "| workload | seconds (hinted / unhinted) | change points/s | medians per window (hinted / unhinted) |",
        "|---|---|---|---|",
    ]
    keep = ("cpu_user_ns", "threads_running", "io_syscr", "threads_sync_wait", "minflt")
    for w in first.get("no_hints", []):
        ms = [m for m in w["metrics"] if m["metric"] in keep]
        lines.append(
            f"| {w['workload']} | {w['hinted_seconds']} / {w['unhinted_seconds']} | "
            f"{w['hinted_change_points_per_s']} / {w['unhinted_change_points_per_s']} | "
            + "; ".join(f"{m['metric']} {m['hinted_p50']:.3g} / {m['unhinted_p50']:.3g}" for m in ms)
            + " |"
        )
    lines += ["", f"Seed 0 at {first['sample_hz']:g} Hz, one pair per workload (a single draw: no CI)."]
    return "\n".join(lines)


def detectable(res: dict[str, Any], periods: dict[str, Any] | None) -> str:
    """Per signal: predicted shortest fully detectable phase vs the measured recall-by-length curve."""
    rates = list(res["cpu"])
    counters = (periods or {}).get("metrics", {})
    sigs: dict[str, float] = {}
    for r in rates:
        for name, curve in res["cpu"][r]["per_signal_recall_by_length_ms"].items():
            long = [c["recall"] for c in curve if c["lo_ms"] >= 400]
            sigs[name] = max(sigs.get(name, 0.0), max(long) if long else 0.0)
    chosen = [s for s, v in sorted(sigs.items(), key=lambda kv: -kv[1]) if v >= 0.5][:8]
    head = ["signal", "update period C (ms)"]
    for r in rates:
        head += [f"{r} Hz: predicted 2 max(T, C)", f"{r} Hz: measured recall <50 ms / 100-200 / 400-800 ms"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for s in chosen:
        c = (counters.get(s) or {}).get("median_change_interval_ms")
        cells = [f"`{s}`", "-" if c is None else f"{c:.1f}"]
        for r in rates:
            t_ms = 1000.0 / float(r)
            pred = 2 * max(t_ms, c or 0.0)
            curve = {c_["lo_ms"]: c_ for c_ in res["cpu"][r]["per_signal_recall_by_length_ms"].get(s, [])}

            def rec(*los: float, curve: dict = curve) -> str:
                pts = [curve[lo] for lo in los if lo in curve]
                if not pts:
                    return "-"
                n = sum(p["boundaries"] for p in pts)
                r = sum(p["recall"] * p["boundaries"] for p in pts) / n
                if all("chance_recall" in p for p in pts):
                    ch = sum(p["chance_recall"] * p["boundaries"] for p in pts) / n
                    return f"{r:.2f} ({ch:.2f}) n={n}"
                return f"{r:.2f} n={n}"

            cells += [f"{pred:.0f} ms", f"{rec(0, 25)} / {rec(100)} / {rec(400)}"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "Recall of top-level boundaries found by one-channel PELT (beta 1, +-2 periods) on that signal alone, "
        "by the length of the shorter adjacent phase, pooled over all seeds of a rate (in brackets: recall of the "
        "same number of boundaries placed at random sample times - chance); update period C = median "
        "interval between changes under load (`benchmarks/results/counter_periods_cpu.json`, "
        "`benchmarks/counter_periods.py`).  Signals shown: those reaching recall >= 0.5 on phases >= 400 ms.",
    ]
    return "\n".join(lines)


def phase2_block(path: Path, label: str) -> str:
    if not path.exists():
        return f"Not run yet: no `{path.relative_to(ROOT)}`."
    doc = json.loads(path.read_text())
    res = doc["results"]
    from gpuos_hintd.evaluate import phase2

    rel = path.relative_to(ROOT)
    chk = "; ".join(
        f"{c}: {v['levels']} levels held"
        + (
            f", {v['daemon_spans_phase2']} spans stored by the daemon, {v['client_dropped']} hint events dropped"
            if v.get("daemon_spans_phase2") is not None
            else " (no daemon, no client)"
        )
        for c, v in doc["checks"].items()
    )
    counts: dict[str, dict[str, int]] = {}
    for c, r in res.items():
        for k in r.values():
            for e in k["signals"].values():
                counts.setdefault(c, {}).setdefault(e["class"], 0)
                counts[c][e["class"]] += 1
    detail = []
    for c, r in res.items():
        for knob, k in r.items():
            for sig, e in k["signals"].items():
                if e["class"] == "sensitive":
                    lv = ", ".join(
                        f"{x['level']}: {x['mean']:.3g} [{x['lo']:.3g}, {x['hi']:.3g}]" for x in e["per_level"]
                    )
                    detail.append(f"| {c} | {knob} | `{sig}` | {lv} |")
    if detail:
        detail = ["| condition | knob | signal | mean per level [95 % CI] (rates per second, gauges as counts) |",
                  "|---|---|---|---|", *detail]  # fmt: skip
    tally = "; ".join(f"{c}: " + ", ".join(f"{n} {k}" for k, n in sorted(v.items())) for c, v in counts.items())
    return "\n".join(
        [
            f"{label}: {doc['repeats']} repeats x every level, {doc['hold_s']} s per level at {doc['hz']:g} Hz "
            f"({doc['elapsed_s']:.0f} s).  Samplers: {', '.join(doc['samplers'])}; not running: "
            + ", ".join(f"{k} ({v})" for k, v in doc["samplers_not_running"].items())
            + f".  Delivery: {chk}.  Signal x knob cells: {tally}.",
            "",
            phase2.class_table(res),
            "",
            "The sensitive cells, level by level:",
            "",
            *detail,
            "",
            f"Per-level means with 95 % CIs: `{rel.with_suffix('.md')}`; plot `{rel.with_suffix('.png')}`; "
            f"raw samples `{rel.parent / 'phase2_raw.json.gz'}`.",
        ]
    )


def host_device(res: dict[str, Any]) -> str:
    rows = res.get("h100_host_vs_device")
    if rows is None:  # straight from the recorded store's spans (no evaluation needed)
        import sqlite3

        from gpuos_hintd.evaluate import breakdown
        from gpuos_hintd.evaluate.dataset import load_runs

        conn = sqlite3.connect(f"file:{ROOT / 'tests/data/eval/h100_run.db'}?mode=ro", uri=True)
        rows = breakdown.host_vs_device([s for r in load_runs(conn) for s in r.spans])
        conn.close()
    lines = [
        "| phase | spans | host ms (median) | device ms (median) | device end lag ms (median / max) |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['phase']} | {r['spans']} | {r['host_ms_median']} | {r['device_ms_median']} | "
            f"{r['device_end_lag_ms_median']} / {r['device_end_lag_ms_max']} |"
        )
    return "\n".join([*lines, "", "From `tests/data/eval/h100_run.db` (spans recorded with `--device-timing`)."])


def async_block(path: Path) -> str:
    if not path.exists():
        return f"Not run yet: no `{path.relative_to(ROOT)}` (made by `benchmarks/gpu/run_phase2.sh`)."
    d = json.loads(path.read_text())
    s = d["summary_mean_ci95"]
    lines = ["| quantity | mean [95 % CI] over trials |", "|---|---|"]
    lines += [f"| {k} | {v['mean']:.4g} [{v['lo']:.4g}, {v['hi']:.4g}] |" for k, v in s.items()]
    lines += ["", f"{d['gpu']}: {len(d['trials'])} trials of {d['kernels']} matmuls {d['n']}^2 enqueued without a sync, "
              f"then {d['host_work_s']} s of host work (`{path.relative_to(ROOT)}`)."]  # fmt: skip
    return "\n".join(lines)


def real_vs_decimated(res: dict[str, Any], path: Path) -> str:
    """The 10 Hz column from 20 Hz samples decimated by 2, beside a daemon really sampling at 10 Hz."""
    if not path.exists():
        return f"Not run yet: no `{path.relative_to(ROOT)}`."
    real = json.loads(path.read_text())
    dec, got = res["cpu"].get("10"), real["cpu"].get("10")
    if not dec or not got:
        return "No 10 Hz column in one of the results."
    keys = [
        ("boundary F1, top-level: OS-only", "boundary_f1.top.os_only", False),
        ("boundary F1, top-level: random", "boundary_f1.top.random", False),
        ("boundary F1, innermost: OS-only", "boundary_f1.leaf.os_only", False),
        ("window accuracy, top-level: tree + segments", "accuracy.top.decision_tree+segments", False),
        ("window accuracy, top-level: nearest centroid", "accuracy.top.nearest_centroid", False),
        ("window accuracy, top-level: majority of the same program", "accuracy.top.majority_per_workload", False),
        ("CPU time misattributed, top level: OS-only", "misattributed.top.cpu.os_only", True),
        ("spans shorter than half a period", "spans_shorter_than_half_a_period.share_of_spans", True),
    ]
    lines = [
        f"| | 10 Hz from 20 Hz, decimated (n = {dec['seeds']}) | daemon at 10 Hz (n = {got['seeds']}) |",
        "|---|---|---|",
    ]
    lines += [f"| {lab} | {ci(dec['aggregate'].get(k), p)} | {ci(got['aggregate'].get(k), p)} |" for lab, k, p in keys]
    lines += ["", f"Separate runs of the same seeded configurations (`{path.relative_to(ROOT)}`, made by "
              f"`nice -n 19 .venv/bin/python benchmarks/eval_cpu.py --seeds 10 --base-hz 10 --rates 10 --out {path.relative_to(ROOT)}`)."]  # fmt: skip
    return "\n".join(lines)


def _boot(xs: list[float]) -> str:
    """mean [95 % bootstrap CI over runs], or the single value with n = 1 said."""
    import sys

    sys.path.insert(0, str(ROOT / "daemon"))
    from gpuos_hintd.evaluate.stats import bootstrap_ci

    if not xs:
        return "-"
    if len(xs) == 1:
        return f"{xs[0]:.3f} (n = 1, no CI)"
    m, lo, hi = bootstrap_ci(xs)
    return f"{m:.3f} [{lo:.3f}, {hi:.3f}] (n = {len(xs)})"


def real_programs(files: dict[str, Path]) -> str:
    """OS-only inference on real programs' stores (H200), beside what the hints give."""
    rows: dict[str, list[str]] = {
        "hinted runs (processes) in the store": [],
        "sample period (median)": [],
        "top-level boundaries: OS-only F1, per run": [],
        "top-level boundaries: random F1 (same count), per run": [],
        "recall of boundaries between phases shorter than half a period": [],
        "same, innermost phases (decode steps, forward/backward/...)": [],
        "recall of boundaries between phases of >= 2 periods": [],
        "window labels, top-level: decision tree accuracy (out of sample)": [],
        "window labels, top-level: majority accuracy": [],
        "energy misattributed, top level: OS-only (mean over runs)": [],
        "energy misattributed, top level: best fixed windows (oracle)": [],
    }
    for path in files.values():
        r = json.loads(path.read_text())
        b = r["boundaries"]["top"]
        per = b.get("per_run", [])
        scale = b["os_only"] if "recall_by_scale" not in b else b
        by = {s["bucket"]: s for s in scale.get("recall_by_scale", [])}
        short = by.get("< 0.5 period")
        longer = [s for k, s in by.items() if k in ("2-5 periods", "5-20 periods", ">= 20 periods")]
        lab = r["labelling"]["top"]
        att = r["attribution"]["top"]["summary_mean_over_runs"]["energy"]
        runs = r["dataset"]["runs"]
        rows["hinted runs (processes) in the store"].append(str(len(runs)))
        periods = sorted(x["period_ms"] for x in runs)
        rows["sample period (median)"].append(f"{periods[len(periods) // 2]:.1f} ms")
        rows["top-level boundaries: OS-only F1, per run"].append(_boot([x["f1"] for x in per]))
        rows["top-level boundaries: random F1 (same count), per run"].append(_boot([x["random_f1"] for x in per]))
        rows["recall of boundaries between phases shorter than half a period"].append(
            f"{short['found']}/{short['boundaries']}" if short else "-"
        )
        leaf = {s["bucket"]: s for s in r["boundaries"]["leaf"].get("recall_by_scale", [])}.get("< 0.5 period")
        rows["same, innermost phases (decode steps, forward/backward/...)"].append(
            f"{leaf['found']}/{leaf['boundaries']}" if leaf else "-"
        )
        n_l, f_l = sum(s["boundaries"] for s in longer), sum(s["found"] for s in longer)
        rows["recall of boundaries between phases of >= 2 periods"].append(f"{f_l}/{n_l}" if n_l else "-")
        rows["window labels, top-level: decision tree accuracy (out of sample)"].append(
            f"{lab['decision_tree']['accuracy']:.3f} ({lab['decision_tree']['n']} windows)"
        )
        rows["window labels, top-level: majority accuracy"].append(f"{lab['majority']['accuracy']:.3f}")
        rows["energy misattributed, top level: OS-only (mean over runs)"].append(
            f"{100 * att['misattributed_share_os_only']:.1f}%"
        )
        rows["energy misattributed, top level: best fixed windows (oracle)"].append(
            f"{100 * att['misattributed_share_window_oracle']:.1f}%"
        )
    head = "| | " + " | ".join(files) + " |"
    out = [head, "|---|" + "---|" * len(files)]
    out += [f"| {k} | " + " | ".join(v) + " |" for k, v in rows.items()]
    out += [
        "",
        "Stores recorded on one NVIDIA H200 by `benchmarks/gpu/run_batch.sh evaluation-stores` (daemon at its "
        "defaults except `store_samples_hz = 0`, every 100 ms tick stored), committed xz-compressed in "
        "`benchmarks/results/h200/round3/stores/`; each report made by `gpuos-hintctl evaluate --store "
        "STORE --json ...` (`benchmarks/results/h200/round3/eval_*.json`).  Runs are processes: the "
        "training store's runs include its DataLoader workers.",
    ]
    return "\n".join(out)


def blocks(res: dict[str, Any] | None = None) -> dict[str, str]:
    res = res or json.loads((RESULTS / "eval_cpu.json").read_text())
    periods_file = RESULTS / "counter_periods_cpu.json"
    periods = json.loads(periods_file.read_text()) if periods_file.exists() else None
    return {
        "headline": headline(res),
        "no-hints": no_hints(res),
        "detectable": detectable(res, periods),
        "phase2-cpu": phase2_block(RESULTS / "phase2_cpu" / "phase2.json", "CPU (QueueDevice analogue)"),
        "phase2-cpu-ebpf": phase2_block(
            RESULTS / "phase2_cpu_ebpf" / "phase2.json", "CPU, no hints, with the eBPF syscall counts"
        ),
        "phase2-gpu": phase2_block(RESULTS / "phase2_h200" / "phase2.json", "H200 (CuPy)"),
        "h100-host-device": host_device(res),
        "real-10hz": real_vs_decimated(res, RESULTS / "eval_cpu_real10hz.json"),
        "async-gpu": async_block(RESULTS / "phase2_h200" / "async_pipeline.json"),
        "real-programs": real_programs(
            {
                "HF generate (Llama, 16 layers; 24 requests x 64 tokens)": RESULTS
                / "h200/round3/eval_generate_10hz.json",
                "ResNet-18 training, 6 DataLoader workers (3 gpuos-run runs)": RESULTS
                / "h200/round3/eval_train_10hz.json",
            }
        ),
    }


def main() -> int:
    import sys

    sys.path.insert(0, str(ROOT / "daemon"))
    from gpuos_hintd.evaluate import report

    DOC.write_text(report.replace_generated(DOC.read_text(), blocks()))
    print(f"regenerated the blocks of {DOC.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
