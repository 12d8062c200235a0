"""The batch checkers (compiled, and its pure-Python twin) are conservative twins of
protocol.check_event/check_fields.

It may only say "valid" (the event's kind) for an event the Python checker accepts;
everything else must come back ASK_PYTHON, so that refusals and their reasons stay
those of protocol.py.  And it must say "valid" for the ordinary events, or it is
no faster path at all.
"""

from __future__ import annotations

import math

import pytest
from gpuos_client import protocol as P
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

_COMPILED = P.fast_checker()


@pytest.fixture(params=["compiled", "python"])
def check(request):
    if request.param == "python":
        return P.check_events_py
    if _COMPILED is None:
        pytest.skip("gpuos_client._cproto is not built (no C compiler at install time)")
    return _COMPILED


U63 = (1 << 63) - 1
RU = [100, 5_000_000, 6_000_000, 12, 3, 4000, 0]
VALID = [
    [1, 1000, 7, 1, 0, "train_step", None, {"step": 1, "batch": 32, "ok": True, "x": 1.5, "n": None}, RU],
    [1, 1000, 7, 2, 1, "forward", "training", None, None],
    [1, 1000, 7, 3, 1, "f" * P.LIMITS.max_name_len, None, None],  # an old client: no ru
    [2, 2000, 7, 2, "ok", None, RU],
    [2, 2000, 7, 1, "error", {"why": "x" * P.LIMITS.max_attr_value_len, "b": b"\x00\x01"}],
    [3, 3000, 7, "loss", {"loss": 0.25, "lr": 1e-4, "big": -(1 << 63)}],
    [3, 3000, 7, "loss", None, "appended by a later minor version"],
    (2, U63, U63, U63, "ok", None, [U63, 0, 0, 0, 0, 0, 0, "extra"]),
]


def python_verdict(ev) -> int:
    try:
        kind, _, _ = P.check_event(ev)
        P.check_fields(kind, ev)
    except P.ProtocolError:
        return -1
    return kind


def test_ordinary_events_are_vouched_for(check) -> None:
    assert list(check(VALID)) == [python_verdict(ev) for ev in VALID] == [1, 1, 1, 2, 2, 3, 3, 2]


HOSTILE = [
    [],
    [1],
    [True, 1, 1, 1, 0, "a", None, None],  # bool is not an int kind
    [1, -1, 7, 1, 0, "a", None, None],
    [1, 1 << 63, 7, 1, 0, "a", None, None],
    [1, 1000, 7, 1, 0, "", None, None],
    [1, 1000, 7, 1, 0, "x" * (P.LIMITS.max_name_len + 1), None, None],
    [1, 1000, 7, 1, 0, b"bytes", None, None],
    [1, 1000, 7, 1, 0, "a", "", None],
    [1, 1000, 7, 1, 0, "a", None, {"": 1}],
    [1, 1000, 7, 1, 0, "a", None, {1: 1}],
    [1, 1000, 7, 1, 0, "a", None, {"k": [1]}],
    [1, 1000, 7, 1, 0, "a", None, {"k": 1 << 63}],
    [1, 1000, 7, 1, 0, "a", None, {f"k{i}": i for i in range(P.LIMITS.max_attrs + 1)}],
    [1, 1000, 7, 1, 0, "a", None, {"k": "v" * (P.LIMITS.max_attr_value_len + 1)}],
    [1, 1000, 7, 1, 0, "a", None, None, [1001, 0, 0, 0, 0, 0, 0]],  # a reading from the future
    [1, 1000, 7, 1, 0, "a", None, None, [1, 2, 3]],
    [1, 1000, 7, 1, 0, "a", None, None, [1, 2, 3, 4, 5, 6, -7]],
    [1, 1000, 7, 1, 0, "a", None, None, {"ru": 1}],
    [2, 1000, 7, 1, "OK", None],
    [2, 1000, 7, 1, ["ok"], None],
    [2, 1000, 7, 1, "ok", "attrs"],
    [2, 1000, 7, 1, "ok"],
    [3, 1000, 7, "m"],
    [3, 1000, 7, "m", {"k": math.nan}, None],  # valid (NaN is a float): Python decides the same
    [0, 1000, 7, {"client": "x"}],  # hello, class, heartbeat, bye always go to Python
    [4, 1000, 7, "cls"],
    [6, 1000, 7],
    [9, 1000, 7],
    {"not": "an event"},
    None,
]


def test_hostile_events_are_left_to_python(check) -> None:
    for ev, verdict in zip(HOSTILE, check(HOSTILE), strict=True):
        py = python_verdict(ev)
        assert verdict == P.ASK_PYTHON or verdict == py, ev
        if py == -1:
            assert verdict == P.ASK_PYTHON, ev


_any = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20) | st.binary(max_size=8),
    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=4) | st.integers(), c, max_size=4),
    max_leaves=8,
)
_u = st.integers(-2, 4) | st.integers(U63 - 1, U63 + 1) | _any
_name = st.sampled_from(["a", "", "x" * 128, "x" * 129, "forward"]) | _any
_attrs = st.none() | st.dictionaries(st.text(max_size=70), _any, max_size=18) | _any
_ru = st.none() | st.lists(_u, min_size=6, max_size=8) | _any
_event = (
    st.tuples(st.just(1), _u, _u, _u, _u, _name, st.none() | _name, _attrs, _ru).map(list)
    | st.tuples(st.just(2), _u, _u, _u, st.sampled_from(["ok", "error", "x"]) | _any, _attrs, _ru).map(list)
    | st.tuples(st.just(3), _u, _u, _name, _attrs).map(list)
    | st.lists(_any, max_size=10)
)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(events=st.lists(_event, max_size=6))
def test_vouches_only_for_what_the_full_checks_accept(check, events) -> None:
    for ev, verdict in zip(events, check(events), strict=True):
        if verdict != P.ASK_PYTHON:
            assert verdict == python_verdict(ev), ev
