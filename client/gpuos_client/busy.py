"""The union of device activity intervals, and its busy time within any window in O(log n).

Pure interval arithmetic, kept apart from the CUPTI tracer (cupti.py) so that it can be tested on
a machine without a GPU.  The tracer feeds it (start, end) pairs of kernels, copies and memsets on
the host's CLOCK_MONOTONIC; ``busy_ns(a, b)`` is then the time within [a, b] during which at least
one of them ran.  Overlapping work on two streams counts once: this is *device busy time*, not a
sum of kernel durations.

Why a union and prefix sums: a span's busy time is asked for once per device-timed phase (up to
thousands per second), so it must not walk the kernels of the span.  The merged intervals are
disjoint and sorted, so both their starts and their ends are sorted; with a prefix sum of their
lengths, the busy time of a window is two bisects and four lookups.

Records arrive out of order: CUPTI returns its buffers whenever each one's records are complete,
so a later buffer can hold kernels (of another stream) that started before the newest interval
kept.  ``add`` therefore re-merges the kept tail from the earliest new start onward: the cost is
the size of that tail, small when (as usual) records come nearly in order.

Bounded: intervals that ended more than ``horizon_ns`` before the newest end, or beyond the
newest ``max_intervals``, are forgotten.  ``floor_ns`` is then the earliest time for which the
union is complete; ``busy_ns`` answers None for a window that begins before it (the caller counts
such spans), and records that end before it are not merged (``late_records`` counts them).
Memory: three ``array('q')`` of at most ``max_intervals`` (+25 % before a compaction) entries,
24 bytes per interval.
"""

from __future__ import annotations

import bisect
from array import array
from collections.abc import Iterable


class BusyIntervals:
    """Merged busy intervals [start, end) in ns, with their prefix sums."""

    __slots__ = ("_ends", "_first", "_pre", "_starts", "floor_ns", "horizon_ns", "late_records", "max_intervals")

    def __init__(self, horizon_ns: int = 30_000_000_000, max_intervals: int = 200_000, floor_ns: int = 0) -> None:
        self.horizon_ns = horizon_ns
        self.max_intervals = max(1, max_intervals)
        self.floor_ns = floor_ns  # the union is complete from here on (the tracer's start, then trims)
        self.late_records = 0  # records that ended before floor_ns: not merged
        self._starts = array("q")
        self._ends = array("q")
        self._pre = array("q", [0])  # _pre[i] = total length of intervals [0, i)
        self._first = 0  # intervals before this index are forgotten (deleted in batches)

    def __len__(self) -> int:
        return len(self._starts) - self._first

    def intervals(self) -> list[tuple[int, int]]:
        """The kept merged intervals, oldest first (for tests and diagnostics)."""
        return list(zip(self._starts[self._first :], self._ends[self._first :], strict=True))

    def add(self, records: Iterable[tuple[int, int]]) -> int:
        """Merge (start, end) records; empty or inverted ones are ignored.  Returns how many merged."""
        new = []
        floor = self.floor_ns
        for s, e in records:
            if e <= s:
                continue
            if e <= floor:
                self.late_records += 1
                continue
            new.append((max(s, floor), e))
        if not new:
            return 0
        new.sort()
        starts, ends, pre = self._starts, self._ends, self._pre
        # Kept intervals that end before the earliest new start cannot touch any new one.
        i = max(bisect.bisect_left(ends, new[0][0], self._first), self._first)
        merged: list[list[int]] = []
        tail = sorted([*zip(starts[i:], ends[i:], strict=True), *new])
        for s, e in tail:
            if merged and s <= merged[-1][1]:
                if e > merged[-1][1]:
                    merged[-1][1] = e
            else:
                merged.append([s, e])
        del starts[i:], ends[i:], pre[i + 1 :]
        total = pre[i]
        for s, e in merged:
            starts.append(s)
            ends.append(e)
            total += e - s
            pre.append(total)
        self._trim()
        return len(new)

    def _trim(self) -> None:
        """Forget what is beyond the horizon or the count bound; delete in batches (amortised)."""
        ends = self._ends
        n = len(ends)
        if n == self._first:
            return
        cut = bisect.bisect_left(ends, ends[-1] - self.horizon_ns, self._first)
        cut = max(cut, n - self.max_intervals)
        if cut > self._first:
            self.floor_ns = max(self.floor_ns, ends[cut - 1])
            self._first = cut
        if self._first > self.max_intervals // 4 + 1024:
            k = self._first
            base = self._pre[k]
            del self._starts[:k], self._ends[:k]
            self._pre = array("q", (p - base for p in self._pre[k:]))
            self._first = 0

    def busy_ns(self, a: int, b: int) -> int | None:
        """Busy time within [a, b]; None when the window begins before ``floor_ns`` (not known)."""
        if a < self.floor_ns:
            return None
        if b <= a:
            return 0
        starts, ends, pre = self._starts, self._ends, self._pre
        i = bisect.bisect_right(ends, a, self._first)  # first interval that ends after a
        j = bisect.bisect_left(starts, b, self._first)  # intervals [i, j) start before b
        if i >= j:
            return 0
        total = pre[j] - pre[i]
        total -= max(0, a - starts[i])  # the part of the first one before a
        total -= max(0, ends[j - 1] - b)  # the part of the last one after b
        return total

    def newest_end(self) -> int | None:
        return self._ends[-1] if len(self) else None
