"""Library baselines beside the hand-written methods: ruptures' PELT and scikit-learn's classifiers.

Why: the hand-written PELT and CART (segment.py, classify.py) are small and inspectable, but a
reader should not have to trust them.  The same inputs go through well-kept libraries, scored the
same way, as a cross-check (ruptures PELT with the same L2 cost and penalty must find a similar
segmentation) and as stronger baselines (scikit-learn's CART and nearest centroid).

Both are optional (the ``eval`` extra): without them ``available()`` says so and the pipeline
leaves the rows out, with the reason in the result.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import numpy as np

from .segment import standardise


def available() -> dict[str, str | None]:
    """{library: None if importable, else the import error}."""
    out: dict[str, str | None] = {}
    for mod in ("ruptures", "sklearn"):
        try:
            __import__(mod)
            out[mod] = None
        except ImportError as exc:
            out[mod] = f"{type(exc).__name__}: {exc}"
    return out


def ruptures_segment(features: np.ndarray, beta: float, min_size: int = 2) -> list[int]:
    """ruptures.Pelt (L2 cost) on the same standardised channels and penalty as segment.segment."""
    import ruptures

    z = standardise(features)
    if z.shape[1] == 0 or len(z) < 2 * min_size:
        return []
    pen = beta * z.shape[1] * np.log(max(len(z), 2))
    bkps = ruptures.Pelt(model="l2", min_size=min_size, jump=1).fit(z).predict(pen=pen)
    return [int(b) for b in bkps if 0 < b < len(z)]


class _Sk:
    """Adapter: sklearn estimator on standardised features, object labels in and out."""

    def __init__(self, make: Callable[[], Any]) -> None:
        self.make = make

    def fit(self, x: np.ndarray, y: np.ndarray) -> _Sk:
        self.mu, sd = x.mean(axis=0), x.std(axis=0)
        self.sd = np.where(sd > 0, sd, 1.0)
        with warnings.catch_warnings():  # NearestCentroid warns on a feature constant within a class
            warnings.simplefilter("ignore", UserWarning)
            self.est = self.make().fit((x - self.mu) / self.sd, y.astype(str))
        return self

    def predict(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self.est.predict((x - self.mu) / self.sd), dtype=object)


def sklearn_models() -> dict[str, Callable[[], Any]]:
    """The scikit-learn counterparts of classify.MODELS (same depth and leaf size for the tree)."""
    from sklearn.neighbors import NearestCentroid
    from sklearn.tree import DecisionTreeClassifier

    def tree() -> Any:
        return DecisionTreeClassifier(max_depth=4, min_samples_leaf=3, random_state=0)

    return {
        "sklearn_decision_tree": lambda: _Sk(tree),
        "sklearn_nearest_centroid": lambda: _Sk(NearestCentroid),
    }
