"""OS-only labelling of windows, and the usual classification metrics.

Two small, inspectable models in numpy, on the signed-log features
(dataset.transform), standardised with the *training* windows' mean and std:
* nearest centroid - one mean vector per label, Euclidean distance;
* a CART decision tree (Gini, depth <= 4, >= 3 windows per leaf) whose rules
  can be printed (``DecisionTree.rules``).
Beside them, the majority-class baseline: always the most frequent training label.

Models are always scored out of sample: ``folds`` gives each window a group,
and every window is predicted by a model fitted on the other groups only -
whole runs (leave-one-run-out) when each workload has at least two runs,
otherwise contiguous time blocks of each run (blocked K-fold), so no test window
is ever a training window or adjacent to one inside the same block.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np


class Model(Protocol):
    def fit(self, x: np.ndarray, y: np.ndarray) -> Model: ...
    def predict(self, x: np.ndarray) -> np.ndarray: ...


class Majority:
    def fit(self, x: np.ndarray, y: np.ndarray) -> Majority:
        self.label = Counter(y.tolist()).most_common(1)[0][0]
        return self

    def predict(self, x: np.ndarray) -> np.ndarray:
        return np.array([self.label] * len(x), dtype=object)


class _Scaled:
    def _scale_fit(self, x: np.ndarray) -> np.ndarray:
        self.mu = x.mean(axis=0)
        sd = x.std(axis=0)
        self.sd = np.where(sd > 0, sd, 1.0)
        return (x - self.mu) / self.sd

    def _scale(self, x: np.ndarray) -> np.ndarray:
        return (x - self.mu) / self.sd


class NearestCentroid(_Scaled):
    def fit(self, x: np.ndarray, y: np.ndarray) -> NearestCentroid:
        z = self._scale_fit(x)
        self.labels = np.array(sorted(set(y.tolist())), dtype=object)
        self.centroids = np.array([z[y == lab].mean(axis=0) for lab in self.labels])
        return self

    def predict(self, x: np.ndarray) -> np.ndarray:
        z = self._scale(x)
        d = ((z[:, None, :] - self.centroids[None, :, :]) ** 2).sum(axis=2)
        return self.labels[np.argmin(d, axis=1)]


class DecisionTree(_Scaled):
    def __init__(self, max_depth: int = 4, min_leaf: int = 3, max_thresholds: int = 32) -> None:
        self.max_depth = max_depth
        self.min_leaf = min_leaf
        self.max_thresholds = max_thresholds

    def fit(self, x: np.ndarray, y: np.ndarray) -> DecisionTree:
        z = self._scale_fit(x)
        self.tree = self._grow(z, y, 0)
        return self

    @staticmethod
    def _gini(y: np.ndarray) -> float:
        _, counts = np.unique(y, return_counts=True)
        p = counts / counts.sum()
        return 1.0 - float((p**2).sum())

    def _grow(self, z: np.ndarray, y: np.ndarray, depth: int) -> Any:
        majority = Counter(y.tolist()).most_common(1)[0][0]
        if depth >= self.max_depth or len(set(y.tolist())) == 1 or len(y) < 2 * self.min_leaf:
            return majority
        best: tuple[float, int, float] | None = None
        parent = self._gini(y)
        for j in range(z.shape[1]):
            col = z[:, j]
            uniq = np.unique(col)
            if len(uniq) < 2:
                continue
            mids = (uniq[:-1] + uniq[1:]) / 2
            if len(mids) > self.max_thresholds:
                mids = np.quantile(mids, np.linspace(0, 1, self.max_thresholds))
            for thr in mids:
                left = col <= thr
                nl = int(left.sum())
                if nl < self.min_leaf or len(y) - nl < self.min_leaf:
                    continue
                g = (nl * self._gini(y[left]) + (len(y) - nl) * self._gini(y[~left])) / len(y)
                if best is None or g < best[0] - 1e-12:
                    best = (g, j, float(thr))
        if best is None or best[0] >= parent - 1e-9:
            return majority
        _, j, thr = best
        left = z[:, j] <= thr
        return (j, thr, self._grow(z[left], y[left], depth + 1), self._grow(z[~left], y[~left], depth + 1))

    def predict(self, x: np.ndarray) -> np.ndarray:
        z = self._scale(x)
        out = np.empty(len(z), dtype=object)
        for i, row in enumerate(z):
            node = self.tree
            while isinstance(node, tuple):
                node = node[2] if row[node[0]] <= node[1] else node[3]
            out[i] = node
        return out

    def rules(self, names: Sequence[str]) -> list[str]:
        """The tree as indented if/else lines, thresholds in the original units of the transformed feature."""
        lines: list[str] = []

        def walk(node: Any, indent: str) -> None:
            if not isinstance(node, tuple):
                lines.append(f"{indent}-> {node}")
                return
            j, thr, lo, hi = node
            raw = thr * self.sd[j] + self.mu[j]
            lines.append(f"{indent}if slog({names[j]}) <= {raw:.3g}:")
            walk(lo, indent + "  ")
            lines.append(f"{indent}else:")
            walk(hi, indent + "  ")

        walk(self.tree, "")
        return lines


MODELS: dict[str, Callable[[], Model]] = {
    "majority": Majority,
    "nearest_centroid": NearestCentroid,
    "decision_tree": DecisionTree,
}


def cross_predict(x: np.ndarray, y: np.ndarray, groups: np.ndarray, make: Callable[[], Model]) -> np.ndarray:
    """Out-of-fold predictions: each group predicted by a model fitted on all other groups."""
    pred = np.empty(len(y), dtype=object)
    for g in np.unique(groups):
        test = groups == g
        if test.all():
            pred[test] = Majority().fit(x, y).predict(x[test])  # nothing else to learn from
            continue
        pred[test] = make().fit(x[~test], y[~test]).predict(x[test])
    return pred


# ------------------------------------------------------------------------ metrics
def confusion(y_true: Sequence[Any], y_pred: Sequence[Any], labels: Sequence[Any] | None = None) -> dict[str, Any]:
    """Rows = truth, columns = prediction, over ``labels`` (default: all seen, sorted)."""
    labs = list(labels) if labels is not None else sorted(set(y_true) | set(y_pred), key=str)
    idx = {lab: i for i, lab in enumerate(labs)}
    m = np.zeros((len(labs), len(labs)), dtype=np.int64)
    for t, p in zip(y_true, y_pred, strict=True):
        if t in idx and p in idx:
            m[idx[t], idx[p]] += 1
    return {"labels": labs, "matrix": m.tolist()}


def scores(y_true: Sequence[Any], y_pred: Sequence[Any]) -> dict[str, Any]:
    """Accuracy, macro F1 over the true classes, per-class precision/recall/F1/support, confusion."""
    y_true, y_pred = list(y_true), list(y_pred)
    cm = confusion(y_true, y_pred)
    m = np.array(cm["matrix"])
    per: dict[str, dict[str, float]] = {}
    for i, lab in enumerate(cm["labels"]):
        tp, fp, fn = m[i, i], m[:, i].sum() - m[i, i], m[i, :].sum() - m[i, i]
        p = tp / (tp + fp) if tp + fp else 0.0
        r = tp / (tp + fn) if tp + fn else 0.0
        per[str(lab)] = {
            "precision": round(float(p), 4),
            "recall": round(float(r), 4),
            "f1": round(float(2 * p * r / (p + r)) if p + r else 0.0, 4),
            "support": int(m[i, :].sum()),
        }
    present = [v for v in per.values() if v["support"]]
    n = len(y_true)
    return {
        "n": n,
        "accuracy": round(float(np.trace(m)) / n, 4) if n else 0.0,
        "macro_f1": round(float(np.mean([v["f1"] for v in present])), 4) if present else 0.0,
        "per_class": per,
        "confusion": cm,
    }
