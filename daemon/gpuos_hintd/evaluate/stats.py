"""Small, exact statistics for the Phase 2 study and the repeated evaluation (numpy only).

Why hand-written: these are a few lines each, the daemon must not depend on SciPy, and the unit
tests check them against answers known in closed form.  Everything works on plain float arrays.

* ``mean_ci``      - mean and a two-sided 95 % Student-t interval (the repeats of one level).
* ``bootstrap_ci`` - percentile bootstrap of any statistic over independent units (runs, seeds).
* ``spearman``     - rank correlation (average ranks for ties).
* ``eta_squared``  - share of the total sum of squares explained by a grouping (one-way).
* ``permutation_p``- p-value of eta^2 by shuffling the grouping (no normality assumed).
* ``classify``     - sensitive / invariant / confounded, with the rule in ``CLASS_RULE``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

# Two-sided 97.5 % quantiles of Student's t for df = 1..30; larger df use the normal 1.96.
_T975 = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
    2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)  # fmt: skip

#: Thresholds of the classification rule (Cohen's "large" eta^2 is 0.14).
ETA2_MIN = 0.14
P_MAX = 0.01
CLASS_RULE = (
    "invariant: the level effect is small or not significant (eta2_level < 0.14 or permutation p >= 0.01); "
    "confounded: a significant, large level effect that is not the knob's own - the repeat (run-to-run drift) "
    "explains at least as much (eta2_repeat >= eta2_level), or the effect disappears once the achieved work rate "
    "is regressed out (eta2 of the residuals < 0.14), i.e. the signal follows 'more work', not the mechanism; "
    "sensitive: otherwise (significant, large, not explained by repeat or by work rate)."
)


def t975(df: int) -> float:
    """The 97.5 % quantile of Student's t with df degrees of freedom (table, then 1.96)."""
    if df < 1:
        return math.nan
    return _T975[df - 1] if df <= len(_T975) else 1.96


def mean_ci(x: Sequence[float]) -> tuple[float, float, float]:
    """(mean, low, high) of a 95 % t interval; NaNs dropped; one value gives a zero-width interval."""
    a = np.asarray(x, dtype=float)
    a = a[~np.isnan(a)]
    if len(a) == 0:
        return math.nan, math.nan, math.nan
    m = float(a.mean())
    if len(a) == 1:
        return m, m, m
    half = t975(len(a) - 1) * float(a.std(ddof=1)) / math.sqrt(len(a))
    return m, m - half, m + half


def bootstrap_ci(
    x: Sequence[float],
    stat: Callable[[np.ndarray], float] = np.mean,
    n_boot: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float, float]:
    """(statistic, low, high): percentile bootstrap over the units in x (resampled with replacement)."""
    a = np.asarray(x, dtype=float)
    a = a[~np.isnan(a)]
    if len(a) == 0:
        return math.nan, math.nan, math.nan
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(a), size=(n_boot, len(a)))
    boots = np.array([stat(a[i]) for i in idx])
    lo, hi = np.quantile(boots, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(stat(a)), float(lo), float(hi)


def ranks(x: Sequence[float]) -> np.ndarray:
    """1-based ranks, ties given their average rank."""
    a = np.asarray(x, dtype=float)
    order = np.argsort(a, kind="stable")
    r = np.empty(len(a))
    r[order] = np.arange(1, len(a) + 1)
    for v in np.unique(a):
        tie = a == v
        if tie.sum() > 1:
            r[tie] = r[tie].mean()
    return r


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rho (Pearson correlation of the ranks); NaN if either side is constant or pairs < 3."""
    a, b = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    ok = ~(np.isnan(a) | np.isnan(b))
    a, b = a[ok], b[ok]
    if len(a) < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return math.nan
    ra, rb = ranks(a), ranks(b)
    return float(np.corrcoef(ra, rb)[0, 1])


def eta_squared(y: Sequence[float], groups: Sequence[Any]) -> float:
    """SS_between(groups) / SS_total; 0 when y is constant."""
    a = np.asarray(y, dtype=float)
    g = np.asarray(groups, dtype=object)
    ok = ~np.isnan(a)
    a, g = a[ok], g[ok]
    if len(a) < 2:
        return math.nan
    total = float(((a - a.mean()) ** 2).sum())
    if total <= 0:
        return 0.0
    between = 0.0
    for lv in set(g.tolist()):
        sel = a[g == lv]
        between += len(sel) * float((sel.mean() - a.mean()) ** 2)
    return between / total


def permutation_p(y: Sequence[float], groups: Sequence[Any], n_perm: int = 2000, seed: int = 0) -> float:
    """P(eta^2 of a random relabelling >= observed), with the +1 correction (never exactly 0)."""
    a = np.asarray(y, dtype=float)
    g = np.asarray(groups, dtype=object)
    ok = ~np.isnan(a)
    a, g = a[ok], g[ok]
    obs = eta_squared(a, g)
    if not obs > 0:
        return 1.0
    rng = np.random.default_rng(seed)
    hits = sum(eta_squared(a, rng.permutation(g)) >= obs - 1e-12 for _ in range(n_perm))
    return (hits + 1) / (n_perm + 1)


def residualise(y: Sequence[float], covariate: Sequence[float]) -> np.ndarray:
    """y minus its least-squares linear fit on the covariate (NaN where either is NaN)."""
    a, c = np.asarray(y, dtype=float), np.asarray(covariate, dtype=float)
    out = np.full(len(a), np.nan)
    ok = ~(np.isnan(a) | np.isnan(c))
    if ok.sum() < 3 or np.ptp(c[ok]) == 0:
        out[ok] = a[ok] - a[ok].mean()
        return out
    slope, icept = np.polyfit(c[ok], a[ok], 1)
    out[ok] = a[ok] - (slope * c[ok] + icept)
    return out


def effect(
    values: Sequence[float],
    level_index: Sequence[float],
    repeat: Sequence[Any],
    work: Sequence[float] | None = None,
    n_perm: int = 2000,
    seed: int = 0,
) -> dict[str, Any]:
    """All statistics of one signal x knob over its units (one unit = one level held once)."""
    v = np.asarray(values, dtype=float)
    lv = np.asarray(level_index, dtype=float)
    levels = sorted(set(lv[~np.isnan(v)].tolist()))
    per_level = []
    for x in levels:
        m, lo, hi = mean_ci(v[lv == x])
        per_level.append({"level_index": x, "n": int(np.sum((lv == x) & ~np.isnan(v))), "mean": m, "lo": lo, "hi": hi})
    out: dict[str, Any] = {
        "per_level": per_level,
        "spearman_rho": spearman(lv, v),
        "eta2_level": eta_squared(v, lv),
        "eta2_repeat": eta_squared(v, repeat),
        "p_level": permutation_p(v, lv, n_perm, seed),
    }
    if work is not None:
        out["eta2_level_given_work"] = eta_squared(residualise(v, work), lv)
    out["class"] = classify(out)
    return out


def classify(e: dict[str, Any]) -> str:
    """The rule in CLASS_RULE applied to one ``effect`` dict."""
    eta, p = e.get("eta2_level"), e.get("p_level")
    if eta is None or not eta >= ETA2_MIN or p is None or not p < P_MAX:
        return "invariant"
    rep = e.get("eta2_repeat")
    if rep is not None and rep >= eta:
        return "confounded"
    given = e.get("eta2_level_given_work")
    if given is not None and not given >= ETA2_MIN:
        return "confounded"
    return "sensitive"
