"""The evaluation, end to end: runs -> windows -> boundaries, labels, attribution, breakdown -> one dict."""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

from . import attribution, baselines, breakdown, classify, segment
from .dataset import LEVELS, Run, Windows, align_features, kinds_of, transform, windows_of

#: Windows per run in the blocked K-fold used when a workload has a single run.
BLOCKS = 3
#: The model whose predictions feed the OS-only attribution (fixed in advance, not picked on the test data).
ATTRIBUTION_MODEL = "decision_tree"


def build_windows(runs: Sequence[Run]) -> list[Windows]:
    kinds = kinds_of(runs)
    wins = [windows_of(r, kinds) for r in runs if r.hinted and len(r.t_ns) >= 3]
    align_features(wins)
    return wins


def fold_groups(wins: Sequence[Windows]) -> tuple[str, list[np.ndarray]]:
    """('run', one group per run) if every workload has >= 2 runs, else ('block', K time blocks per run)."""
    per_workload = Counter(w.run.workload for w in wins)
    if len(wins) >= 2 and min(per_workload.values()) >= 2:
        return "leave-one-run-out", [np.full(len(w), i) for i, w in enumerate(wins)]
    groups = []
    for w in wins:
        groups.append(np.minimum((np.arange(len(w)) * BLOCKS) // max(len(w), 1), BLOCKS - 1))
    return f"blocked {BLOCKS}-fold (contiguous time blocks of each run)", groups


# ----------------------------------------------------------------------- boundaries
def _score_runs(
    wins: Sequence[Windows], cps: Sequence[Sequence[int]], level: str, tol: float
) -> list[segment.BoundaryScore]:
    out = []
    for w, cp in zip(wins, cps, strict=True):
        true, _ = w.timelines[level].boundaries()
        out.append(segment.match(w.t0[np.asarray(cp, dtype=int)] if len(cp) else np.zeros(0), true, tol))
    return out


def _micro(scores: Sequence[segment.BoundaryScore]) -> dict[str, Any]:
    tp = sum(s.tp for s in scores)
    np_, nt = sum(s.n_pred for s in scores), sum(s.n_true for s in scores)
    return segment.BoundaryScore(tp, np_, nt, np.zeros(0, dtype=bool)).as_dict()


def _choose(
    wins: Sequence[Windows], by_beta: dict[float, list[list[int]]], level: str, tol: float
) -> tuple[list[list[int]], list[float], dict[float, list[segment.BoundaryScore]]]:
    """Per run, the change points at the beta that scored best on the *other* runs."""
    sweep = {b: _score_runs(wins, by_beta[b], level, tol) for b in segment.BETAS}
    chosen, betas = [], []
    for i in range(len(wins)):
        others = [j for j in range(len(wins)) if j != i]
        if others:  # beta tuned on the other runs only
            f1 = {b: _micro([sweep[b][j] for j in others])["f1"] for b in segment.BETAS}
            beta = max(segment.BETAS, key=lambda b: (f1[b], -abs(np.log(b))))
        else:
            beta = 1.0
        betas.append(beta)
        chosen.append(by_beta[beta][i])
    return chosen, betas, sweep


def boundaries(wins: Sequence[Windows], tol: float, period: float) -> dict[str, Any]:
    feats = [transform(w.features) for w in wins]
    by_beta = {b: [segment.segment(f, b) for f in feats] for b in segment.BETAS}
    libs = baselines.available()
    by_beta_rpt = None
    if libs["ruptures"] is None:
        by_beta_rpt = {b: [baselines.ruptures_segment(f, b) for f in feats] for b in segment.BETAS}
    out: dict[str, Any] = {}
    chosen_cps: dict[str, list[list[int]]] = {}
    for level in LEVELS:
        chosen, betas, sweep = _choose(wins, by_beta, level, tol)
        chosen_cps[level] = chosen
        scores = _score_runs(wins, chosen, level, tol)
        rand = []
        for w, s in zip(wins, scores, strict=True):
            true, _ = w.timelines[level].boundaries()
            rand.append(segment.random_baseline(s.n_pred, w.t0[1:], true, tol))
        scales = np.concatenate([w.timelines[level].boundaries()[1] for w in wins])
        matched = np.concatenate([s.matched_true for s in scores])
        out[level] = {
            "os_only": _micro(scores),
            "random_same_count_f1_mean": round(float(np.mean([r["f1"] for r in rand])), 4) if rand else 0.0,
            "per_run": [
                {"run": w.run.key, "beta": b, **s.as_dict(), "random_f1": r["f1"]}
                for w, b, s, r in zip(wins, betas, scores, rand, strict=True)
            ],
            "sweep_in_sample": {str(b): _micro(sweep[b]) for b in segment.BETAS},
            "recall_by_scale": breakdown.recall_by_scale(scales, matched, period),
            "boundary_scales_ns": scales.tolist(),
            "boundary_matched": matched.astype(int).tolist(),
        }
        if by_beta_rpt is not None:
            rchosen, _, _ = _choose(wins, by_beta_rpt, level, tol)
            out[level]["ruptures_pelt"] = _micro(_score_runs(wins, rchosen, level, tol))
        else:
            out[level]["ruptures_pelt"] = {"skipped": libs["ruptures"]}
    return {"levels": out, "_cps": chosen_cps}


# ------------------------------------------------------------------- classification
def labelling(wins: Sequence[Windows], groups: Sequence[np.ndarray], cps: dict[str, list[list[int]]]) -> dict[str, Any]:
    x = transform(np.vstack([w.features for w in wins]))
    g = np.concatenate(groups)
    wl = np.concatenate([np.full(len(w), w.run.workload, dtype=object) for w in wins])
    out: dict[str, Any] = {}
    preds: dict[str, np.ndarray] = {}
    for level in LEVELS:
        y = np.concatenate([w.labels[level] for w in wins])
        res: dict[str, Any] = {"label_counts": dict(Counter(y.tolist()).most_common())}
        for name, make in classify.MODELS.items():
            p = classify.cross_predict(x, y, g, make)
            res[name] = classify.scores(y, p)
            if name == ATTRIBUTION_MODEL:
                smoothed = _smooth(p, wins, cps["top"])
                res[f"{name}+segments"] = classify.scores(y, smoothed)
                preds[level] = smoothed
        res["majority_per_workload"] = classify.scores(y, _majority_per_workload(y, g, wl))
        if baselines.available()["sklearn"] is None:
            for name, make in baselines.sklearn_models().items():
                res[name] = classify.scores(y, classify.cross_predict(x, y, g, make))
        purity = np.concatenate([w.purity[level] for w in wins])
        pure = purity >= 0.9
        if pure.any():
            res["decision_tree_on_pure_windows"] = {
                "share_of_windows": round(float(pure.mean()), 4),
                "accuracy": round(float(np.mean(preds[level][pure] == y[pure])), 4),
            }
        tree = classify.DecisionTree().fit(x, y)
        res["decision_tree_rules_all_data"] = tree.rules(wins[0].feature_names)
        out[level] = res
    return {"levels": out, "_preds": preds}


def _majority_per_workload(y: np.ndarray, groups: np.ndarray, workload: np.ndarray) -> np.ndarray:
    """A stronger baseline: the most frequent training label of the same program (the OS knows the cmdline)."""
    pred = np.empty(len(y), dtype=object)
    for gr in np.unique(groups):
        test = groups == gr
        for w in np.unique(workload[test]):
            train = ~test & (workload == w)
            src = y[train] if train.any() else y[~test] if (~test).any() else y
            pred[test & (workload == w)] = Counter(src.tolist()).most_common(1)[0][0]
    return pred


def _smooth(pred: np.ndarray, wins: Sequence[Windows], cps: Sequence[Sequence[int]]) -> np.ndarray:
    """Each OS-only segment takes the majority of the window predictions inside it."""
    out = pred.copy()
    off = 0
    for w, cp in zip(wins, cps, strict=True):
        edges = [0, *cp, len(w)]
        for a, b in itertools.pairwise(edges):
            seg = pred[off + a : off + b]
            if len(seg):
                out[off + a : off + b] = Counter(seg.tolist()).most_common(1)[0][0]
        off += len(w)
    return out


# ---------------------------------------------------------------------- attribution
def attributing(wins: Sequence[Windows], preds: dict[str, np.ndarray]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for level in ("top", "leaf"):
        per_run = []
        off = 0
        for w in wins:
            p = preds[level][off : off + len(w)]
            off += len(w)
            total_e = float(np.nansum(w.energy_mj)) if not np.all(np.isnan(w.energy_mj)) else None
            h = attribution.hinted(w.run.spans, level, float(w.cpu_ns.sum()), total_e)
            row: dict[str, Any] = {"run": w.run.key}
            row["cpu"] = attribution.compare(
                h["cpu_ns"], attribution.by_label(w.labels[level], w.cpu_ns), attribution.by_label(p, w.cpu_ns)
            )
            if "energy_mj" in h:
                row["energy"] = attribution.compare(
                    h["energy_mj"],
                    attribution.by_label(w.labels[level], w.energy_mj),
                    attribution.by_label(p, w.energy_mj),
                )
            per_run.append(row)
        summary = {}
        for what in ("cpu", "energy"):
            rows = [r[what] for r in per_run if what in r]
            if rows:
                summary[what] = {
                    k: _mean([r[k] for r in rows])
                    for k in ("misattributed_share_window_oracle", "misattributed_share_os_only")
                }
        out[level] = {"summary_mean_over_runs": summary, "per_run": per_run}
    return out


def _mean(vals: Sequence[float | None]) -> float | None:
    v = [x for x in vals if x is not None]
    return round(float(np.mean(v)), 4) if v else None


# ------------------------------------------------------------------------ top level
def evaluate(runs: Sequence[Run], tolerance_ms: float | None = None) -> dict[str, Any]:
    """The whole evaluation of the hinted runs given; a JSON-ready dict."""
    wins = build_windows(runs)
    if not wins:
        return {"error": "no hinted process with at least 3 samples in the store", "runs": []}
    period = float(np.median(np.concatenate([w.t1 - w.t0 for w in wins])))
    tol = tolerance_ms * 1e6 if tolerance_ms is not None else 2 * period
    scheme, groups = fold_groups(wins)
    seg = boundaries(wins, tol, period)
    lab = labelling(wins, groups, seg.pop("_cps"))
    attr = attributing(wins, lab.pop("_preds"))
    all_spans = [s for w in wins for s in w.run.spans]
    return {
        "dataset": {
            "runs": [
                {
                    "run": w.run.key,
                    "workload": w.run.workload,
                    "windows": len(w),
                    "spans": len(w.run.spans),
                    "duration_s": round((w.t1[-1] - w.t0[0]) / 1e9, 3),
                    "period_ms": round(w.period_ns / 1e6, 2),
                }
                for w in wins
            ],
            "windows": sum(len(w) for w in wins),
            "features": wins[0].feature_names,
            "sample_period_ms": round(period / 1e6, 2),
            "tolerance_ms": round(tol / 1e6, 2),
            "split": scheme,
        },
        "boundaries": seg["levels"],
        "labelling": lab["levels"],
        "attribution": attr,
        "breakdown": {
            "span_durations": breakdown.span_durations(all_spans, period),
            "host_vs_device": breakdown.host_vs_device(all_spans),
            "shared_gpu": breakdown.shared_gpu([w.run for w in wins]),
        },
    }
