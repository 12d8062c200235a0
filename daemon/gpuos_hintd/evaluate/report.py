"""The evaluation result as Markdown tables (JSON is the result dict itself)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

LEVEL_TITLES = {"top": "top-level phase", "leaf": "innermost phase", "class": "workload class"}


def to_json(result: dict[str, Any]) -> str:
    return json.dumps(result, indent=2, default=str) + "\n"


def _table(head: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    out = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    out += ["| " + " | ".join("-" if c is None else str(c) for c in r) + " |" for r in rows]
    return out


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def markdown(result: dict[str, Any], title: str = "OS-only phase inference vs hints") -> str:
    if "error" in result:
        return f"## {title}\n\n{result['error']}\n"
    ds = result["dataset"]
    lines = [f"## {title}", ""]
    if result.get("store"):
        lines += [f"Store: `{result['store']}`", ""]
    lines += [
        f"{len(ds['runs'])} hinted runs, {ds['windows']} windows at a median sample period of "
        f"{ds['sample_period_ms']} ms; boundary tolerance +-{ds['tolerance_ms']} ms; split: {ds['split']}.",
        "",
    ]
    lines += _table(
        ["run", "workload", "windows", "spans", "seconds"],
        [[r["run"], r["workload"], r["windows"], r["spans"], r["duration_s"]] for r in ds["runs"]],
    )
    lines += ["", "### Phase boundaries (OS-only change points vs hinted boundaries)", ""]
    rows = []
    for level, b in result["boundaries"].items():
        o = b["os_only"]
        rows.append(
            [
                LEVEL_TITLES[level],
                o["true"],
                o["predicted"],
                o["precision"],
                o["recall"],
                o["f1"],
                b["random_same_count_f1_mean"],
                max(v["f1"] for v in b["sweep_in_sample"].values()),
            ]
        )
    lines += _table(
        ["labels", "true", "found", "precision", "recall", "F1", "random F1", "best F1 (in-sample beta)"], rows
    )
    lines += ["", "Boundary recall by the length of the shorter adjacent phase (in sample periods):", ""]
    rows = []
    for level, b in result["boundaries"].items():
        for r in b["recall_by_scale"]:
            rows.append([LEVEL_TITLES[level], r["bucket"], r["boundaries"], r["found"], r["recall"]])
    lines += _table(["labels", "phase length", "boundaries", "found", "recall"], rows)
    lines += ["", "### Labelling windows (out of sample)", ""]
    rows = []
    for level, lab in result["labelling"].items():
        for model in (
            "majority",
            "majority_per_workload",
            "nearest_centroid",
            "decision_tree",
            "decision_tree+segments",
        ):
            s = lab[model]
            rows.append([LEVEL_TITLES[level], model, s["n"], s["accuracy"], s["macro_f1"]])
    lines += _table(["labels", "model", "windows", "accuracy", "macro F1"], rows)
    for level, lab in result["labelling"].items():
        s = lab["decision_tree+segments"]
        lines += ["", f"Per-class F1, decision tree + segments, {LEVEL_TITLES[level]}:", ""]
        lines += _table(
            ["class", "support", "precision", "recall", "F1"],
            [[k, v["support"], v["precision"], v["recall"], v["f1"]] for k, v in s["per_class"].items()],
        )
        cm = s["confusion"]
        lines += ["", "Confusion (rows truth, columns prediction):", ""]
        lines += _table(
            ["", *cm["labels"]], [[lab_, *row] for lab_, row in zip(cm["labels"], cm["matrix"], strict=True)]
        )
    lines += ["", "### Attribution: hinted spans vs OS-only inference", ""]
    rows = []
    for level, a in result["attribution"].items():
        for what, s in a["summary_mean_over_runs"].items():
            rows.append(
                [
                    LEVEL_TITLES[level],
                    what,
                    _pct(s["misattributed_share_window_oracle"]),
                    _pct(s["misattributed_share_os_only"]),
                ]
            )
    lines += _table(["phases", "quantity", "misattributed: true labels per window", "misattributed: OS-only"], rows)
    lines += ["", "Per phase, top level (CPU seconds; energy J):", ""]
    rows = []
    for run in result["attribution"]["top"]["per_run"]:
        for what, scale in (("cpu", 1e9), ("energy", 1e3)):
            if what not in run:
                continue
            for p in run[what]["phases"]:
                if not (p["hinted"] or p["os_only"]):
                    continue
                rows.append(
                    [
                        run["run"],
                        what,
                        p["phase"],
                        f"{p['hinted'] / scale:.3f}",
                        f"{p['window_oracle'] / scale:.3f}",
                        f"{p['os_only'] / scale:.3f}",
                        _pct(p["os_only_rel_err"]),
                    ]
                )
    lines += _table(["run", "quantity", "phase", "hinted", "true labels/window", "OS-only", "OS-only error"], rows)
    bd = result["breakdown"]
    lines += ["", "### Where inference breaks down", "", "Span durations (all depths) in sample periods:", ""]
    lines += _table(
        ["duration", "spans", "share of spans", "share of span time"],
        [[r["bucket"], r["spans"], _pct(r["span_share"]), _pct(r["time_share"])] for r in bd["span_durations"]],
    )
    if bd["host_vs_device"]:
        lines += ["", "Host vs device intervals (spans with device timing):", ""]
        lines += _table(
            ["phase", "spans", "host ms (median)", "device ms (median)", "device end lag ms (median / max)"],
            [
                [
                    r["phase"],
                    r["spans"],
                    r["host_ms_median"],
                    r["device_ms_median"],
                    f"{r['device_end_lag_ms_median']} / {r['device_end_lag_ms_max']}",
                ]
                for r in bd["host_vs_device"]
            ],
        )
    sg = bd["shared_gpu"]
    lines += [
        "",
        f"Shared GPU: {sg['gpu_runs']} runs used a GPU; overlapping pairs: "
        + (", ".join(f"{' + '.join(p['runs'])} ({p['overlap_s']} s)" for p in sg["overlapping_pairs"]) or "none"),
        "",
    ]
    return "\n".join(lines)


# ------------------------------------------------------------------ generated blocks in prose
BEGIN = "<!-- BEGIN GENERATED: {name} -->"
END = "<!-- END GENERATED -->"


def replace_generated(text: str, blocks: dict[str, str]) -> str:
    """Replace the body of each ``<!-- BEGIN GENERATED: name -->`` .. ``<!-- END GENERATED -->`` block.

    Everything outside the markers - the hand-written prose - is kept byte for byte.  A block
    named in ``blocks`` but absent from the text is an error (ValueError), never appended
    somewhere arbitrary: the author decides where generated tables go.  Blocks in the text that
    ``blocks`` does not name are left as they are.
    """
    out = text
    for name, body in blocks.items():
        begin = BEGIN.format(name=name)
        i = out.find(begin)
        if i < 0:
            raise ValueError(f"no generated block {name!r} in the document")
        j = out.find(END, i + len(begin))
        if j < 0:
            raise ValueError(f"generated block {name!r} has no end marker")
        out = out[: i + len(begin)] + "\n" + body.strip("\n") + "\n" + out[j:]
    return out
