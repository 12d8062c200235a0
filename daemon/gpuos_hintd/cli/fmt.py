"""Plain-text rendering helpers for gpuos-hintctl (no dependencies)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..safetext import safe

__all__ = ["duration", "ms", "num", "safe", "table"]


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], align: str = "") -> str:
    """A fixed-width table; `align` is one char per column, 'r' for right.

    Every cell goes through safe(): a cell is one line, so no input can add a row
    or send an escape sequence to the terminal.
    """
    cells = [[safe(h) for h in headers]] + [["" if c is None else safe(c) for c in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    out = []
    for n, row in enumerate(cells):
        parts = [
            c.rjust(w) if i < len(align) and align[i] == "r" else c.ljust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        out.append("  ".join(parts).rstrip())
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def ms(ns: float | None) -> str:
    if ns is None:
        return "-"
    v = ns / 1e6
    return f"{v:.3f}" if v < 10 else f"{v:.1f}" if v < 1000 else f"{v:,.0f}"


def num(v: float | int | None, digits: int = 1) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.{digits}f}"
    return f"{v:,}"


def duration(seconds: float) -> str:
    s = int(seconds)
    if s < 60:
        return f"{seconds:.1f}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


def pm(v: float | int | None, err: float | int | None, digits: int = 1) -> str:
    """A figure with its uncertainty, ``12.3±0.4`` (just the figure when there is none)."""
    if v is None:
        return "-"
    if err is None:
        return num(float(v), digits)
    return f"{float(v):,.{digits}f}±{float(err):,.{digits}f}"
