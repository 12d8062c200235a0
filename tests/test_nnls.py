"""NNLS on normal equations against numpy's least squares, and the bootstrap interval's coverage."""

from __future__ import annotations

import random

import numpy as np
import pytest
from gpuos_hintd import nnls


def _blocks(x, y, per=25):
    out = []
    for s in range(0, len(y), per):
        blk = nnls.Block.zero(x.shape[1])
        for row, yy in zip(x[s : s + per], y[s : s + per], strict=True):
            blk.add(list(map(float, row)), float(yy))
        out.append(blk)
    return out


def test_unconstrained_optimum_equals_numpy_lstsq():
    rng = np.random.default_rng(1)
    x = rng.uniform(0, 0.02, size=(500, 3))
    true = np.array([600.0, 150.0, 90.0])
    y = x @ true + rng.normal(0, 0.05, 500)
    got = nnls.fit(_blocks(x, y), 3, resamples=50)
    want = np.linalg.lstsq(x, y, rcond=None)[0]
    assert got.coef == pytest.approx(list(want), rel=1e-4)
    assert all(lo <= c <= hi for lo, c, hi in zip(got.lo, got.coef, got.hi, strict=True))


def test_negative_optimum_is_clipped_to_zero_and_the_rest_refit():
    rng = np.random.default_rng(2)
    x = rng.uniform(0, 1, size=(300, 2))
    y = x @ np.array([5.0, -1.0]) + rng.normal(0, 0.01, 300)
    coef = nnls.fit(_blocks(x, y), 2, resamples=0).coef
    assert coef[1] == 0.0
    # with the second column at 0, the first is the 1-D least squares of y on x0
    assert coef[0] == pytest.approx(float(x[:, 0] @ y / (x[:, 0] @ x[:, 0])), rel=1e-4)


def test_bootstrap_interval_covers_the_truth_most_of_the_time():
    hits = 0
    for seed in range(20):
        rng = np.random.default_rng(100 + seed)
        x = rng.uniform(0, 0.02, size=(400, 2))
        y = x @ np.array([500.0, 100.0]) + rng.normal(0, 0.5, 400)
        f = nnls.fit(_blocks(x, y, per=20), 2, resamples=100, seed=seed)
        hits += f.lo[0] <= 500.0 <= f.hi[0]
    assert hits >= 16  # a 95 % interval: at least 80 % of 20 runs


def test_columns_seen_later_are_widened():
    a = nnls.Block.zero(1)
    a.add([1.0], 2.0)
    b = nnls.Block.zero(2)
    b.add([0.0, 1.0], 3.0)
    f = nnls.fit([a, b], 2, resamples=0)
    assert f.coef == pytest.approx([2.0, 3.0])
    random.seed(0)
