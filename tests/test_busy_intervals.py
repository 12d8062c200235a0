"""gpuos_client.busy: the union of device intervals and busy time in a window, against brute force.

The reference walks every nanosecond of a small timeline (a set of covered ns), so it shares no
code or idea with the merged-intervals-plus-prefix-sums under test.  Records arrive in random
order and in random batches, as CUPTI buffers of several streams do.
"""

from __future__ import annotations

import itertools
import random

from gpuos_client.busy import BusyIntervals
from hypothesis import given, settings
from hypothesis import strategies as st


def _covered(records: list[tuple[int, int]]) -> set[int]:
    out: set[int] = set()
    for s, e in records:
        out.update(range(s, e))
    return out


def _ref_busy(cov: set[int], a: int, b: int) -> int:
    return sum(1 for t in range(a, b) if t in cov)


records_st = st.lists(
    st.tuples(st.integers(0, 400), st.integers(0, 60)).map(lambda t: (t[0], t[0] + t[1])), max_size=60
)


@settings(max_examples=300, deadline=None)
@given(
    records_st,
    st.integers(1, 8),
    st.randoms(use_true_random=False),
    st.lists(st.tuples(st.integers(-20, 480), st.integers(0, 200)), min_size=1, max_size=20),
)
def test_busy_matches_brute_force_for_any_arrival_order_and_batching(records, nbatch, rnd, windows):
    bi = BusyIntervals(horizon_ns=10**9, max_intervals=10**6)
    shuffled = records[:]
    rnd.shuffle(shuffled)
    for k in range(nbatch):
        bi.add(shuffled[k::nbatch])
    cov = _covered(records)
    for a, w in windows:
        a = max(a, 0)
        assert bi.busy_ns(a, a + w) == _ref_busy(cov, a, a + w), (a, w)
    # The kept intervals are disjoint, sorted and cover exactly the union.
    iv = bi.intervals()
    assert all(e0 < s1 for (_, e0), (s1, _) in itertools.pairwise(iv))
    assert _covered(iv) == cov


def test_overlapping_streams_count_once_and_touching_intervals_merge():
    bi = BusyIntervals()
    bi.add([(100, 200), (150, 300)])  # two streams overlapping by 50 ns
    bi.add([(300, 310)])  # touches: one interval
    assert bi.intervals() == [(100, 310)]
    assert bi.busy_ns(0, 1000) == 210
    assert bi.busy_ns(120, 130) == 10
    assert bi.busy_ns(310, 400) == 0


def test_a_late_record_older_than_the_newest_interval_is_merged_in_place():
    bi = BusyIntervals()
    bi.add([(1000, 1100), (2000, 2100), (3000, 3100)])
    bi.add([(1050, 2050)])  # from a later buffer, another stream: bridges the first two
    assert bi.intervals() == [(1000, 2100), (3000, 3100)]
    assert bi.busy_ns(0, 4000) == 1200
    bi.add([(10, 20)])  # older than everything kept
    assert bi.intervals()[0] == (10, 20)
    assert bi.busy_ns(0, 4000) == 1210


def test_the_horizon_forgets_old_intervals_and_windows_before_it_are_unknown():
    bi = BusyIntervals(horizon_ns=1000, max_intervals=100)
    bi.add([(0, 10), (100, 110), (2000, 2010)])  # 2010 - 1000 = 1010: the first two are beyond
    assert bi.intervals() == [(2000, 2010)]
    assert bi.floor_ns == 110
    assert bi.busy_ns(50, 3000) is None  # begins before the floor: not known, never a wrong figure
    assert bi.busy_ns(110, 3000) == 10
    bi.add([(0, 50)])  # ends before the floor: counted, not merged
    assert bi.late_records == 1 and len(bi) == 1
    bi.add([(100, 1500)])  # straddles the floor: only its part after it is merged
    assert bi.intervals() == [(110, 1500), (2000, 2010)]
    assert bi.busy_ns(110, 3000) == 1400


def test_the_count_bound_holds_under_a_long_stream_and_answers_stay_exact_after_compaction():
    bi = BusyIntervals(horizon_ns=10**15, max_intervals=1000)
    rng = random.Random(7)
    t = 0
    kept: list[tuple[int, int]] = []
    for _ in range(50):
        batch = []
        for _ in range(200):
            d = rng.randint(1, 50)
            batch.append((t, t + d))
            t += d + rng.randint(1, 50)
        kept.extend(batch)
        bi.add(batch)
        assert len(bi) <= 1000
        assert len(bi._starts) <= 1000 + 1000 // 4 + 1024 + 200  # compaction keeps the arrays bounded
    a = bi.floor_ns
    ref = sum(max(0, min(e, t) - max(s, a)) for s, e in kept)
    assert bi.busy_ns(a, t) == ref
    assert bi.busy_ns(a - 1, t) is None
