"""Per-phase GPU power across repetitions: NNLS of window energy on hinted occupancy.

Why: a phase shorter than the driver's power-sample period (~20 ms on an H200)
cannot get its energy from the samples inside it - there are none.  But it
repeats: over many sample windows, each window's energy is
``sum_phase P_phase * time_phase_in_window + P_other * time_unhinted``, and a
non-negative least-squares fit over all windows recovers ``P_phase`` for every
phase name (the issue measured 519 W for a prefill whose per-span figure was
199 W).  The confidence interval comes from a block bootstrap over windows.

What the daemon keeps: per process, per block of ``BLOCK_WINDOWS`` windows,
the normal-equation statistics (nnls.Block), handed to the store as a mark
``__phase_energy__`` every ``EMIT_EVERY_NS`` (columns + new blocks);
`gpuos-hintctl phases` pools a process's marks and fits.  Occupancy is each
span's *exclusive* time (minus its children's) on its device interval when the
client recorded one, else its host interval; open spans count up to now.
Windows are taken only once they are ``SETTLE_NS`` old, so that the spans
overlapping them (whose begin and end events arrive batched) are known.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any

from .nnls import Block
from .power_series import PowerSeries

BLOCK_WINDOWS = 50  # ~1 s of 20 ms windows per bootstrap block
MAX_COLUMNS = 32  # phase paths per process (more are folded into "other")
SETTLE_NS = 1_000_000_000
EMIT_EVERY_NS = 10_000_000_000
MARK_NAME = "__phase_energy__"
UNHINTED = "(unhinted)"
OTHER = "(other phases)"
RING = 4096  # finalised spans kept per process for occupancy


@dataclasses.dataclass(slots=True)
class SpanIv:
    span_id: int
    parent_id: int
    path: str
    a: int
    b: int | None  # None: still open


@dataclasses.dataclass(slots=True)
class _Proc:
    cols: list[str] = dataclasses.field(default_factory=lambda: [UNHINTED])
    done: dict[str, int] = dataclasses.field(default_factory=dict)  # series -> processed until
    ring: collections.deque[SpanIv] = dataclasses.field(default_factory=lambda: collections.deque(maxlen=RING))
    cur: Block | None = None
    pending: list[Block] = dataclasses.field(default_factory=list)
    last_emit: int = 0


class PhaseEnergy:
    """Accumulates window energy vs phase occupancy per process; emits it as marks."""

    def __init__(self) -> None:
        self.procs: dict[Any, _Proc] = {}

    def on_span(self, key: Any, span_id: int, parent_id: int, path: str, a: int, b: int) -> None:
        """A finalised span (a, b: its device interval if it has one, else its host interval)."""
        p = self.procs.get(key)
        if p is None:
            p = self.procs[key] = _Proc()
        p.ring.append(SpanIv(span_id, parent_id, path, a, b))

    def device(self, key: Any, span_id: int, a: int, b: int) -> None:
        """A device interval that arrived after its span was finalised."""
        p = self.procs.get(key)
        if p is None:
            return
        for s in reversed(p.ring):
            if s.span_id == span_id:
                s.a, s.b = a, b
                return

    def forget(self, key: Any) -> dict[str, Any] | None:
        """The process is gone: its last statistics (as mark attrs), then nothing kept."""
        p = self.procs.pop(key, None)
        if p is None:
            return None
        if p.cur is not None and p.cur.n:
            p.pending.append(p.cur)
            p.cur = None
        return _attrs(p) if p.pending else None

    def advance(
        self, key: Any, now_ns: int, series: Mapping[str, PowerSeries], live: Iterable[SpanIv]
    ) -> dict[str, Any] | None:
        """Take the settled windows of this process; return mark attrs when one is due."""
        p = self.procs.get(key)
        if p is None:
            p = self.procs[key] = _Proc(last_emit=now_ns)
        if not p.last_emit:
            p.last_emit = now_ns
        upto = now_ns - SETTLE_NS
        spans = list(p.ring) + list(live)
        for name, ser in series.items():
            after = p.done.get(name, 0)
            wins = ser.windows(after, upto)
            if not wins:
                continue
            lo = wins[0][0]
            near = sorted((s for s in spans if (s.b is None or s.b > lo) and s.a < upto), key=lambda s: s.a)
            for t0, t1, mj in wins:
                self._window(p, near, t0, t1, mj)
            p.done[name] = wins[-1][1]
        # Keep only the spans that can still overlap a window to come.
        floor = min(p.done.values(), default=0)
        while p.ring and p.ring[0].b is not None and p.ring[0].b < floor - SETTLE_NS:
            p.ring.popleft()
        if now_ns - p.last_emit >= EMIT_EVERY_NS and p.pending:
            p.last_emit = now_ns
            return _attrs(p)
        return None

    def _window(self, p: _Proc, spans: list[SpanIv], t0: int, t1: int, mj: float) -> None:
        over: dict[int, tuple[SpanIv, int]] = {}
        for s in spans:
            if s.a >= t1:
                break
            end = t1 if s.b is None else min(s.b, t1)
            ov = end - max(s.a, t0)
            if ov > 0:
                over[s.span_id] = (s, ov)
        x = [0.0] * len(p.cols)
        excl: dict[int, int] = {sid: ov for sid, (_s, ov) in over.items()}
        for s, ov in over.values():
            if s.parent_id in excl:
                excl[s.parent_id] -= ov
        covered = 0
        for sid, (s, _ov) in over.items():
            e = max(excl[sid], 0)
            if not e:
                continue
            covered += e
            i = _col(p, s.path)
            if i >= len(x):
                x.extend([0.0] * (i + 1 - len(x)))
            x[i] += e / 1e9
        x[0] = max(t1 - t0 - covered, 0) / 1e9
        if p.cur is None:
            p.cur = Block.zero(len(p.cols))
        if len(p.cur.b) < len(p.cols):
            p.cur = p.cur.widen(len(p.cols))
        if len(x) < len(p.cols):
            x.extend([0.0] * (len(p.cols) - len(x)))
        p.cur.add(x, mj)
        if p.cur.n >= BLOCK_WINDOWS:
            p.pending.append(p.cur)
            p.cur = None


def _col(p: _Proc, path: str) -> int:
    try:
        return p.cols.index(path)
    except ValueError:
        if len(p.cols) >= MAX_COLUMNS:
            if OTHER not in p.cols:
                p.cols[-1] = OTHER  # the last column becomes the catch-all from now on
            return p.cols.index(OTHER)
        p.cols.append(path)
        return len(p.cols) - 1


def _attrs(p: _Proc) -> dict[str, Any]:
    """Mark attrs: the columns and the new blocks (n, y'y, X'y, X'X), mJ and seconds."""
    blocks = [
        [b.n, round(b.yy, 6), [round(v, 9) for v in b.b], [[round(v, 12) for v in r] for r in b.g]] for b in p.pending
    ]
    p.pending = []
    return {"cols": list(p.cols), "blocks": blocks, "unit": "mJ~s"}


def fit_marks(marks: Iterable[dict[str, Any]], resamples: int = 200) -> dict[str, dict[str, Any]]:
    """Pool one process's __phase_energy__ marks and fit: per column, power (W) with a 95 % CI."""
    from . import nnls

    cols: list[str] = []
    blocks: list[Block] = []
    for m in marks:
        mc = m.get("cols")
        if not isinstance(mc, list) or not all(isinstance(c, str) for c in mc):
            continue
        if len(mc) >= len(cols) and mc[: len(cols)] == cols:
            cols = list(mc)
        for raw in m.get("blocks") or []:
            try:
                n, yy, b, g = raw
                blocks.append(Block(int(n), float(yy), [float(v) for v in b], [[float(v) for v in r] for r in g]))
            except (TypeError, ValueError):
                continue
    blocks = [b for b in blocks if len(b.b) <= len(cols)]
    f = nnls.fit(blocks, len(cols), resamples=resamples)
    if f is None:
        return {}
    return {
        c: {
            "power_w": round(f.coef[i] / 1000.0, 3),  # mJ/s = mW -> W
            "ci_w": [round(f.lo[i] / 1000.0, 3), round(f.hi[i] / 1000.0, 3)],
            "windows": f.windows,
            "blocks": f.blocks,
        }
        for i, c in enumerate(cols)
    }
