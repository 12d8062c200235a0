"""Non-negative least squares on normal equations, and a block bootstrap over it.

Why normal equations: the daemon accumulates, per block of power-sample windows,
``G = X'X``, ``b = X'y`` and ``y'y`` (a few dozen numbers per second per
process) instead of keeping every window; NNLS only needs those, and a block
bootstrap resamples blocks, not windows, so it needs nothing more either.

Pure Python (the daemon does not depend on numpy): the systems here have a
handful of columns (one per phase name, plus "unhinted"), and projected
coordinate descent converges on them in well under a millisecond.
"""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import Sequence

Matrix = list[list[float]]


@dataclasses.dataclass(slots=True)
class Block:
    """Sufficient statistics of some windows: n, y'y, X'y, X'X (k columns)."""

    n: int
    yy: float
    b: list[float]
    g: Matrix

    @classmethod
    def zero(cls, k: int) -> Block:
        return cls(0, 0.0, [0.0] * k, [[0.0] * k for _ in range(k)])

    def widen(self, k: int) -> Block:
        """The same block with zero columns appended up to k (columns seen later)."""
        pad = k - len(self.b)
        if pad <= 0:
            return self
        return Block(
            self.n,
            self.yy,
            self.b + [0.0] * pad,
            [row + [0.0] * pad for row in self.g] + [[0.0] * k for _ in range(pad)],
        )

    def add(self, x: Sequence[float], y: float) -> None:
        self.n += 1
        self.yy += y * y
        for i, xi in enumerate(x):
            if xi == 0.0:
                continue
            self.b[i] += xi * y
            gi = self.g[i]
            for j, xj in enumerate(x):
                if xj != 0.0:
                    gi[j] += xi * xj


def total(blocks: Sequence[Block], k: int) -> Block:
    out = Block.zero(k)
    for blk in blocks:
        blk = blk.widen(k)
        out.n += blk.n
        out.yy += blk.yy
        for i in range(k):
            out.b[i] += blk.b[i]
            oi, gi = out.g[i], blk.g[i]
            for j in range(k):
                oi[j] += gi[j]
    return out


def solve(g: Matrix, b: Sequence[float], sweeps: int = 2000, tol: float = 1e-10) -> list[float]:
    """argmin_{x >= 0} x'Gx - 2b'x (= NNLS of y on X), by projected coordinate descent.

    Columns never seen (G_ii == 0) get 0.
    """
    k = len(b)
    x = [0.0] * k
    scale = max((abs(g[i][i]) for i in range(k)), default=0.0) or 1.0
    for _ in range(sweeps):
        moved = 0.0
        for i in range(k):
            gii = g[i][i]
            if gii <= 1e-15 * scale:
                continue
            r = b[i] - sum(g[i][j] * x[j] for j in range(k))
            new = max(0.0, x[i] + r / gii)
            moved = max(moved, abs(new - x[i]) * math.sqrt(gii))
            x[i] = new
        if moved <= tol * math.sqrt(scale):
            break
    return x


@dataclasses.dataclass(slots=True)
class Fit:
    coef: list[float]  # per column (y units per x unit)
    lo: list[float]  # bootstrap percentile interval (95 % by default)
    hi: list[float]
    windows: int
    blocks: int
    resamples: int


def fit(blocks: Sequence[Block], k: int, resamples: int = 200, level: float = 0.95, seed: int = 0) -> Fit | None:
    """NNLS over all blocks, with a block-bootstrap percentile interval per coefficient."""
    blocks = [b for b in blocks if b.n]
    if not blocks:
        return None
    blocks = [b.widen(k) for b in blocks]
    tot = total(blocks, k)
    coef = solve(tot.g, tot.b)
    rng = random.Random(seed)
    draws: list[list[float]] = []
    if len(blocks) >= 2:
        for _ in range(resamples):
            pick = [blocks[rng.randrange(len(blocks))] for _ in blocks]
            t = total(pick, k)
            draws.append(solve(t.g, t.b, sweeps=500))
    lo, hi = list(coef), list(coef)
    if draws:
        a = (1.0 - level) / 2.0
        for i in range(k):
            col = sorted(d[i] for d in draws)
            lo[i] = col[int(a * (len(col) - 1))]
            hi[i] = col[math.ceil((1.0 - a) * (len(col) - 1))]
    return Fit(coef, lo, hi, tot.n, len(blocks), len(draws))
