"""OS-only phase-boundary detection, and its scoring against the hinted boundaries.

Method (explainable on purpose): every feature channel is centred on its median
and scaled by its *noise* level - the robust spread of its first differences,
MAD(diff) / (0.6745 * sqrt 2), falling back to its standard deviation - and
clipped to +-8, so "one unit" means one noise-sigma in every channel.  Then
PELT (Killick, Fearnhead and Eckley 2012) finds the exact minimum of

    sum over segments of  sum_{t in seg} ||x_t - mean(seg)||^2   +   penalty * (number of segments)

i.e. piecewise-constant means in all channels at once, with pruning so it is
near-linear.  ``penalty = beta * d * log(n)`` (d channels, n windows): BIC-like,
with ``beta`` the one knob; the pipeline chooses it on other runs (never on the
run being scored) from ``BETAS``.

Scoring: a predicted boundary matches at most one true boundary within
``tol_ns`` (closest pairs first); precision = matched / predicted, recall =
matched / true, F1 their harmonic mean; both empty counts as perfect.
"""

from __future__ import annotations

import dataclasses

import numpy as np

BETAS: tuple[float, ...] = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)


def standardise(x: np.ndarray) -> np.ndarray:
    """Median-centred, noise-scaled, clipped channels; constant channels dropped."""
    if x.size == 0:
        return x.reshape(len(x), 0)
    cols = []
    for j in range(x.shape[1]):
        c = x[:, j]
        if np.ptp(c) == 0:
            continue
        scale = np.median(np.abs(np.diff(c))) / (0.6745 * np.sqrt(2)) if len(c) > 1 else 0.0
        if not scale > 0:
            scale = float(np.std(c))
        cols.append(np.clip((c - np.median(c)) / scale, -8.0, 8.0))
    return np.column_stack(cols) if cols else np.zeros((len(x), 0))


def pelt(x: np.ndarray, penalty: float, min_size: int = 2) -> list[int]:
    """Change points of x (n x d) under the L2 cost: indices k where a new segment starts (0 < k < n)."""
    n = len(x)
    if n < 2 * min_size or x.shape[1] == 0:
        return []
    s1 = np.vstack([np.zeros(x.shape[1]), np.cumsum(x, axis=0)])
    s2 = np.concatenate([[0.0], np.cumsum((x**2).sum(axis=1))])

    def cost(starts: np.ndarray, end: int) -> np.ndarray:
        length = end - starts
        seg = s1[end] - s1[starts]
        return (s2[end] - s2[starts]) - (seg**2).sum(axis=1) / length

    f = np.full(n + 1, np.inf)
    f[0] = -penalty
    last = np.zeros(n + 1, dtype=np.int64)
    cands = np.array([0], dtype=np.int64)
    for t in range(min_size, n + 1):
        ok = cands[t - cands >= min_size]
        if len(ok):
            vals = f[ok] + cost(ok, t) + penalty
            i = int(np.argmin(vals))
            f[t], last[t] = vals[i], ok[i]
            keep = f[ok] + cost(ok, t) <= f[t]  # PELT pruning (K = 0 for this cost)
            cands = np.concatenate([ok[keep], cands[t - cands < min_size], [t - min_size + 1]])
        else:
            cands = np.concatenate([cands, [t - min_size + 1]])
        cands = np.unique(cands[cands >= 0])
    cps, t = [], n
    while t > 0:
        t = int(last[t])
        if t > 0:
            cps.append(t)
    return sorted(cps)


def segment(features: np.ndarray, beta: float, min_size: int = 2) -> list[int]:
    """Window indices where an OS-only segment starts (boundary at the start of that window)."""
    z = standardise(features)
    if z.shape[1] == 0:
        return []
    return pelt(z, beta * z.shape[1] * np.log(max(len(z), 2)), min_size)


# ------------------------------------------------------------------------ scoring
@dataclasses.dataclass(slots=True)
class BoundaryScore:
    tp: int
    n_pred: int
    n_true: int
    matched_true: np.ndarray  # bool per true boundary

    @property
    def precision(self) -> float:
        return self.tp / self.n_pred if self.n_pred else (1.0 if not self.n_true else 0.0)

    @property
    def recall(self) -> float:
        return self.tp / self.n_true if self.n_true else (1.0 if not self.n_pred else 0.0)

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r else 0.0

    def as_dict(self) -> dict[str, float | int]:
        return {
            "tp": self.tp,
            "predicted": self.n_pred,
            "true": self.n_true,
            "precision": round(self.precision, 4),
            "recall": round(self.recall, 4),
            "f1": round(self.f1, 4),
        }


def match(pred: np.ndarray, true: np.ndarray, tol: float) -> BoundaryScore:
    """One-to-one matching within tol, closest pairs first."""
    pred = np.asarray(pred, dtype=float)
    true = np.asarray(true, dtype=float)
    matched = np.zeros(len(true), dtype=bool)
    if len(pred) and len(true):
        d = np.abs(pred[:, None] - true[None, :])
        pi, ti = np.nonzero(d <= tol)
        used_p = np.zeros(len(pred), dtype=bool)
        for k in np.argsort(d[pi, ti], kind="stable"):
            p, t = pi[k], ti[k]
            if not used_p[p] and not matched[t]:
                used_p[p] = matched[t] = True
    return BoundaryScore(int(matched.sum()), len(pred), len(true), matched)


def random_baseline(
    n_pred: int, grid: np.ndarray, true: np.ndarray, tol: float, draws: int = 200, seed: int = 0
) -> dict[str, float]:
    """Mean P/R/F1 of n_pred boundaries drawn uniformly (without replacement) from the sample grid."""
    rng = np.random.default_rng(seed)
    if len(grid) == 0:
        return {"precision": 0.0, "recall": 0.0, "f1": 0.0}
    k = min(n_pred, len(grid))
    scores = [match(rng.choice(grid, size=k, replace=False), true, tol) for _ in range(draws)]
    return {
        "precision": round(float(np.mean([s.precision for s in scores])), 4),
        "recall": round(float(np.mean([s.recall for s in scores])), 4),
        "f1": round(float(np.mean([s.f1 for s in scores])), 4),
    }
